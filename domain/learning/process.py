"""The training process: a pool of one child process that fits and saves models off the serving event loop.

The child cannot reach MongoDB or the job record, so it reports progress through a multiprocessing queue; the
parent relays the newest message a few times a second. A fit past its time limit (or abandoned by a cancelled
job) kills the child, and the next fit starts a fresh one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_errors
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from domain.jobs import JobTimeout
from domain.learning.model import ScenarioModel
from domain.learning.train import TrainingData, refit_similarity, train_scenario_model

Report = Callable[[float, str], Awaitable[None]]
RELAY_S = 0.25  # how often the parent forwards the child's progress
# The learned models' training record, as the version's metrics (numbers) name it: `<model>_val_ndcg10` etc.
LEARNED_MODELS = ("sasrec", "two_tower", "ranker")
LEARNED_METRICS = {"valNdcg10": "val_ndcg10", "epochs": "epochs", "bestEpoch": "best_epoch", "seconds": "s"}


class TrainingTimeout(JobTimeout):
    """The training process ran past the time limit and was stopped."""


class TrainingProcess:
    """Fit scenario models in one child process, one fit at a time."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._progress: Any = None  # the pool's multiprocessing queue
        self._lock = asyncio.Lock()
        self._warming: asyncio.Task | None = None
        self._fits = 0  # fits running or waiting for the child

    def warm(self) -> None:
        """Start the child in the background (its imports take seconds), so that it is ready when the data is."""
        self._warming = asyncio.get_running_loop().create_task(_submit(self._pool_or_new(), _ready))
        self._warming.add_done_callback(_ignore_failure)  # a child that cannot start fails the fit that follows

    async def fit(
        self, data: TrainingData, config: dict, *, scenario_id: str, version: int, path: Path, time_limit_s: float,
        report: Report, base: Path | None = None, champion: Path | None = None,
    ) -> dict[str, Any]:
        """Train and save the model at path in the child (scoring the serving `champion`'s saved model on the new
        validation slice); return timings, size, item embeddings and two-tower item
        vectors.

        With `base` (a saved model), only the similarity models are refitted and the rest is copied from it.
        """
        self._fits += 1
        try:
            async with self._lock:  # a second training waits instead of competing for the cores
                return await self._fit(data, config, scenario_id, version, path, time_limit_s, report, base,
                                       champion)
        finally:
            self._fits -= 1
            self.release()

    def release(self) -> None:
        """Let the idle child exit (it holds hundreds of MB between trainings); the next warm() starts a new one."""
        if self._fits:
            return
        pool, progress, self._pool, self._progress = self._pool, self._progress, None, None
        if pool is not None:
            pool.shutdown(wait=False)
        if progress is not None:
            progress.close()

    async def _fit(
        self, data: TrainingData, config: dict, scenario_id: str, version: int, path: Path, time_limit_s: float,
        report: Report, base: Path | None, champion: Path | None = None,
    ) -> dict[str, Any]:
        pool = self._pool_or_new()
        _drain(self._progress)  # left by a fit that was killed
        future = await _submit(
            pool, _fit_in_child, data, config, scenario_id, version, str(path), str(base) if base else None,
            str(champion) if champion else None,
        )
        relay = asyncio.create_task(self._relay(report))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), time_limit_s)
        except TimeoutError:
            self._kill()
            raise TrainingTimeout(f"training ran longer than the {time_limit_s:g} s limit") from None
        except (asyncio.CancelledError, BrokenProcessPool):
            self._kill()
            raise
        finally:
            relay.cancel()

    async def close(self) -> None:
        """Stop the child: at once when it is fitting (that job is re-run by the next worker), else when idle."""
        if self._lock.locked():
            self._kill()
        pool, progress, self._pool, self._progress = self._pool, self._progress, None, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if progress is not None:
            progress.close()

    async def _relay(self, report: Report) -> None:
        while True:
            await asyncio.sleep(RELAY_S)
            if (latest := _drain(self._progress)) is not None:
                await report(*latest)

    def _pool_or_new(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver/spawn: forking a process that runs threads (Mongo, Redis clients) is unsafe.
            context = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
            self._progress = context.Queue()
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_init_child, initargs=(self._progress,)
            )
        return self._pool

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The executor cannot stop a running task (3.14 adds terminate_workers): terminate its process directly.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)


