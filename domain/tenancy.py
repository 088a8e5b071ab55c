"""Tenants, API keys and authentication.

Keys are shown once and stored as SHA-256 digests; a key names its tenant and one scope, may expire, and (public
keys) may require a user token. Authentication results are cached in-process (least recently used evicted) for a
few seconds, so a revoked key stops working on other API pods within that time (at once when the notice arrives)
and on this pod at once; a string that is not shaped like a key is refused before any lookup.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import structlog

from domain.errors import BadInput, NotFound
from domain.hotcache import Invalidations
from domain.ids import new_id, utcnow
from domain.keywatch import KeyWatch
from domain.usertokens import SigningSecrets
from models.documents import ApiKey, Tenant

AUTH_CACHE_SECONDS = 10.0
AUTH_CACHE_MAX = 10_000
TOUCH_EVERY_S = 60.0  # lastUsedAt is written at most this often per key and process
# What `_make_secret` makes: the scope, then 24 random bytes in URL-safe base64 (32 characters).
KEY_SHAPE = re.compile(r"rg_(public|admin|gateway)_[A-Za-z0-9_-]{32}")

log = structlog.get_logger()


class Scope(enum.StrEnum):
    PUBLIC = "public"
    ADMIN = "admin"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant and the scope of the key used."""

    tenant_id: str
    scope: Scope
    key_id: str
    key_hash: str = ""
    expires_at: datetime | None = None
    require_user_token: bool = False


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: the only time its secret is visible."""

    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    """Return the stored digest of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _make_secret(scope: Scope) -> str:
    return f"rg_{scope.value}_{secrets.token_urlsafe(24)}"


