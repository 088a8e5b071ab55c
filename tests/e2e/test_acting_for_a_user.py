"""Issue 10 item 4, acting for a user: a public key that requires `X-User-Token` serves and records only for the
user the token names; a gateway's `X-User-Id` names the acting user; keys expire and show when they were last used."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.usertokens import sign_user_token
from models.documents import ApiKey
from tests.conftest import free_port, new_tenant
from tests.e2e.test_access import CREATE_SCENARIO, PROFILE, RECORD, UPSERT, codes, error, event
from tests.e2e.test_cli import BIN, _env

ROTATE_SECRET = "mutation { rotateUserSigningSecret }"
CREATE_KEY = """mutation($scope: ApiKeyScope!, $expiresAt: DateTime, $requireUserToken: Boolean) {
  createApiKey(scope: $scope, expiresAt: $expiresAt, requireUserToken: $requireUserToken) {
    secret key { id scope expiresAt lastUsedAt requireUserToken } } }"""
API_KEYS = "{ apiKeys { id expiresAt lastUsedAt requireUserToken } }"
RECOMMEND = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 3) { requestId } }"""
ENTITIES = """query($reps: [_Any!]!, $s: ID!) { _entities(representations: $reps) {
  ... on User { id recommendations(scenarioId: $s, first: 3) { requestId } } } }"""
ENTITY_PROFILES = """query($reps: [_Any!]!) { _entities(representations: $reps) {
  ... on User { id profile { interactionCount } } } }"""