async def _submit(pool: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    # submit() starts the child when there is none and waits for the fork server to report it (seconds at first):
    # off the event loop, so serving never stalls behind it.
    return await asyncio.to_thread(pool.submit, fn, *args)


def _ignore_failure(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _drain(progress: Any) -> tuple[float, str] | None:
    """Return the newest message on the progress queue (older ones are superseded), or None."""
    latest = None
    while progress is not None:
        try:
            latest = progress.get_nowait()
        except (queue_errors.Empty, OSError, ValueError):
            break
    return latest


# --- in the child process ---------------------------------------------------------------------------------------

_child_progress: Any = None
_child_last = 0.0


def _init_child(progress: Any) -> None:
    global _child_progress
    _child_progress = progress


def _ready() -> bool:
    return True


def _child_report(fraction: float, stage: str) -> None:
    global _child_last
    now = time.monotonic()
    if now - _child_last >= RELAY_S / 2 or fraction >= 1.0:  # the parent keeps only the newest: send no more
        _child_last = now
        _child_progress.put((float(fraction), str(stage)))


def _fit_in_child(
    data: TrainingData, config: dict, scenario_id: str, version: int, path: str, base: str | None = None,
    champion: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    if base is not None:
        model = refit_similarity(ScenarioModel.load(Path(base)), data, config, version=version,
                                 progress=_child_report)
    else:
        model = train_scenario_model(data, config, scenario_id=scenario_id, version=version, progress=_child_report,
                                     champion=_champion(champion))
    trained = time.perf_counter()
    model.save(Path(path))
    saved = time.perf_counter()
    embeddings = item_embeddings(model)
    # A refit keeps its base's towers, and the vectors the base wrote with them.
    towers = (list(model.catalogue.item_ids), np.asarray(model.two_tower.item_vectors, dtype=np.float32)) \
        if model.two_tower is not None and base is None else None
    return {
        "train_s": trained - started, "save_s": saved - trained, "child_s": time.perf_counter() - started,
        "model_bytes": int(model.nbytes()), "embeddings": embeddings, "tower_vectors": towers,
        "embeddings_count": 0 if embeddings is None else len(embeddings[0]),
        "steps": dict(model.info.get("seconds") or {}), "refitted": list(model.info.get("refitted") or []),
        "model_metrics": _model_metrics(model), "device": (model.info.get("sasrec") or {}).get("device", "cpu"),
        "config": _fitted(model),
    }


def _champion(path: str | None) -> ScenarioModel | None:
    """Return the serving champion's saved model (memory-mapped), or None when there is none or it does not load:
    the comparison is skipped, never the training."""
    if path is None:
        return None
    try:
        return ScenarioModel.load(Path(path))
    except Exception:  # noqa: BLE001 - a pruned or unreadable artifact only loses the comparison
        return None


def _model_metrics(model: ScenarioModel) -> dict[str, float]:
    """Return the pipeline's figures on the training's validation slice (`ndcg@10`, `recall@20`, `coverage`: what
    promotion compares) and the learned models' own; none for a scenario trained without them."""
    learned = {f"{kind}_{name}": float(info[key]) for kind in LEARNED_MODELS
               for info in [model.info.get(kind) or {}] for key, name in LEARNED_METRICS.items()
               if info.get(key) is not None}
    tuning = model.info.get("tuning") or {}
    champion = tuning.get("champion") or {}
    # The champion on this slice, beside the new pipeline on the same users: what promotion compares.
    compared = {"champion_ndcg@10": float(champion["champion_ndcg@10"]),
                "compared_ndcg@10": float(champion["ndcg@10"])} if "champion_ndcg@10" in champion else {}
    return {**{k: float(v) for k, v in (tuning.get("validation") or {}).items()}, **learned, **compared,
            **({"tuning_s": float(tuning["seconds"])} if "seconds" in tuning else {})}


def _fitted(model: ScenarioModel) -> dict[str, Any]:
    """Return what the training fitted, recorded in the version's config (none when it did not tune)."""
    tuning = model.info.get("tuning")
    if not tuning:
        return {}
    fitted = {key: tuning[key] for key in ("weights", "params", "chosen", "pipelines", "sources", "validationUsers",
                                           "stopped", "champion") if key in tuning}
    if ranker := model.info.get("ranker"):  # which ranking the gate chose, and why
        fitted["ranker"] = {key: ranker[key] for key in ("chosen", "gate", "skipped") if key in ranker}
    return {"fitted": fitted}


def item_embeddings(model: Any) -> tuple[list[str], np.ndarray] | None:
    """Return the items that have an embedding and their vectors as one float32 matrix, or None."""
    ids, rows = [], []
    for item_id in model.catalogue.item_ids:
        vector = model.item_embedding(item_id)
        if vector is not None:
            ids.append(item_id)
            rows.append(np.asarray(vector, dtype=np.float32))
    return (ids, np.vstack(rows)) if rows else None
