"""Experiment outcomes in Redis: each exposed user's components, each variant's sums, covariates and arms.

The stream consumer's batch script (domain.realtime.script) keeps them, in the same atomic, idempotent step that
counts live metrics: a page served under an experiment exposes its user (and adds impressions, a list, its latency),
an event citing such a page adds to that user's clicks, conversions, watch time and interactions. When a user's
components move from `old` to `new`, the variant's sums move by `new - old` and each product sum by
`new_a * new_b - old_a * old_b`, so the sufficient statistics are always current and results read one hash.

    t:{T}:xu:{experiment}   user -> JSON [variant, component values in ALL_COMPONENTS order]
    t:{T}:xs:{experiment}   "{variant}|n", "{variant}|s|{i}" (sum of component i), "{variant}|p|{i}|{j}" (sum of
                            products), i and j 1-based positions in ALL_COMPONENTS
    t:{T}:xp:{experiment}   user -> JSON [pre-period values in PRE_COMPONENTS order] (CUPED covariates, written at
                            start from the 14 days before it)
    t:{T}:xa:{experiment}   THOMPSON: user -> the arm first given
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import timedelta

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.experiments.metrics import ALL_COMPONENTS, PAIRS, PRE_COMPONENTS, PRE_WINDOW_DAYS
from domain.experiments.moments import Moments
from domain.realtime.keys import prefix
from models.cache import CacheUnavailable
from models.documents import Experiment, Impression, Interaction, Item

log = structlog.get_logger()

INDEX = {name: i + 1 for i, name in enumerate(ALL_COMPONENTS)}  # 1-based, as Lua counts
PRE_INDEX = [INDEX[name] for name in PRE_COMPONENTS]
PAIR_INDEX = [[INDEX[a], INDEX[b]] for a, b in PAIRS]
# What the batch script needs to know of the components (sent with every batch; built once).
SCRIPT_CONFIG = json.dumps({
    "n": len(ALL_COMPONENTS), "pairs": PAIR_INDEX, "pre": PRE_INDEX,
    "c": {name: INDEX[name] for name in ALL_COMPONENTS},
}, separators=(",", ":"))
WRITE_CHUNK = 1000
PREPARE_WAIT_S = 2.0  # how long a start waits for the covariates before they are finished in the background


def user_key(tenant_id: str, experiment_id: str) -> str:
    return f"{prefix(tenant_id)}xu:{experiment_id}"


def sums_key(tenant_id: str, experiment_id: str) -> str:
    return f"{prefix(tenant_id)}xs:{experiment_id}"


def pre_key(tenant_id: str, experiment_id: str) -> str:
    return f"{prefix(tenant_id)}xp:{experiment_id}"


def arms_key(tenant_id: str, experiment_id: str) -> str:
    return f"{prefix(tenant_id)}xa:{experiment_id}"


# Remove one user from every experiment given: subtract their components from their variant's sums, then forget
# them. KEYS: per experiment, its users, sums, covariates and arms hashes. ARGV: user, the script config.
ERASE = r"""
local user, cfg = ARGV[1], cjson.decode(ARGV[2])
local removed = 0
for k = 1, #KEYS, 4 do
  local raw = redis.call('HGET', KEYS[k], user)
  if raw then
    local rec = cjson.decode(raw)
    local v = rec[1]
    redis.call('HINCRBY', KEYS[k + 1], v .. '|n', -1)
    for i = 1, cfg.n do
      local x = tonumber(rec[i + 1]) or 0
      if x ~= 0 then redis.call('HINCRBYFLOAT', KEYS[k + 1], v .. '|s|' .. i, -x) end
    end
    for _, pr in ipairs(cfg.pairs) do
      local x = (tonumber(rec[pr[1] + 1]) or 0) * (tonumber(rec[pr[2] + 1]) or 0)
      if x ~= 0 then redis.call('HINCRBYFLOAT', KEYS[k + 1], v .. '|p|' .. pr[1] .. '|' .. pr[2], -x) end
    end
    redis.call('HDEL', KEYS[k], user)
    removed = removed + 1
  end
  removed = removed + redis.call('HDEL', KEYS[k + 2], user) + redis.call('HDEL', KEYS[k + 3], user)
