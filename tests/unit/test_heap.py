"""The heap settler: freezes what lives, frees what a cycle kept alive at the next settle, coalesces requests."""

import asyncio
import gc
import weakref

import pytest

from graph.heap import HeapSettler


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _thawed():
    yield
    gc.unfreeze()  # leave the test process as it was


def test_settle_freezes_survivors_and_frees_frozen_cycles_next_time():
    settler = HeapSettler()
    node = Node()
    ref = weakref.ref(node)
    settler.settle()
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert ref() is not None  # frozen: full collections no longer scan it (nor free it)
    settler.settle()
    assert ref() is not None  # a settle soon after a full one only freezes
    settler.settle(full=True)
    assert ref() is None  # a full settle collects the frozen generation too


def test_settles_are_full_once_the_last_full_one_is_old_enough():
    settler = HeapSettler(full_every_s=0.0)
    node = Node()
    ref = weakref.ref(node)
    settler.settle()
    del node
    settler.settle()
    assert ref() is None


async def test_requests_coalesce_into_one_settle(monkeypatch):
    settles = []
    settler = HeapSettler(delay_s=0.05)
    monkeypatch.setattr(gc, "freeze", lambda: settles.append(1))
    for _ in range(5):
        settler.request()
    await asyncio.sleep(0.15)
    assert settles == [1]
    settler.request()
    settler.cancel()
    await asyncio.sleep(0.1)
    assert settles == [1]  # a cancelled settle never runs