async def bound_shop(served, gql, name: str) -> tuple:
    """A tenant with a scenario and an item, a signing secret, and a public key that requires user tokens."""
    keys = await new_tenant(served, name)
    sid = (await gql.data(CREATE_SCENARIO, {"input": {"name": "feed", "template": "CUSTOM"}}, key=keys.admin))
    sid = sid["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "i1", "title": "One"}]}, key=keys.admin)
    secret = (await gql.data(ROTATE_SECRET, key=keys.admin))["rotateUserSigningSecret"]
    bound = await gql.data(CREATE_KEY, {"scope": "PUBLIC", "requireUserToken": True}, key=keys.admin)
    assert bound["createApiKey"]["key"]["requireUserToken"] is True
    return keys, sid, secret, bound["createApiKey"]["secret"]


@pytest.fixture(scope="module")
async def shop(served, gql):
    return await bound_shop(served, gql, "acting-for-a-user")


def token(user: str, secret: str, *, ttl_s: int = 600) -> str:
    return sign_user_token(user, int(time.time()) + ttl_s, secret)


async def test_acting_for_a_user_a_bound_key_serves_and_records_only_for_the_tokens_user(gql, shop):
    keys, sid, secret, bound = shop
    alice = token("alice.smith@example.com", secret)  # dots in the user id: the token is read from the right
    ok = await gql(RECOMMEND, {"s": sid, "u": "alice.smith@example.com"}, key=bound, x_user_token=alice)
    assert not ok.get("errors"), ok
    other = await gql(RECOMMEND, {"s": sid, "u": "bob"}, key=bound, x_user_token=alice)
    assert codes(other) == ["FORBIDDEN"]

    recorded = await gql(RECORD, {"events": [event(sid, "i1", user="alice.smith@example.com")]}, key=bound,
                         x_user_token=alice)
    assert recorded["data"]["recordInteractions"]["accepted"] == 1
    # One event for another user refuses the whole batch: nothing is stored.
    mixed = [event(sid, "i1", user="alice.smith@example.com", eventId="mixed-1"), event(sid, "i1", user="bob")]
    refused = await gql(RECORD, {"events": mixed}, key=bound, x_user_token=alice)
    assert codes(refused) == ["FORBIDDEN"]
    again = await gql.data(RECORD, {"events": mixed[:1]}, key=bound, x_user_token=alice)
    assert again["recordInteractions"]["accepted"] == 1  # the refused batch stored nothing, so this is no duplicate

    # User entities through _entities: only the token's user.
    mine = await gql(ENTITIES, {"reps": [{"__typename": "User", "id": "alice.smith@example.com"}], "s": sid},
                     key=bound, x_user_token=alice)
    assert not mine.get("errors"), mine
    theirs = await gql(ENTITIES, {"reps": [{"__typename": "User", "id": "bob"}], "s": sid}, key=bound,
                       x_user_token=alice)
    assert codes(theirs) == ["FORBIDDEN"]
    # Profiles stay closed to public keys, token or not.
    assert codes(await gql(PROFILE, {"u": "alice.smith@example.com"}, key=bound, x_user_token=alice)) == ["FORBIDDEN"]


@pytest.mark.parametrize("problem, expected", [
    ("missing", "send `X-User-Token"),
    ("expired", "expired"),
    ("tampered", "bad signature"),
    ("malformed", "malformed"),
    ("other-secret", "bad signature"),
])
async def test_acting_for_a_user_a_bound_key_without_a_good_token_is_forbidden(gql, shop, problem, expected):
    _keys, sid, secret, bound = shop
    headers = {
        "missing": {},
        "expired": {"x_user_token": token("alice", secret, ttl_s=-1)},
        "tampered": {"x_user_token": token("alice", secret).replace("alice", "alicf", 1)},
        "malformed": {"x_user_token": "alice.not-a-time.zz"},
        "other-secret": {"x_user_token": token("alice", "0" * 64)},
    }[problem]
    body = await gql(RECOMMEND, {"s": sid, "u": "alice"}, key=bound, **headers)
    assert codes(body) == ["FORBIDDEN"]
    assert expected in error(body)["message"]
    recorded = await gql(RECORD, {"events": [event(sid, "i1", user="alice")]}, key=bound, **headers)
    assert codes(recorded) == ["FORBIDDEN"]


async def test_acting_for_a_user_rotation_replaces_the_secret_and_unbound_keys_act_as_before(served, gql):
    keys, sid, old, bound = await bound_shop(served, gql, "acting-rotation")
    new = (await gql.data(ROTATE_SECRET, key=keys.admin))["rotateUserSigningSecret"]
    assert new != old
    # An old secret's token stops working at once (in this process; others within seconds, by notice).
    assert codes(await gql(RECOMMEND, {"s": sid, "u": "carol"}, key=bound,
                           x_user_token=token("carol", old))) == ["FORBIDDEN"]
    assert not (await gql(RECOMMEND, {"s": sid, "u": "carol"}, key=bound, x_user_token=token("carol", new)))\
        .get("errors")
    # The tenant's ordinary public key still serves any user it names.
    assert not (await gql(RECOMMEND, {"s": sid, "u": "dave"}, key=keys.public)).get("errors")
    # Only an admin rotates the secret; only public keys may require user tokens.
    assert codes(await gql(ROTATE_SECRET, key=keys.gateway)) == ["FORBIDDEN"]
    bad = await gql(CREATE_KEY, {"scope": "GATEWAY", "requireUserToken": True}, key=keys.admin)
    assert codes(bad) == ["BAD_USER_INPUT"]


async def test_acting_for_a_user_a_gateways_x_user_id_names_the_acting_user(gql, shop):
    keys, sid, _secret, _bound = shop
    # Without the header a gateway key behaves as before.
    assert not (await gql(RECOMMEND, {"s": sid, "u": "erin"}, key=keys.gateway)).get("errors")
    assert not (await gql(RECOMMEND, {"s": sid, "u": "erin"}, key=keys.gateway, x_user_id="erin")).get("errors")
    assert codes(await gql(RECOMMEND, {"s": sid, "u": "frank"}, key=keys.gateway, x_user_id="erin")) == ["FORBIDDEN"]
    assert codes(await gql(PROFILE, {"u": "frank"}, key=keys.gateway, x_user_id="erin")) == ["FORBIDDEN"]
    assert not (await gql(PROFILE, {"u": "erin"}, key=keys.gateway, x_user_id="erin")).get("errors")
    entities = await gql(ENTITY_PROFILES, {"reps": [{"__typename": "User", "id": "erin"},
                                                    {"__typename": "User", "id": "frank"}]},
                         key=keys.gateway, x_user_id="erin")
    assert codes(entities) == ["FORBIDDEN"]
    assert entities["errors"][0]["path"][:2] == ["_entities", 1]
    # X-User-Id means nothing on a public key (only a trusted gateway speaks for a user).
    assert not (await gql(RECOMMEND, {"s": sid, "u": "frank"}, key=keys.public, x_user_id="erin")).get("errors")


async def test_acting_for_a_user_an_expired_key_is_unauthenticated_and_keys_show_their_last_use(gql, shop):
    keys, sid, _secret, _bound = shop
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    created = await gql.data(CREATE_KEY, {"scope": "PUBLIC", "expiresAt": soon}, key=keys.admin)
    short = created["createApiKey"]
    assert short["key"]["expiresAt"] is not None and short["key"]["lastUsedAt"] is None
    assert not (await gql(RECOMMEND, {"s": sid, "u": "gina"}, key=short["secret"])).get("errors")
    listed = await _listed_key(gql, keys.admin, short["key"]["id"])
    deadline = time.monotonic() + 5
    while listed["lastUsedAt"] is None and time.monotonic() < deadline:  # written off the request path
        await asyncio.sleep(0.05)
        listed = await _listed_key(gql, keys.admin, short["key"]["id"])
    assert listed["lastUsedAt"] is not None
    await asyncio.sleep(max(0.0, (datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds()) + 0.1)
    assert codes(await gql(RECOMMEND, {"s": sid, "u": "gina"}, key=short["secret"])) == ["UNAUTHENTICATED"]
    assert codes(await gql(CREATE_KEY, {"scope": "PUBLIC", "expiresAt": "2001-01-01T00:00:00+00:00"},
                           key=keys.admin)) == ["BAD_USER_INPUT"]


async def _listed_key(gql, admin: str, key_id: str) -> dict:
    return next(k for k in (await gql.data(API_KEYS, key=admin))["apiKeys"] if k["id"] == key_id)


async def test_acting_for_a_user_last_used_is_written_at_most_once_a_minute(served, gql, shop):
    keys, sid, _secret, _bound = shop
    created = (await gql.data(CREATE_KEY, {"scope": "PUBLIC"}, key=keys.admin))["createApiKey"]
    await gql.data(RECOMMEND, {"s": sid, "u": "hal"}, key=created["secret"])
    deadline = time.monotonic() + 5
    while (first := (await ApiKey.get(created["key"]["id"])).last_used_at) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert first is not None
    await gql.data(RECOMMEND, {"s": sid, "u": "hal"}, key=created["secret"])
    await asyncio.sleep(0.2)
    assert (await ApiKey.get(created["key"]["id"])).last_used_at == first


@pytest.mark.slow
def test_acting_for_a_user_cli_creates_expiring_and_user_bound_keys(tmp_path):
    env = _env(tmp_path, free_port())
    made = subprocess.run([str(BIN), "tenants", "create", "cli-keys", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    tenant = json.loads(made.stdout)["tenant_id"]
    created = subprocess.run([str(BIN), "keys", "create", "--tenant", tenant, "--expires-at", "2099-01-02T03:04:05",
                              "--require-user-token"], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split("\t")[0]
    listed = subprocess.run([str(BIN), "keys", "list", "--tenant", tenant], env=env, capture_output=True, text=True,
                            timeout=120)
    [line] = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert line.split("\t")[4:] == ["2099-01-02T03:04:05+00:00", "user-token"]
    refused = subprocess.run([str(BIN), "keys", "create", "--tenant", tenant, "--scope", "admin",
                              "--require-user-token"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "only public keys" in refused.stderr + refused.stdout
