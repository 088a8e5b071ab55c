"""Which failures make dead letters, and recent-item members that any id survives (issue 10, items 1 and 9)."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect
from redis.exceptions import ConnectionError, DataError, OutOfMemoryError, ReadOnlyError, ResponseError, TimeoutError

from domain.realtime.deadletters import is_poison
from domain.realtime.keys import SEP, parse_recent, recent_member

SCRIPT_ERROR = "Error running script (call to f_0): @user_script:12: "


@pytest.mark.parametrize("error", [
    ResponseError(SCRIPT_ERROR + "WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError(SCRIPT_ERROR + "user_script:13: too many results to unpack"),
    DataError("Invalid input of type: 'dict'"), ValueError("could not convert string to float: 'ten'"),
    TypeError("unsupported operand"),
])
def test_errors_of_the_batch_itself_are_poison(error):
    assert is_poison(error)


@pytest.mark.parametrize("error", [
    ConnectionError("Connection refused"), TimeoutError("Timeout reading from socket"), OSError("reset"),
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), ReadOnlyError("You can't write"),
    ResponseError(SCRIPT_ERROR + "-OOM command not allowed when used memory > 'maxmemory'."),
    ResponseError("BUSY Redis is busy running a script"), ResponseError("LOADING Redis is loading the dataset"),
    AutoReconnect("primary went away"),
])
def test_errors_of_redis_or_mongo_being_unavailable_are_not(error):
    assert not is_poison(error)


@pytest.mark.parametrize("item", ["plain", "a\x1fb", '"quoted"', "[bracket", "\\"])
def test_a_recent_member_keeps_any_item_id_whole(item):
    member = recent_member(1_700_000_000_000, item, "sc_1", "VIEW", "e" + SEP + "1")
    assert parse_recent(member) == (1_700_000_000_000, item, "sc_1", "VIEW")


def test_members_written_before_json_still_read():
    legacy = SEP.join(["1700000000000", "i1", "sc_1", "LIKE", "e1"])
    assert parse_recent(legacy) == (1_700_000_000_000, "i1", "sc_1", "LIKE")
