"""Where the real-time state lives in Redis. Every key but the registry of streams is in the tenant's hash slot.

A user's own keys (pf, rc, and models.cache's seen sets and cache version `uv`) expire after the inactivity of
RECOGRAPH_USER_STATE_TTL_DAYS (each write renews it) and are rebuilt from MongoDB when the user returns; markers
(`done`) expire after MARKER_TTL_S, served pages (`rq`) after the attribution window. Keys without a TTL are
per tenant or per scenario, never per user or per request.

    t:{T}:events                  the tenant's stream: accepted events and served pages, one field each
    rt:streams                    set of tenant ids that have a stream (the consumer discovers tenants here)
    rt:consumer-alive             present while some consumer runs (each renews it every second)
    rt:sweep                      held by the consumer running this period's catch-up sweep (domain.realtime.sweep)
    t:{T}:done:{day}              ids applied by the consumer, per receive day (idempotency markers)
    t:{T}:wm                      newest receive time (ms) the consumer applied: replay starts from it
    t:{T}:rebuild                 held while a rebuild replays the tenant: the consumer leaves it alone
    t:{T}:pf:{user}               profile hot state (hash): n, acc, ty:TYPE, sc:SCENARIO, h:HOUR, f, l, and the
                                  decayed preferences c:CATEGORY, t:TAG (see domain.profiles)
    t:{T}:rc:{user}               recent interactions (sorted set by event time, newest kept); each member the JSON
                                  array [ts ms, item, scenario, type, event id, value] (`recent_member`; serving
                                  reads it for the order, types and values of live events)
    t:{T}:pdirty                  users whose hot state moved since the last MongoDB snapshot
    t:{T}:pop:{scenario}:{bucket} popularity of one 15-minute event-time bucket (sorted set)
    t:{T}:popnew:{scenario}       newest event time (ms) counted for the scenario
    t:{T}:rq:{requestId}          one served page: i:{item} -> its sources, and _s scenario, _u user, _v variant;
                                  kept for the attribution window (RECOGRAPH_REALTIME_ATTRIBUTION_WINDOW_H, 24 h)
                                  (item fields are prefixed so that no item id can overwrite the page's own fields)
    t:{T}:dead                    the tenant's dead letters: stream entries that kept failing (realtime.deadletters)
    t:{T}:swept                   receive time (ms) up to which the periodic catch-up found every stored event applied
    t:{T}:restore:{user}          held while a returning user's state is rebuilt from MongoDB (realtime.returning)
    t:{T}:unflushed               consumer -> "<entry id> <wall ms>": the lowest acknowledged entry whose served page
                                  the consumer has not written to MongoDB yet; trims stop there (realtime.trim)
"""

from __future__ import annotations

import msgspec

from models.cache import tenant_key

STREAMS = "rt:streams"
HEARTBEAT = "rt:consumer-alive"  # set by every running consumer, expiring: readers wait for a consumer only if one runs
HEARTBEAT_TTL_MS = 5000
GROUP = "recograph"
FIELD = "d"  # the one field of a stream entry
RECENT_KEPT = 50  # a user's newest events kept in their recent sorted set, every scenario together
SEP = "\x1f"  # joins a served item's sources (recall stage names, never ids) and the parts of legacy recent members
_MEMBER = msgspec.json.Encoder()
_MEMBER_DECODER = msgspec.json.Decoder(tuple[int, str, str, str, str, float | None])
_MEMBER_DECODER_V1 = msgspec.json.Decoder(tuple[int, str, str, str, str])  # written before members held the value


def recent_member(ts_ms: int, item_id: str, scenario_id: str, kind: str, event_id: str,
                  value: float | None = None) -> str:
    """Return the member of an interaction in the user's recent sorted set (JSON: any id is safe in it)."""
    return _MEMBER.encode((ts_ms, item_id, scenario_id, kind, event_id, value)).decode()


def parse_recent(member: str) -> tuple[int, str, str, str]:
    """Return (ts ms, item, scenario, type) of a recent member, JSON or written before (joined by SEP)."""
    return recent_event(member)[:4]


def recent_event(member: str) -> tuple[int, str, str, str, float | None]:
    """Return (ts ms, item, scenario, type, value) of a recent member; the value is None where the event had none
    or the member was written before members held it."""
    if member.startswith("["):
        try:
            ts, item, scenario, kind, _, value = _MEMBER_DECODER.decode(member)
        except msgspec.ValidationError:
            (ts, item, scenario, kind, _), value = _MEMBER_DECODER_V1.decode(member), None
        return ts, item, scenario, kind, value
    ts_text, item, scenario, kind, _ = member.split(SEP, 4)
    return int(ts_text), item, scenario, kind, None


def stream_key(tenant_id: str) -> str:
    """Return the tenant's event stream."""
    return tenant_key(tenant_id, "events")


def prefix(tenant_id: str) -> str:
    """Return the prefix every key of the tenant starts with (the Lua script builds keys from it)."""
    return tenant_key(tenant_id, "")


def profile_key(tenant_id: str, user_id: str) -> str:
    """Return the user's profile hot-state hash."""
    return tenant_key(tenant_id, "pf", user_id)


def recent_key(tenant_id: str, user_id: str) -> str:
    """Return the user's recent-interactions sorted set."""
    return tenant_key(tenant_id, "rc", user_id)


def dirty_key(tenant_id: str) -> str:
    """Return the set of users whose profile snapshot in MongoDB is behind."""
    return tenant_key(tenant_id, "pdirty")


def watermark_key(tenant_id: str) -> str:
    """Return the key of the newest receive time applied."""
    return tenant_key(tenant_id, "wm")


def rebuild_key(tenant_id: str) -> str:
    """Return the lock a rebuild holds."""
    return tenant_key(tenant_id, "rebuild")


def done_key(tenant_id: str, day: int) -> str:
    """Return the marker set of one receive day (epoch seconds // 86400)."""
    return tenant_key(tenant_id, "done", str(day))


def bucket_key(tenant_id: str, scenario_id: str, bucket: int) -> str:
    """Return one 15-minute popularity bucket of a scenario."""
    return tenant_key(tenant_id, "pop", scenario_id, str(bucket))


def newest_key(tenant_id: str, scenario_id: str) -> str:
    """Return the key of the scenario's newest counted event time (ms)."""
    return tenant_key(tenant_id, "popnew", scenario_id)


def request_key(tenant_id: str, request_id: str) -> str:
    """Return the hash describing one served page."""
    return tenant_key(tenant_id, "rq", request_id)


def dead_key(tenant_id: str) -> str:
    """Return the tenant's dead-letter stream."""
    return tenant_key(tenant_id, "dead")


def swept_key(tenant_id: str) -> str:
    """Return the key of the receive time (ms) up to which the periodic catch-up checked the tenant."""
    return tenant_key(tenant_id, "swept")
