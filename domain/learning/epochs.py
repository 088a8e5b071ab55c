"""The epoch loop the learned models share: train, score the validation slice, keep the best epoch's weights, stop
after `patience` epochs without a gain, at `max_epochs`, or past the wall-clock budget."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any, Protocol


class Budgeted(Protocol):
    max_epochs: int
    patience: int
    time_budget_seconds: float


def usable_cores() -> int:
    """Return the cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def over(settings: Budgeted, started: float) -> bool:
    """Return whether the training started at `started` (perf_counter) is past its time budget."""
    return time.perf_counter() - started > settings.time_budget_seconds


def fit_epochs(model: Any, settings: Budgeted, started: float, run_epoch: Callable[[], float],
               validate: Callable[[], float] | None, progress: Callable[[float, str], None] | None,
               name: str) -> dict[str, Any]:
    """Run epochs (each `run_epoch()` returns its mean loss) with early stopping on `validate()` (without a
    validation slice: on the loss); leave the best epoch's weights in the model; return what happened."""
    best, best_state, best_epoch, stale, epoch, losses, curve = -1.0, None, 0, 0, 0, [], []
    # At least one epoch, even past the budget (a loaded machine can spend it on the data): weights that never
    # trained are noise. An epoch itself stops after a batch once the budget is spent.
    while epoch < settings.max_epochs and (epoch == 0 or (stale < settings.patience and not over(settings, started))):
        epoch += 1
        model.train()
        losses.append(run_epoch())
        score = validate() if validate is not None else -float(losses[-1])
        curve.append(round(score, 4))
        if score > best:
            best, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
        if progress is not None:
            elapsed = (time.perf_counter() - started) / settings.time_budget_seconds
            progress(min(max(epoch / settings.max_epochs, elapsed), 1.0), f"{name} epoch {epoch}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs": epoch, "bestEpoch": best_epoch, "valNdcg10": round(best, 5) if validate is not None else None,
            "lastLoss": round(losses[-1], 5) if losses else None, "curve": curve,
            "stopped": "patience" if stale >= settings.patience else
            "time budget" if over(settings, started) else "max epochs"}
