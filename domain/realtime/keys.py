"""Where the real-time state lives in Redis. Every key but the registry of streams is in the tenant's hash slot.

    t:{T}:events                  the tenant's stream: accepted events and served pages, one field each
    rt:streams                    set of tenant ids that have a stream (the consumer discovers tenants here)
    rt:consumer-alive             present while some consumer runs (each renews it every second)
    t:{T}:done:{day}              ids applied by the consumer, per receive day (idempotency markers)
    t:{T}:wm                      newest receive time (ms) the consumer applied: replay starts from it
    t:{T}:rebuild                 held while a rebuild replays the tenant: the consumer leaves it alone
    t:{T}:pf:{user}               profile hot state (hash): n, acc, ty:TYPE, sc:SCENARIO, h:HOUR, f, l, and the
                                  decayed preferences c:CATEGORY, t:TAG (see domain.profiles)
    t:{T}:rc:{user}               recent interactions (sorted set by event time, newest kept)
    t:{T}:pdirty                  users whose hot state moved since the last MongoDB snapshot
    t:{T}:pop:{scenario}:{bucket} popularity of one 15-minute event-time bucket (sorted set)
    t:{T}:popnew:{scenario}       newest event time (ms) counted for the scenario
    t:{T}:rq:{requestId}          one served page: item -> sources, and _s scenario, _u user, _v variant
"""

from __future__ import annotations

from models.cache import tenant_key

STREAMS = "rt:streams"
HEARTBEAT = "rt:consumer-alive"  # set by every running consumer, expiring: readers wait for a consumer only if one runs
HEARTBEAT_TTL_MS = 5000
GROUP = "recograph"
FIELD = "d"  # the one field of a stream entry
SEP = "\x1f"  # joins the parts of a recent-sequence member and a served item's sources


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
