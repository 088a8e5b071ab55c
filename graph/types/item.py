"""Item types and inputs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry.scalars import JSON

from domain.catalogue import ItemData, ItemFilter as ItemFilterData, UpsertResult
from domain.scenarios.service import Page
from graph.types.common import total_count, ItemError, ItemStatus, PageInfo
from models.documents import Item as ItemDoc
from resolvers.items import get_item
from resolvers.recommendations import similar_items

if TYPE_CHECKING:
    from graph.types.recommendation import RecommendationList


_SHARED: dict[int, tuple[ItemDoc, Item]] = {}  # id(document) -> (document, its conversion), see Item.from_shared
_SHARED_MAX = 60_000


@strawberry.federation.type(keys=["id"], description="A catalogue item; `id` is the client's own id.")
class Item:
    id: strawberry.ID
    title: str | None
    categories: list[str]
    tags: list[str]
    attributes: JSON
    published_at: datetime | None
    status: ItemStatus
    scenario_ids: list[strawberry.ID]
    created_at: datetime
    updated_at: datetime

    @strawberry.field(description="Items similar to this one in a scenario (default: the item's first scenario).")
    async def similar(
        self, info: strawberry.Info, scenario_id: strawberry.ID | None = None, first: int | None = 20
    ) -> Annotated[RecommendationList, strawberry.lazy("graph.types.recommendation")]:
        from graph.types.recommendation import RecommendationList

        scenario = scenario_id or (self.scenario_ids[0] if self.scenario_ids else "")
        page = await similar_items(info.context, scenario_id=scenario, item_id=self.id, first=first)
        return RecommendationList.from_domain(page)

    @classmethod
    def from_domain(cls, doc: ItemDoc) -> Item:
        """Convert a stored item."""
        return cls(
            id=strawberry.ID(doc.item_id), title=doc.title, categories=doc.categories, tags=doc.tags,
            attributes=doc.attributes, published_at=doc.published_at, status=ItemStatus(doc.status),
            scenario_ids=[strawberry.ID(s) for s in doc.scenarios], created_at=doc.created_at,
            updated_at=doc.updated_at,
        )

    @classmethod
    def from_shared(cls, doc: ItemDoc) -> Item:
        """Convert a stored item shared across requests (the hot item cache), once per document."""
        # Every list converts the same few thousand cached documents again and again; a lazily parsed document
        # costs ten field parses per conversion. Keyed by identity: a changed item is a new document object.
        entry = _SHARED.get(id(doc))
        if entry is not None and entry[0] is doc:
            return entry[1]
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        item = cls.from_domain(doc)
        _SHARED[id(doc)] = (doc, item)  # holding the document keeps its id from being reused
        return item

    @classmethod
    async def resolve_reference(cls, info: strawberry.Info, id: strawberry.ID) -> Item | None:
        """Resolve a federation reference within the caller's tenant."""
        doc = await get_item(info.context, id=id)
        return cls.from_domain(doc) if doc else None


@strawberry.type
class ItemEdge:
    node: Item
    cursor: str


@strawberry.type
class ItemConnection:
    edges: list[ItemEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many match, across all pages (counted on request).")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> ItemConnection:
        """Convert a page of items."""
        edges = [ItemEdge(node=Item.from_domain(n), cursor=c) for n, c in zip(page.nodes, page.cursors)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)


@strawberry.input
class ItemInput:
    id: strawberry.ID
    title: str | None = None
    categories: list[str] = strawberry.field(default_factory=list)
    tags: list[str] = strawberry.field(default_factory=list)
    attributes: JSON | None = strawberry.field(default=None, description="Free-form JSON object.")
    published_at: datetime | None = None
    status: ItemStatus = ItemStatus.ACTIVE

    def to_domain(self) -> ItemData:
        """Convert to the domain's item data."""
        return ItemData(
            id=str(self.id), title=self.title, categories=tuple(self.categories), tags=tuple(self.tags),
            attributes=self.attributes, published_at=self.published_at, status=self.status.value,
        )


@strawberry.input
class ItemFilter:
    category: str | None = None
    tag: str | None = None
    status: ItemStatus | None = None
    published_after: datetime | None = None
    published_before: datetime | None = None
    title_prefix: str | None = strawberry.field(default=None, description="Case-insensitive title prefix.")
    search: str | None = strawberry.field(default=None, description="Words that must all occur in the title.")

    def to_domain(self) -> ItemFilterData:
        """Convert to the domain's filter."""
        return ItemFilterData(
            category=self.category, tag=self.tag, status=self.status.value if self.status else None,
            published_after=self.published_after, published_before=self.published_before,
            title_prefix=self.title_prefix, search=self.search,
        )


@strawberry.type
class UpsertItemsResult:
    upserted: int
    errors: list[ItemError]

    @classmethod
    def from_domain(cls, result: UpsertResult) -> UpsertItemsResult:
        """Convert an upsert result."""
        return cls(upserted=result.upserted, errors=[ItemError.from_domain(e) for e in result.errors])
