"""User tokens: a product's backend vouches for its signed-in user, so a frontend key acts for that user only.

A token is `<userId>.<expiry epoch seconds>.<hex HMAC-SHA256 of "<userId>.<expiry>">` under the tenant's
user-signing secret. User ids may contain dots, so a token is read from the right: the last two parts are the
expiry and the signature, everything before them the user id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Awaitable, Callable

from domain.errors import Forbidden
from models.documents import Tenant

SECRET_CACHE_SECONDS = 10.0  # another process's rotation reaches this one within this time (or at once by notice)
SECRET_CACHE_MAX = 10_000


def sign_user_token(user_id: str, expires_at: int, secret: str) -> str:
    """Return the token a product's backend hands its frontend for `user_id`, valid until `expires_at` (epoch s)."""
    payload = f"{user_id}.{expires_at}"
    return f"{payload}.{hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()}"


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in string.hexdigits for c in text)


def parse_user_token(token: str) -> tuple[str, int, str]:
    """Return (user id, expiry, signature) of a token, or raise FORBIDDEN when it is not one."""
    payload, _, signature = token.rpartition(".")
    user_id, _, expiry = payload.rpartition(".")
    # isascii: "²" passes isdigit() alone
    if not user_id or not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12) or not _is_hex(signature):
        raise Forbidden("malformed X-User-Token: expected <userId>.<expiry epoch seconds>.<hex HMAC-SHA256>")
    return user_id, int(expiry), signature


def check_user_token(token: str, secret: str, *, now: float | None = None) -> str:
    """Return the user id a token vouches for under `secret`, or raise FORBIDDEN (bad signature, expired)."""
    user_id, expiry, signature = parse_user_token(token)
    signed = token.rpartition(".")[0]  # exactly as sent (an expiry with leading zeros is signed as written)
    expected = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise Forbidden("X-User-Token has a bad signature (signed with another or an old user-signing secret?)")
    if expiry <= (time.time() if now is None else now):
        raise Forbidden("X-User-Token has expired: ask the product's backend for a fresh one")
    return user_id


class SigningSecrets:
    """Each tenant's user-signing secret: created and replaced by rotation, read (cached briefly) to verify tokens."""

    def __init__(self, publish: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._publish = publish

    async def rotate(self, *, tenant_id: str) -> str:
        """Create or replace the tenant's secret and return it (the only time it is shown)."""
        secret = secrets.token_hex(32)
        await Tenant.get_pymongo_collection().update_one({"_id": tenant_id}, {"$set": {"user_signing_secret": secret}})
        self.forget(tenant_id)
        if self._publish is not None:
            await self._publish(tenant_id)
        return secret

    def forget(self, tenant_id: str) -> None:
        """Drop the cached secret of a tenant (after a rotation here or elsewhere)."""
        self._cache.pop(tenant_id, None)

    async def get(self, *, tenant_id: str) -> str | None:
        """Return the tenant's secret, or None before its first rotation."""
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached and cached[0] > now:
            return cached[1]
        doc = await Tenant.get_pymongo_collection().find_one({"_id": tenant_id}, {"user_signing_secret": 1})
        secret = doc.get("user_signing_secret") if doc else None
        if len(self._cache) >= SECRET_CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))  # the oldest entry
        self._cache[tenant_id] = (now + SECRET_CACHE_SECONDS, secret)
        return secret

    async def verify(self, token: str | None, *, tenant_id: str) -> str:
        """Return the user id a token vouches for in this tenant, or raise FORBIDDEN saying what is wrong."""
        if not token:
            raise Forbidden("this key acts for one user only: send `X-User-Token: <userId>.<expiry>.<signature>`")
        secret = await self.get(tenant_id=tenant_id)
        if secret is None:
            raise Forbidden("the tenant has no user-signing secret yet: an admin creates one with "
                            "rotateUserSigningSecret")
        return check_user_token(token, secret)
