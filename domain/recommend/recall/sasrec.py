"""`sasrec`: the items a next-item transformer expects after the user's newest items.

The request's history (training history and live events, oldest first) is the model's input, with each item's
event type and value where the model was trained with them, so a new event changes the answer on the next request.
The forward pass runs in numpy on the exported weights (domain.learning.sequences): a fraction of a millisecond, and
no torch in the serving process.
"""

from __future__ import annotations

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext


@REGISTRY.recall
class SasrecSource:
    """Next-item probabilities of every item after the user's sequence; empty for a new user or an untrained model."""

    name = "sasrec"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        model = ctx.model
        if model is None or model.sasrec is None:
            return Candidates.empty()
        if model.sasrec.reads_events:  # each item with its event's type and value
            items, types, values = ctx.history_events
            scores = model.sasrec.next_item_scores(items, len(model.catalogue), types, values)
        else:
            scores = model.sasrec.next_item_scores(ctx.history_model, len(model.catalogue))
        if scores is None:
            return Candidates.empty()
        return ctx.top(scores, limit)
