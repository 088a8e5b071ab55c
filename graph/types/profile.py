"""User profile and the federated User entity."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from domain.profiles import ProfileView
from graph.types.common import InteractionType
from graph.types.item import Item
from resolvers.items import get_item
from resolvers.profiles import get_profile
from resolvers.recommendations import recommend

if TYPE_CHECKING:
    from graph.types.recommendation import RecommendationList


@strawberry.type
class TypeCount:
    type: InteractionType
    count: int


@strawberry.type
class LabelScore:
    label: str
    score: float = strawberry.field(description="Decayed preference at the user's last activity.")


@strawberry.type
class HourCount:
    hour: int = strawberry.field(description="Hour of the day in UTC, 0-23.")
    count: int


@strawberry.type
class RecentInteraction:
    item_id: strawberry.ID
    scenario_id: strawberry.ID
    type: InteractionType
    timestamp: datetime

    @strawberry.field
    async def item(self, info: strawberry.Info) -> Item | None:
        """The item, if it still exists."""
        doc = await get_item(info.context, id=self.item_id)
        return Item.from_domain(doc) if doc else None


@strawberry.type(description="What recograph knows about one end user, kept current by the event consumer.")
class UserProfile:
    user_id: strawberry.ID
    interaction_count: int
    counts_by_type: list[TypeCount]
    top_categories: list[LabelScore]
    top_tags: list[LabelScore]
    recent: list[RecentInteraction] = strawberry.field(description="Newest first.")
    first_seen: datetime | None
    last_seen: datetime | None
    active_hours: list[HourCount] = strawberry.field(description="Interactions by UTC hour of the day, by hour.")

    @classmethod
    def from_domain(cls, p: ProfileView) -> UserProfile:
        """Convert a profile view."""
        return cls(
            user_id=strawberry.ID(p.user_id),
            interaction_count=p.interaction_count,
            counts_by_type=[TypeCount(type=InteractionType(t), count=n) for t, n in sorted(p.counts_by_type.items())],
            top_categories=[LabelScore(label=k, score=v) for k, v in p.top_categories],
            top_tags=[LabelScore(label=k, score=v) for k, v in p.top_tags],
            recent=[
                RecentInteraction(item_id=r["i"], scenario_id=r["s"], type=InteractionType(r["y"]), timestamp=r["t"])
                for r in p.recent
            ],
            first_seen=p.first_seen,
            last_seen=p.last_seen,
            active_hours=[HourCount(hour=h, count=n) for h, n in sorted(p.active_hours.items())],
        )


async def load_profile(info: strawberry.Info, user_id: str) -> UserProfile | None:
    """Return the GraphQL profile of a user, or None."""
    view = await get_profile(info.context, user_id=user_id)
    return UserProfile.from_domain(view) if view else None


@strawberry.federation.type(keys=["id"], description="An end user of a product; owned by the product's own subgraph.")
class User:
    id: strawberry.ID

    @strawberry.field
    async def profile(self, info: strawberry.Info) -> UserProfile | None:
        """The user's profile in this tenant, or null for a user never seen."""
        return await load_profile(info, str(self.id))

    @strawberry.field(description="The user's recommendations in a scenario.")
    async def recommendations(
        self, info: strawberry.Info, scenario_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Annotated[RecommendationList, strawberry.lazy("graph.types.recommendation")]:
        from graph.types.recommendation import RecommendationList

        page = await recommend(info.context, scenario_id=scenario_id, user_id=str(self.id), first=first, after=after)
        return RecommendationList.from_domain(page)

    @classmethod
    def resolve_reference(cls, id: strawberry.ID) -> User:
        """Any id is a user: a user without history simply has no profile yet."""
        return cls(id=id)
