"""DataLoaders, created per request and bound to the caller's tenant: one `$in` query per batch."""

from __future__ import annotations

from dataclasses import dataclass

from strawberry.dataloader import DataLoader

from domain.profiles import ProfileView
from domain.services import Services
from models.documents import Item, Scenario


@dataclass(frozen=True)
class Loaders:
    items: DataLoader[str, Item | None]
    scenarios: DataLoader[str, Scenario | None]
    profiles: DataLoader[str, ProfileView | None]


def make_loaders(services: Services, tenant_id: str | None) -> Loaders:
    """Return fresh loaders for one request; without a tenant every key loads as None."""

    async def items(ids: list[str]) -> list[Item | None]:
        return await services.catalogue.get_many(ids, tenant_id=tenant_id) if tenant_id else [None] * len(ids)

    async def scenarios(ids: list[str]) -> list[Scenario | None]:
        return await services.scenarios.get_many(ids, tenant_id=tenant_id) if tenant_id else [None] * len(ids)

    async def profiles(ids: list[str]) -> list[ProfileView | None]:
        return await services.profiles.get_many(ids, tenant_id=tenant_id) if tenant_id else [None] * len(ids)

    return Loaders(items=DataLoader(items), scenarios=DataLoader(scenarios), profiles=DataLoader(profiles))
