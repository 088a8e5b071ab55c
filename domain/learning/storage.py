"""A ScenarioModel on disk: one directory of .npy arrays (no pickles) and JSON metadata, replaced atomically."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from domain.learning.content import ContentModel
from domain.learning.factors import Factors
from domain.learning.rankers import RankerModel
from domain.learning.sequences import SequenceModel
from domain.learning.tables import DenseTable, NeighbourTable
from domain.learning.towers import TowerModel
from domain.recommend.base import CatalogueView

if TYPE_CHECKING:
    from domain.learning.model import ScenarioModel

FORMAT = 1
META, CATALOGUE, USERS, VOCABULARY = "meta.json", "catalogue.json", "users.json", "vocabulary.json"
TOWER_VOCABULARY = "two_tower.vocabulary.json"  # the item tower's own content model (when not the scenario's)
# Small arrays are read into memory; the rest are memory-mapped (pages load as requests touch them).
EAGER = frozenset({"catalogue.published_at", "catalogue.active", "history.indptr", "als.gram", "content.idf"})


def model_arrays(model: ScenarioModel) -> dict[str, np.ndarray]:
    """Return every array of the model by its file name stem."""
    out = {"catalogue.published_at": model.catalogue.published_at, "catalogue.active": model.catalogue.active,
           "history.indptr": model.history_indptr, "history.items": model.history_items,
           "counts": model.counts, "popularity": model.popularity}
    if model.history_types is not None and model.history_values is not None:
        out["history.types"], out["history.values"] = model.history_types, model.history_values
        out["history.event_types"] = np.array(model.event_types, dtype=str)  # fixed-width text: no pickle
    if model.trending is not None:
        out["trending"] = model.trending
    for name in ("item_cf", "ease"):
        if isinstance(table := getattr(model, name), DenseTable):
            out[f"{name}.vocabulary"], out[f"{name}.weights"] = table.vocabulary, table.weights
        elif table is not None:
            out[f"{name}.neighbors"], out[f"{name}.scores"] = table.neighbors, table.scores
    if model.item_users is not None:
        out["item_users.indptr"], out["item_users.indices"] = model.item_users.indptr, model.item_users.indices
    if model.als is not None:
        out["als.item_factors"], out["als.gram"] = model.als.item_factors, model.als.gram
    if (content := model.content) is not None:
        out["content.embeddings"], out["content.idf"] = content.embeddings, content.idf
        out["content.components"] = content.components
    if model.sasrec is not None:
        out.update(model.sasrec.arrays("sasrec"))
    if model.two_tower is not None:
        out.update(model.two_tower.arrays("two_tower"))
    if (own := _tower_content(model)) is not None:
        out["two_tower.content.idf"], out["two_tower.content.components"] = own.idf, own.components
    if model.ranker is not None:
        out.update(model.ranker.arrays("ranker"))
    return out


def _tower_content(model: ScenarioModel) -> ContentModel | None:
    """Return the item tower's content model when it must be stored apart: it is not the scenario's (a similarity
    refit replaced that one; the tower keeps the space it was trained on)."""
    tower = model.two_tower.items if model.two_tower is not None else None
    if tower is None or tower.content is None or _same_content(tower.content, model.content):
        return None
    return tower.content


def _same_content(a: ContentModel, b: ContentModel | None) -> bool:
    return b is not None and (a is b or (a.vocabulary == b.vocabulary and np.array_equal(a.idf, b.idf)
                                         and np.array_equal(a.components, b.components)))


def save_model(model: ScenarioModel, path: Path) -> None:
    """Write into a temporary sibling directory, then swap it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        _write(model, tmp)
        _swap(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(model: ScenarioModel, root: Path) -> None:
    for name, array in model_arrays(model).items():
        np.save(root / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    _dump(root / META, _meta(model))
    cat = model.catalogue
    _dump(root / CATALOGUE, {"item_ids": cat.item_ids, "titles": cat.titles, "categories": cat.categories,
                             "tags": cat.tags, "attributes": cat.attributes})
    _dump(root / USERS, model.user_ids)
    if model.content is not None:
        _dump(root / VOCABULARY, model.content.vocabulary)
    if (own := _tower_content(model)) is not None:
        _dump(root / TOWER_VOCABULARY, own.vocabulary)


def _meta(model: ScenarioModel) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": FORMAT, "scenario_id": model.scenario_id, "version": model.version,
        "trained_at": model.trained_at.isoformat(), "newest_event": model.newest_event.isoformat(),
        "info": model.info,
    }
    if model.item_users is not None:
        meta["item_users_shape"] = list(model.item_users.shape)
    if model.als is not None:
        meta["als"] = {"regularization": model.als.regularization, "confidence": model.als.confidence}
    if model.sasrec is not None:
        meta["sasrec"] = {"heads": model.sasrec.heads}
    if model.two_tower is not None:
        meta["two_tower"] = {"temperature": model.two_tower.temperature}
        if (items := model.two_tower.items) is not None:
            source = None if items.content is None else "own" if _tower_content(model) is not None else "scenario"
            meta["two_tower"]["items"] = {**items.labels(), "content": source}
    if model.ranker is not None:
        meta["ranker"] = model.ranker.meta()
    return meta


def _dump(path: Path, value: Any) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(value, fh, default=str, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())


def _swap(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_model(cls: type[ScenarioModel], path: Path) -> ScenarioModel:
    """Read a directory written by save_model."""
    meta = _read(path / META)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported model format {meta.get('format')!r}")
    arrays = {p.name[: -len(".npy")]: _array(p) for p in path.glob("*.npy")}
    content = _content(arrays, path)
    return cls(
        scenario_id=meta["scenario_id"], version=int(meta["version"]),
        trained_at=datetime.fromisoformat(meta["trained_at"]), newest_event=datetime.fromisoformat(meta["newest_event"]),
        catalogue=_catalogue(_read(path / CATALOGUE), arrays), user_ids=_read(path / USERS),
        history_indptr=arrays["history.indptr"], history_items=arrays["history.items"], counts=arrays["counts"],
        popularity=arrays["popularity"], trending=arrays.get("trending"), item_cf=_table(arrays, "item_cf"),
        ease=_table(arrays, "ease"), item_users=_item_users(arrays, meta), als=_factors(arrays, meta),
        content=content, info=meta.get("info", {}),
        sasrec=SequenceModel.from_arrays(arrays, "sasrec", heads=int(meta.get("sasrec", {}).get("heads", 1))),
        two_tower=_towers(arrays, meta, path, content),
        ranker=RankerModel.from_arrays(arrays, "ranker", meta.get("ranker")),
        history_types=arrays.get("history.types"), history_values=arrays.get("history.values"),
        event_types=tuple(str(t) for t in arrays["history.event_types"].tolist()) if "history.types" in arrays else (),
    )


def _towers(arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path,
            content: ContentModel | None) -> TowerModel | None:
    """Return the two-tower model; its item tower reads the scenario's content model or its own (see `_meta`)."""
    tower = meta.get("two_tower") or {}
    items = tower.get("items")
    source = (items or {}).get("content")
    if source == "own":
        content = _content_model(arrays, "two_tower.content", path / TOWER_VOCABULARY)
    elif source != "scenario":
        content = None
    return TowerModel.from_arrays(arrays, "two_tower", temperature=float(tower.get("temperature", 1.0)),
                                  labels=items, content=content)


def _content_model(arrays: dict[str, np.ndarray], prefix: str, vocabulary: Path) -> ContentModel:
    """Return a content model that embeds new items only (no stored item embeddings)."""
    components = arrays[f"{prefix}.components"]
    return ContentModel(embeddings=np.zeros((0, components.shape[1]), np.float32), vocabulary=_read(vocabulary),
                        idf=arrays[f"{prefix}.idf"], components=components)


def load_item_tower(path: Path) -> tuple[TowerModel, list[str]] | None:
    """Read only a saved model's two-tower part and the ids of the items it was trained with, in the order of its
    item vectors (the item-vector job needs no more); None when the model has no two-tower model."""
    meta = _read(path / META)
    if "two_tower" not in meta:
        return None
    names = [p for p in path.glob("*.npy") if p.name.startswith(("two_tower.", "content.idf", "content.components"))]
    arrays = {p.name[: -len(".npy")]: _array(p) for p in names}
    shared = (meta["two_tower"].get("items") or {}).get("content") == "scenario"
    towers = _towers(arrays, meta, path, _content_model(arrays, "content", path / VOCABULARY) if shared else None)
    if towers is None:
        return None
    return towers, list(_read(path / CATALOGUE)["item_ids"])


def read_users(path: Path) -> list[str]:
    """Return the training user ids of the model saved at `path` ([] when it has none)."""
    return _read(path / USERS) if (path / USERS).exists() else []


def _read(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _array(path: Path) -> np.ndarray:
    if path.name[: -len(".npy")] in EAGER:
        return np.load(path, allow_pickle=False)
    # A plain ndarray view of the mapping: indexing a np.memmap subclass costs more per call than the lookup.
    return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))


def _catalogue(raw: dict[str, Any], arrays: dict[str, np.ndarray]) -> CatalogueView:
    return CatalogueView(
        item_ids=raw["item_ids"], titles=raw["titles"], categories=[tuple(c) for c in raw["categories"]],
        tags=[tuple(t) for t in raw["tags"]], attributes=raw["attributes"],
        published_at=np.asarray(arrays["catalogue.published_at"]), active=np.asarray(arrays["catalogue.active"]),
    )


def _table(arrays: dict[str, np.ndarray], name: str) -> NeighbourTable | DenseTable | None:
    if f"{name}.weights" in arrays:
        return DenseTable(np.asarray(arrays[f"{name}.vocabulary"]), arrays[f"{name}.weights"])
    if f"{name}.neighbors" not in arrays:
        return None
    return NeighbourTable(arrays[f"{name}.neighbors"], arrays[f"{name}.scores"])


def _item_users(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> sp.csr_matrix | None:
    if "item_users.indptr" not in arrays:
        return None
    indices = np.asarray(arrays["item_users.indices"])
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, np.asarray(arrays["item_users.indptr"])), shape=tuple(meta["item_users_shape"]))


def _factors(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Factors | None:
    if "als.item_factors" not in arrays:
        return None
    return Factors(item_factors=arrays["als.item_factors"], gram=arrays["als.gram"],
                   regularization=float(meta["als"]["regularization"]), confidence=float(meta["als"]["confidence"]))


def _content(arrays: dict[str, np.ndarray], path: Path) -> ContentModel | None:
    if "content.embeddings" not in arrays:
        return None
    return ContentModel(embeddings=arrays["content.embeddings"], vocabulary=_read(path / VOCABULARY),
                        idf=arrays["content.idf"], components=arrays["content.components"])
