"""Profile resolvers."""

from __future__ import annotations

from domain.profiles import ProfileView
from resolvers.context import READERS, RequestContext


async def get_profile(ctx: RequestContext, *, user_id: str) -> ProfileView | None:
    """Return a user's profile, or None for a user never seen."""
    ctx.require(READERS)
    ctx.require_user(user_id)
    return await ctx.loaders.profiles.load(user_id)
