"""Tenants, API keys and authentication.

Keys are shown once and stored as SHA-256 digests; a key names its tenant and one scope. Authentication results
are cached in-process for a few seconds, so a revoked key stops working on other API pods within that time and on
this pod at once.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from dataclasses import dataclass

from domain.errors import BadInput, NotFound
from domain.hotcache import Invalidations
from domain.ids import new_id, utcnow
from models.documents import ApiKey, Tenant

AUTH_CACHE_SECONDS = 10.0
AUTH_CACHE_MAX = 10_000


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
        self._auth_cache: dict[str, tuple[float, Principal | None]] = {}
        # A key revoked by another process (a CLI command, another serving process) stops working here at once.
        self._invalidations = invalidations or Invalidations(None)
        self._invalidations.on("keys", self._forget_keys)

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

    async def create_key(self, scope: Scope, *, tenant_id: str, rotated_from: str | None = None) -> NewKey:
        """Create a key for the tenant and return it with its secret."""
        secret = _make_secret(scope)
        key = ApiKey(
            id=new_id("k"),
            tenant_id=tenant_id,
            scope=scope.value,
            prefix=secret[: len(f"rg_{scope.value}_") + 6],
            key_hash=hash_key(secret),
            created_at=utcnow(),
            rotated_from=rotated_from,
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
        self._auth_cache.pop(key.key_hash, None)
        await self._invalidations.publish("keys", tenant_id, [key.key_hash])
        return True

    def _forget_keys(self, _tenant_id: str, digests: list[str]) -> None:
        for digest in digests:
            self._auth_cache.pop(digest, None)

    async def rotate_key(self, key_id: str, *, tenant_id: str) -> NewKey:
        """Replace a key by a new one of the same scope and revoke the old one."""
        key = await ApiKey.find_one({"_id": key_id, "tenant_id": tenant_id, "revoked_at": None})
        if key is None:
            raise NotFound(f"no active key {key_id}", field="id")
        new = await self.create_key(Scope(key.scope), tenant_id=tenant_id, rotated_from=key.id)
        await self.revoke_key(key_id, tenant_id=tenant_id)
        return new

    async def authenticate(self, secret: str | None) -> Principal | None:
        """Return the principal for a bearer secret, or None when it is not a live key."""
        if not secret:
            return None
        digest = hash_key(secret)
        cached = self._auth_cache.get(digest)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        key = await ApiKey.find_one({"key_hash": digest})
        principal = None
        if key is not None and key.revoked_at is None:
            principal = Principal(tenant_id=key.tenant_id, scope=Scope(key.scope), key_id=key.id)
        if len(self._auth_cache) >= AUTH_CACHE_MAX:
            self._auth_cache.clear()  # bounded: random bad keys must not grow memory
        self._auth_cache[digest] = (now + AUTH_CACHE_SECONDS, principal)
        return principal
