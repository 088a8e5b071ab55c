"""Issue 10 item 9 (the auth cache) and item 4's token format, on fakes: a least-recently-used cache of keys that
refuses malformed keys before any lookup, and user tokens read from the right and compared in constant time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from domain import tenancy
from domain.errors import Forbidden
from domain.tenancy import KEY_SHAPE, Scope, TenancyService, _make_secret, hash_key
from domain.usertokens import check_user_token, parse_user_token, sign_user_token

HOT = _make_secret(Scope.PUBLIC)


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """Count the key lookups that reach the store; only HOT is a live key."""
    seen: list[str] = []

    async def find_one(query: dict):
        seen.append(query["key_hash"])
        if query["key_hash"] != hash_key(HOT):
            return None
        return SimpleNamespace(id="k_hot", tenant_id="t1", scope="public", revoked_at=None, expires_at=None,
                               require_user_token=False)

    async def no_write(_key_id: str) -> None:
        return None

    monkeypatch.setattr(tenancy.ApiKey, "find_one", find_one)
    monkeypatch.setattr(tenancy, "_write_last_used", no_write)
    return seen


def test_auth_cache_key_shape_is_what_make_secret_makes():
    assert all(KEY_SHAPE.fullmatch(_make_secret(scope)) for scope in Scope for _ in range(50))


@pytest.mark.parametrize("secret", [
    "garbage", "rg_admin_not-a-real-key", "rg_root_" + "a" * 32, "rg_admin_" + "a" * 31, "rg_admin_" + "a" * 33,
    "rg_admin_" + "a" * 31 + "é", "rg_admin_" + "a" * 31 + "\n", "",
])
async def test_auth_cache_malformed_keys_are_refused_before_any_lookup(lookups, secret):
    service = TenancyService()
    assert await service.authenticate(secret) is None
    assert lookups == [] and len(service._auth_cache) == 0


async def test_auth_cache_keeps_the_keys_in_use_when_full(lookups, monkeypatch):
    monkeypatch.setattr(tenancy, "AUTH_CACHE_MAX", 3)
    service = TenancyService()
    assert (await service.authenticate(HOT)).key_id == "k_hot"
    for _ in range(10):  # a stream of unknown (well-formed) keys between uses of the live one
        await service.authenticate(_make_secret(Scope.ADMIN))
        assert (await service.authenticate(HOT)).key_id == "k_hot"
    assert lookups.count(hash_key(HOT)) == 1  # never evicted: it is always the most recently used
    assert len(service._auth_cache) == 3


# --- user tokens -----------------------------------------------------------------------------------------------


def test_acting_for_a_user_tokens_are_read_from_the_right():
    token = sign_user_token("a.b.c@example.com", 2_000_000_000, "s")
    assert parse_user_token(token)[:2] == ("a.b.c@example.com", 2_000_000_000)
    assert check_user_token(token, "s", now=time.time()) == "a.b.c@example.com"
    assert check_user_token(token.upper().replace("A.B.C@EXAMPLE.COM", "a.b.c@example.com"), "s") \
        == "a.b.c@example.com"  # hex case does not matter


@pytest.mark.parametrize("token", [
    "", "alice", "alice.123", ".123." + "0" * 64, "alice.²." + "0" * 64, "alice.12x." + "0" * 64,
    "alice." + "9" * 5000 + "." + "0" * 64, "alice.123." + "é" * 64, "alice.123." + "g" * 64, "alice.123.00",
])
def test_acting_for_a_user_malformed_tokens_are_forbidden(token):
    with pytest.raises(Forbidden, match="malformed"):
        check_user_token(token, "s")


def test_acting_for_a_user_expired_or_forged_tokens_are_forbidden():
    with pytest.raises(Forbidden, match="expired"):
        check_user_token(sign_user_token("alice", 1000, "s"), "s")
    forged = sign_user_token("alice", 2_000_000_000, "s").replace("alice", "mallory")
    with pytest.raises(Forbidden, match="bad signature"):
        check_user_token(forged, "s")
    with pytest.raises(Forbidden, match="bad signature"):
        check_user_token(sign_user_token("alice", 2_000_000_000, "other"), "s")