end
return removed
"""


class ExperimentOutcomes:
    """Read and prepare what the consumer keeps per experiment; erase a user from them."""

    def __init__(self, redis: aioredis.Redis | None) -> None:
        self._r = redis
        self._erase = redis.register_script(ERASE) if redis is not None else None
        self._preparing: set[asyncio.Task] = set()  # covariates still being written after their start returned

    async def prepare(self, experiment: Experiment, *, wait_s: float = PREPARE_WAIT_S) -> None:
        """Write each user's covariates: the same components over the PRE_WINDOW_DAYS before the start. Wait at most
        `wait_s` for them; past it they are finished in the background and the experiment starts at once.

        A user exposed before their covariates are written keeps zeros. That does not bias the CUPED estimate: when
        a user is exposed does not depend on their variant, so the covariate stays independent of the treatment; it
        only narrows the interval less."""
        if self._r is None or experiment.started_at is None:
            return
        task = asyncio.create_task(self._prepare(experiment))
        self._preparing.add(task)
        task.add_done_callback(self._prepared)
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            log.warning("experiments.preparing_in_background", experiment_id=experiment.id, waited_s=wait_s)

    def _prepared(self, task: asyncio.Task) -> None:
        self._preparing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("experiments.prepare_failed", error=repr(exc))

    async def _prepare(self, experiment: Experiment) -> None:
        pre = await _pre_period(experiment)
        key = pre_key(experiment.tenant_id, experiment.id)
        try:
            await self._r.delete(key)
            rows = list(pre.items())
            for s in range(0, len(rows), WRITE_CHUNK):
                await self._r.hset(key, mapping={u: json.dumps(v) for u, v in rows[s:s + WRITE_CHUNK]})
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
        log.info("experiments.prepared", experiment_id=experiment.id, users_with_history=len(pre))

    async def drop(self, experiment: Experiment) -> None:
        """Remove everything kept for the experiment."""
        if self._r is None:
            return
        t, x = experiment.tenant_id, experiment.id
        try:
            await self._r.delete(user_key(t, x), sums_key(t, x), pre_key(t, x), arms_key(t, x))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def moments(self, experiment: Experiment) -> dict[str, Moments]:
        """Return each variant's sufficient statistics (variants without exposures have n = 0)."""
        raw = await self._read(lambda r: r.hgetall(sums_key(experiment.tenant_id, experiment.id)))
        return parse_sums(raw or {}, [v["name"] for v in experiment.variants])

    async def stored_arm(self, experiment: Experiment, user_id: str) -> str | None:
        """Return the arm a THOMPSON experiment first gave the user (None: not given yet)."""
        raw = await self._read(lambda r: r.hget(arms_key(experiment.tenant_id, experiment.id), user_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def give_arm(self, experiment: Experiment, user_id: str, variant: str) -> str:
        """Give the user `variant` unless an arm was given before; return the arm the user has."""
        key = arms_key(experiment.tenant_id, experiment.id)

        async def given(r: aioredis.Redis) -> str:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hsetnx(key, user_id, variant)
                pipe.hget(key, user_id)
                _, arm = await pipe.execute()
            return arm.decode() if isinstance(arm, bytes) else (arm or variant)

        return await self._read(given)

    async def erase_user(self, user_id: str, experiments: Iterable[Experiment], *, tenant_id: str) -> int:
        """Remove the user's outcomes, covariates and arm from the experiments; return the entries removed."""
        if self._erase is None:
            return 0
        keys: list[str] = []
        for x in experiments:
            keys += [user_key(tenant_id, x.id), sums_key(tenant_id, x.id), pre_key(tenant_id, x.id),
                     arms_key(tenant_id, x.id)]
        if not keys:
            return 0
        try:
            return int(await self._erase(keys=keys, args=[user_id, SCRIPT_CONFIG]))
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def _read(self, call):  # noqa: ANN001, ANN202 - a one-line adapter around a Redis call
        if self._r is None:
            raise CacheUnavailable("experiment outcomes need Redis")
        try:
            return await call(self._r)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc


def parse_sums(raw: dict, variants: list[str]) -> dict[str, Moments]:
    """Return Moments per variant from the sums hash's fields (variant names may hold any character)."""
    n: dict[str, int] = {v: 0 for v in variants}
    sums: dict[str, dict[str, float]] = {v: {} for v in variants}
    products: dict[str, dict[tuple[str, str], float]] = {v: {} for v in variants}
    for field, value in raw.items():
        field = field.decode() if isinstance(field, bytes) else field
        parsed = _field(field)
        if parsed is None:
            continue
        variant, kind, names = parsed
        if kind == "n":
            n[variant] = int(float(value))
        elif kind == "s":
            sums.setdefault(variant, {})[names[0]] = float(value)
        else:
            products.setdefault(variant, {})[(names[0], names[1])] = float(value)
    return {v: Moments(n=max(n.get(v, 0), 0), sums=sums.get(v, {}), products=products.get(v, {})) for v in n}


_NAMES = {i: name for name, i in INDEX.items()}


def _field(field: str) -> tuple[str, str, tuple[str, ...]] | None:
    """Split a sums field into (variant, "n" | "s" | "p", component names)."""
    if field.endswith("|n"):
        return field[:-2], "n", ()
    head, _, last = field.rpartition("|")
    if head.endswith("|s") and last.isdigit():
        return head[:-2], "s", (_NAMES[int(last)],)
    head, _, first = head.rpartition("|")
    if head.endswith("|p") and first.isdigit() and last.isdigit():
        return head[:-2], "p", (_NAMES[int(first)], _NAMES[int(last)])
    return None


async def _pre_period(experiment: Experiment) -> dict[str, list[float]]:
    """Return user -> PRE_COMPONENTS values over the window before the start (users without history left out)."""
    end = experiment.started_at
    start = end - timedelta(days=PRE_WINDOW_DAYS)
    match = {"tenant_id": experiment.tenant_id, "scenario_id": experiment.scenario_id}
    out: dict[str, list[float]] = {}

    def row(user: str) -> list[float]:
        return out.setdefault(user, [0.0] * len(PRE_COMPONENTS))

    pages = Impression.get_pymongo_collection().aggregate([
        {"$match": {**match, "served_at": {"$gte": start, "$lt": end}}},
        {"$group": {"_id": "$user_id", "n": {"$sum": {"$size": "$items"}}}},
    ])
    for doc in await (await pages).to_list(None):
        if doc["_id"]:
            row(doc["_id"])[0] = float(doc["n"])
    # Attributed events only, like the outcomes they stand in for.
    events = Interaction.get_pymongo_collection().find(
        {**match, "ts": {"$gte": start, "$lt": end}, "request_id": {"$ne": None}},
        {"_id": 0, "user_id": 1, "type": 1, "value": 1, "item_id": 1},
    )
    durations = await _durations(experiment)
    async for doc in events:
        _add_event(row(doc["user_id"]), doc, durations)
    return out


def _add_event(values: list[float], doc: dict, durations: dict[str, float]) -> None:
    """Add one attributed event to a user's pre-period values (PRE_COMPONENTS order)."""
    values[6] += 1  # pre_interactions
    kind = doc.get("type")
    if kind == "CLICK":
        values[1] += 1
    elif kind == "PURCHASE":
        values[2] = 1.0
    elif kind == "WATCH" and doc.get("value") is not None:
        values[3] += float(doc["value"])
        duration = durations.get(doc.get("item_id"))
        if duration:
            values[4] += min(float(doc["value"]) / duration, 1.0)
            values[5] += 1


async def _durations(experiment: Experiment) -> dict[str, float]:
    """Return item id -> duration in seconds, for the scenario's items that have one."""
    cursor = Item.get_pymongo_collection().find(
        {"tenant_id": experiment.tenant_id, "scenarios": experiment.scenario_id,
         "attributes.durationSeconds": {"$exists": True}},
        {"_id": 0, "item_id": 1, "attributes.durationSeconds": 1},
    )
    out: dict[str, float] = {}
    async for doc in cursor:
        try:
            out[doc["item_id"]] = float(doc["attributes"]["durationSeconds"])
        except (KeyError, TypeError, ValueError):
            continue
    return out
