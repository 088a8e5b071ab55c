"""Item 11: the circuit breaker's state machine on a fake clock (closed -> open -> half-open -> closed)."""

from __future__ import annotations

import asyncio

import pytest

from models.breaker import BreakerState, CircuitBreaker


class Down(Exception):
    """The store did not answer."""


class Refused(Exception):
    """What the breaker raises while open (a store's own "unavailable" error)."""


class Answered(Exception):
    """The store answered with an error of the caller's making."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **options) -> CircuitBreaker:
    return CircuitBreaker("store", open_error=Refused, is_failure=lambda exc: isinstance(exc, (Down, TimeoutError)),
                          clock=clock, **{"failures": 3, "cooldown_s": 2.0, **options})


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise Down("no answer")


async def timed_out() -> str:
    raise TimeoutError("waited out the timeout")


async def settle() -> None:
    """Let background tasks (the probe) run their course."""
    for _ in range(10):
        await asyncio.sleep(0)


async def fail(b: CircuitBreaker, times: int, fn=down) -> None:
    for _ in range(times):
        with pytest.raises((Down, TimeoutError)):
            await b.call(fn)


async def test_item11_opens_after_consecutive_failures_and_then_fails_fast() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 2)
    assert b.state is BreakerState.CLOSED
    await fail(b, 1)
    assert b.state is BreakerState.OPEN

    called = []

    async def counted() -> str:
        called.append(1)
        return "ok"

    with pytest.raises(Refused, match="store is not answering"):
        await b.call(counted)
    assert called == []  # failing fast means the store is not even asked


async def test_item11_a_success_resets_the_count_of_failures() -> None:
    b = breaker(Clock())
    await fail(b, 2)
    assert await b.call(ok) == "ok"
    await fail(b, 2)
    assert b.state is BreakerState.CLOSED


async def test_item11_one_timeout_or_one_slow_failure_opens_at_once() -> None:
    b = breaker(Clock())
    await fail(b, 1, timed_out)
    assert b.state is BreakerState.OPEN

    clock = Clock()
    slow = breaker(clock, slow_s=1.0)

    async def slow_down() -> str:
        clock.now += 1.5
        raise Down("after a long wait")

    await fail(slow, 1, slow_down)
    assert slow.state is BreakerState.OPEN


async def test_item11_errors_that_prove_the_store_answers_do_not_count() -> None:
    b = breaker(Clock())

    async def bad_request() -> str:
        raise Answered("wrong type")

    for _ in range(5):
        with pytest.raises(Answered):
            await b.call(bad_request)
    assert b.state is BreakerState.CLOSED


async def test_item11_without_a_probe_one_call_goes_through_after_the_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 3)
    clock.now += 1.9
    with pytest.raises(Refused):
        await b.call(ok)

    clock.now += 0.2
    gate = asyncio.Event()

    async def trial() -> str:
        await gate.wait()
        return "back"

    probe = asyncio.create_task(b.call(trial))
    await asyncio.sleep(0)
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(Refused):  # only one call probes; the others still fail fast
        await b.call(ok)
    gate.set()
    assert await probe == "back"
    assert b.state is BreakerState.CLOSED
    assert await b.call(ok) == "ok"


async def test_item11_a_failed_trial_opens_again_for_a_whole_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 3)
    clock.now += 2.0
    await fail(b, 1)  # the trial call
    assert b.state is BreakerState.OPEN
    clock.now += 1.0
    with pytest.raises(Refused):
        await b.call(ok)
    clock.now += 1.0
    assert await b.call(ok) == "ok"
    assert b.state is BreakerState.CLOSED


async def test_item11_a_cancelled_trial_lets_the_next_call_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    await fail(b, 3)
    clock.now += 2.0
    task = asyncio.create_task(b.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await b.call(ok) == "ok"
    assert b.state is BreakerState.CLOSED


async def test_item11_with_a_probe_callers_fail_fast_while_it_runs_in_the_background() -> None:
    clock = Clock()
    answering = asyncio.Event()
    pings: list[str] = []

    async def ping() -> bool:
        pings.append("ping")
        await answering.wait()
        return True

    b = breaker(clock, probe=ping)
    await fail(b, 1, timed_out)
    clock.now += 2.0
    with pytest.raises(Refused):  # the caller that finds the cooldown over does not wait for the probe
        await b.call(ok)
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(Refused):
        await b.call(ok)
    await settle()
    assert pings == ["ping"]  # one probe, however many callers
    answering.set()
    await settle()
    assert b.state is BreakerState.CLOSED
    assert await b.call(ok) == "ok"


async def test_item11_a_failed_probe_opens_again() -> None:
    clock = Clock()

    async def ping() -> bool:
        return False

    b = breaker(clock, probe=ping)
    await fail(b, 3)
    clock.now += 2.0
    with pytest.raises(Refused):
        await b.call(ok)
    await settle()
    assert b.state is BreakerState.OPEN
    with pytest.raises(Refused):
        await b.call(ok)
    await b.close()


async def test_item11_listeners_hear_every_change() -> None:
    clock = Clock()
    b = breaker(clock)
    heard: list[tuple[str, BreakerState]] = []
    b.on_change(lambda name, state: heard.append((name, state)))
    await fail(b, 3)
    clock.now += 2.0
    await b.call(ok)
    assert heard == [("store", BreakerState.OPEN), ("store", BreakerState.HALF_OPEN), ("store", BreakerState.CLOSED)]


async def test_item11_one_timeout_probes_at_once_and_a_live_store_closes_it_within_the_probe() -> None:
    clock = Clock()
    pings: list[str] = []

    async def ping() -> bool:
        pings.append("ping")
        return True

    b = breaker(clock, probe=ping)
    await fail(b, 1, timed_out)  # a late reply (a busy host, a stalled loop), not a hung store
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(Refused):  # while the probe is out, callers fail fast
        await b.call(ok)
    await settle()
    assert pings == ["ping"] and b.state is BreakerState.CLOSED  # no cool-down was waited: the clock never moved
    assert await b.call(ok) == "ok"


async def test_item11_one_timeout_on_a_hung_store_opens_it_for_the_cooldown_after_the_probe() -> None:
    clock = Clock()

    async def ping() -> bool:
        raise TimeoutError("no answer to the ping either")

    b = breaker(clock, probe=ping)
    await fail(b, 1, timed_out)
    await settle()
    assert b.state is BreakerState.OPEN
    with pytest.raises(Refused):
        await b.call(ok)
