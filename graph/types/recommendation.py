"""Recommendation lists."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from domain.recommend.service import RecommendationPage
from graph.types.experiment import Experiment
from graph.types.item import Item
from resolvers.experiments import served_experiment
from resolvers.items import get_items


@strawberry.type(description="One recommended item with its fused score and the recall sources that proposed it.")
class Recommendation:
    item: Item
    score: float
    sources: list[str]


@strawberry.type(description="A ranked list; cite `requestId` in interactions it led to, pass `nextCursor` as `after`.")
class RecommendationList:
    request_id: strawberry.ID
    next_cursor: str | None
    variant: str | None
    debug: JSON | None
    page: strawberry.Private[RecommendationPage]

    @strawberry.field(description="Best first; an item deleted since the list was computed is left out.")
    async def items(self, info: strawberry.Info) -> list[Recommendation]:
        docs = await get_items(info.context, ids=[r.item_id for r in self.page.items])
        return [
            Recommendation(item=Item.from_shared(doc), score=rec.score, sources=list(rec.sources))
            for rec, doc in zip(self.page.items, docs, strict=True)
            if doc is not None
        ]

    @strawberry.field(description="The experiment the user was served under (null outside any; admin or gateway).")
    async def experiment(self, info: strawberry.Info) -> Experiment | None:
        doc = await served_experiment(info.context, id=self.page.experiment_id)
        return Experiment.from_domain(doc) if doc else None

    @classmethod
    def from_domain(cls, page: RecommendationPage) -> RecommendationList:
        """Convert a page of recommendations."""
        return cls(
            request_id=strawberry.ID(page.request_id), next_cursor=page.next_cursor, variant=page.variant,
            debug=page.debug, page=page,
        )
