"""Close what a key holds open (websocket subscriptions) once the key is revoked or expires.

Holders register a callback per key digest. A revocation here or a "keys" notice from another process fires the
callbacks at once; a periodic re-check (one query for every watched key of this process) catches a notice that
was lost and keys that expired, within `interval_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from domain.ids import utcnow
from models.documents import ApiKey

RECHECK_S = 3.0

log = structlog.get_logger()


class KeyWatch:
    """Callbacks per key digest, fired when the key stops being valid."""

    def __init__(self, *, interval_s: float = RECHECK_S) -> None:
        self._watchers: dict[str, dict[int, Callable[[], None]]] = {}
        self._interval = interval_s
        self._task: asyncio.Task | None = None
        self._next = 0

    def watch(self, digest: str, on_invalid: Callable[[], None]) -> Callable[[], None]:
        """Call `on_invalid()` once the key stops being valid; return a function that stops watching."""
        self._next += 1
        token = self._next
        self._watchers.setdefault(digest, {})[token] = on_invalid
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._recheck(), name="recograph-key-watch")

        def stop() -> None:
            holders = self._watchers.get(digest)
            if holders is not None:
                holders.pop(token, None)
                if not holders:
                    del self._watchers[digest]

        return stop

    def invalid(self, digests: Iterable[str]) -> None:
        """Fire (and forget) the callbacks of keys known to be invalid now."""
        for digest in digests:
            for callback in self._watchers.pop(digest, {}).values():
                try:
                    callback()
                except Exception as exc:  # noqa: BLE001 - one holder's failure must not spare the others
                    log.warning("keywatch.callback_failed", error=repr(exc))

    async def _recheck(self) -> None:
        # Runs while anything is watched; the next `watch` starts it again.
        while self._watchers:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - Mongo away: try again next round
                log.warning("keywatch.recheck_failed", error=repr(exc))

    async def check(self) -> None:
        """Fire the callbacks of watched keys that are revoked, expired or gone (one query)."""
        digests = list(self._watchers)
        if not digests:
            return
        live = await ApiKey.get_pymongo_collection().find(
            {"key_hash": {"$in": digests}, "revoked_at": None}, {"key_hash": 1, "expires_at": 1}
        ).to_list(None)
        now = utcnow()
        valid = {k["key_hash"] for k in live if k.get("expires_at") is None or k["expires_at"] > now}
        self.invalid([d for d in digests if d not in valid])