class TenancyService:
    """Create tenants and keys; authenticate bearer keys."""

    def __init__(self, invalidations: Invalidations | None = None) -> None:
        self._auth_cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._touched: OrderedDict[str, float] = OrderedDict()  # key id -> when this process last wrote lastUsedAt
        self._tasks: set[asyncio.Task] = set()
        # A key revoked by another process (a CLI command, another serving process) stops working here at once.
        self._invalidations = invalidations or Invalidations(None)
        self._invalidations.on("keys", self._forget_keys)
        self._invalidations.on("signing", lambda tenant_id, _keys: self.signing.forget(tenant_id))
        self.signing = SigningSecrets(lambda tenant_id: self._invalidations.publish("signing", tenant_id))
        self.watch = KeyWatch()  # open subscriptions of a key close when it is revoked or expires

    async def create_tenant(self, name: str) -> tuple[Tenant, dict[Scope, NewKey]]:
        """Create a tenant with one key per scope."""
        name = name.strip()
        if not name:
            raise BadInput("tenant name must not be empty", field="name")
        tenant = Tenant(id=new_id("t"), name=name, created_at=utcnow())
        await tenant.insert()
        keys = {scope: await self.create_key(scope, tenant_id=tenant.id) for scope in Scope}
        return tenant, keys

    async def get_tenant(self, *, tenant_id: str) -> Tenant | None:
        """Return the tenant or None."""
        return await Tenant.get(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        """Return every tenant, oldest first (operators only: the CLI)."""
        return await Tenant.find({}).sort("_id").to_list()

    async def find_tenant_by_name(self, name: str) -> Tenant | None:
        """Return the first tenant with this name, or None."""
        return await Tenant.find_one({"name": name})

    async def create_key(
        self, scope: Scope, *, tenant_id: str, rotated_from: str | None = None, expires_at: datetime | None = None,
        require_user_token: bool = False,
    ) -> NewKey:
        """Create a key for the tenant and return it with its secret."""
        _check_key_options(scope, expires_at=expires_at, require_user_token=require_user_token)
        secret = _make_secret(scope)
        key = ApiKey(
            id=new_id("k"),
            tenant_id=tenant_id,
            scope=scope.value,
            prefix=secret[: len(f"rg_{scope.value}_") + 6],
            key_hash=hash_key(secret),
            created_at=utcnow(),
            rotated_from=rotated_from,
            expires_at=expires_at,
            require_user_token=require_user_token,
        )
        await key.insert()
        return NewKey(key=key, secret=secret)

    async def list_keys(self, *, tenant_id: str, include_revoked: bool = False) -> list[ApiKey]:
        """Return the tenant's keys, oldest first."""
        query: dict = {"tenant_id": tenant_id}
        if not include_revoked:
            query["revoked_at"] = None
        return await ApiKey.find(query).sort("created_at").to_list()

    async def revoke_key(self, key_id: str, *, tenant_id: str) -> bool:
        """Revoke one of the tenant's keys; False if it is unknown or already revoked."""
        key = await ApiKey.find_one({"_id": key_id, "tenant_id": tenant_id})
        if key is None or key.revoked_at is not None:
            return False
        await ApiKey.get_pymongo_collection().update_one(
            {"_id": key_id, "tenant_id": tenant_id}, {"$set": {"revoked_at": utcnow()}}
        )
        self._forget_keys(tenant_id, [key.key_hash])
        await self._invalidations.publish("keys", tenant_id, [key.key_hash])
        return True

    def _forget_keys(self, _tenant_id: str, digests: list[str]) -> None:
        for digest in digests:
            self._auth_cache.pop(digest, None)
        self.watch.invalid(digests)

    async def rotate_key(self, key_id: str, *, tenant_id: str) -> NewKey:
        """Replace a key by a new one of the same scope and revoke the old one."""
        key = await ApiKey.find_one({"_id": key_id, "tenant_id": tenant_id, "revoked_at": None})
        if key is None or (key.expires_at is not None and key.expires_at <= utcnow()):
            raise NotFound(f"no active key {key_id}", field="id")
        # The replacement keeps what the old key promised: its expiry and its user-token rule.
        new = await self.create_key(
            Scope(key.scope), tenant_id=tenant_id, rotated_from=key.id, expires_at=key.expires_at,
            require_user_token=key.require_user_token,
        )
        await self.revoke_key(key_id, tenant_id=tenant_id)
        return new

    async def authenticate(self, secret: str | None) -> Principal | None:
        """Return the principal for a bearer secret, or None when it is not a live, unexpired key."""
        if not secret or not KEY_SHAPE.fullmatch(secret):
            return None  # never looked up, never cached: random strings cannot push real keys out of the cache
        digest = hash_key(secret)
        principal = await self._principal(digest)
        if principal is None:
            return None
        if principal.expires_at is not None and principal.expires_at <= utcnow():
            return None
        self._touch(principal.key_id)
        return principal

    async def _principal(self, digest: str) -> Principal | None:
        """Return the principal of a well-formed key's digest, from the cache or MongoDB."""
        now = time.monotonic()
        cached = self._auth_cache.get(digest)
        if cached and cached[0] > now:
            self._auth_cache.move_to_end(digest)
            return cached[1]
        key = await ApiKey.find_one({"key_hash": digest})
        principal = None
        if key is not None and key.revoked_at is None:
            principal = Principal(
                tenant_id=key.tenant_id, scope=Scope(key.scope), key_id=key.id, key_hash=digest,
                expires_at=key.expires_at, require_user_token=key.require_user_token,
            )
        self._auth_cache[digest] = (now + AUTH_CACHE_SECONDS, principal)
        self._auth_cache.move_to_end(digest)
        while len(self._auth_cache) > AUTH_CACHE_MAX:
            self._auth_cache.popitem(last=False)  # least recently used
        return principal

    def _touch(self, key_id: str) -> None:
        """Record the key's use (lastUsedAt) off the request path, at most once a minute per key and process."""
        now = time.monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        self._touched[key_id] = now
        self._touched.move_to_end(key_id)
        while len(self._touched) > AUTH_CACHE_MAX:
            self._touched.popitem(last=False)
        task = asyncio.create_task(_write_last_used(key_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def rotate_signing_secret(self, *, tenant_id: str) -> str:
        """Create or replace the tenant's user-signing secret and return it (shown this once)."""
        return await self.signing.rotate(tenant_id=tenant_id)

    async def verify_user_token(self, token: str | None, *, tenant_id: str) -> str:
        """Return the user id a user token vouches for, or raise FORBIDDEN."""
        return await self.signing.verify(token, tenant_id=tenant_id)


async def _write_last_used(key_id: str) -> None:
    try:
        await ApiKey.get_pymongo_collection().update_one({"_id": key_id}, {"$set": {"last_used_at": utcnow()}})
    except Exception as exc:  # noqa: BLE001 - a missed lastUsedAt is retried on the next use after a minute
        log.warning("tenancy.last_used_failed", key_id=key_id, error=repr(exc))


def _check_key_options(scope: Scope, *, expires_at: datetime | None, require_user_token: bool) -> None:
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= utcnow()):
        raise BadInput("expiresAt must be a time in the future, with an offset", field="expiresAt")
    if require_user_token and scope is not Scope.PUBLIC:
        raise BadInput("only public keys can require a user token (a gateway names its user in X-User-Id)",
                       field="requireUserToken")
