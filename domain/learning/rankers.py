"""A trained DCN-v2 ranker as numpy arrays, and its forward pass over a request's candidates: what serving runs
instead of torch.

The arrays are exported by domain.learning.dcn from models.dcn.DCN; `score` reproduces that module's forward pass
(in eval mode) after standardising the feature rows with the training's means and scales, so a request of a few
hundred candidates costs a handful of small matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.recommend.features import FeatureSpec


@dataclass(frozen=True)
class RankerModel:
    """A DCN-v2's weights (matrices stored input x output) and the feature columns it reads."""

    spec: FeatureSpec
    mean: np.ndarray  # float32 per feature
    scale: np.ndarray  # float32 per feature: 1 / std, 0 for a feature that was constant in training (ignored)
    cross_w: np.ndarray  # float32 layers x d x d
    cross_b: np.ndarray  # float32 layers x d
    deep: tuple[tuple[np.ndarray, np.ndarray], ...]  # (w in x out, b) per hidden layer
    out_w: np.ndarray  # float32 (d + last hidden width)
    out_b: np.ndarray  # float32 (1,)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Return the logit of every feature row (candidates x features): higher ranks first."""
        # In place where it can be: at a few hundred rows the allocations cost more than the products.
        x0 = np.asarray(rows, dtype=np.float32) - self.mean
        x0 *= self.scale
        x = x0.copy()
        for w, b in zip(self.cross_w, self.cross_b, strict=True):
            step = x @ w
            step += b
            step *= x0
            x += step
        h = x0
        for w, b in self.deep:
            h = h @ w
            h += b
            np.maximum(h, 0.0, out=h)
        d = x0.shape[1]
        out = x @ self.out_w[:d]
        out += h @ self.out_w[d:]
        out += self.out_b[0]
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return every array by file name stem (`prefix.name`), for the model's storage."""
        out = {"mean": self.mean, "scale": self.scale, "cross_w": self.cross_w, "cross_b": self.cross_b,
               "out_w": self.out_w, "out_b": self.out_b}
        for k, (w, b) in enumerate(self.deep):
            out[f"deep_w{k}"], out[f"deep_b{k}"] = w, b
        return {f"{prefix}.{name}": array for name, array in out.items()}

    def meta(self) -> dict[str, Any]:
        """Return what the arrays do not hold (JSON): the feature columns and the number of hidden layers."""
        return {"sources": list(self.spec.sources), "attributes": list(self.spec.attributes), "deep": len(self.deep)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, meta: dict[str, Any] | None) -> RankerModel | None:
        """Return the model stored under prefix (see `arrays` and `meta`), or None when there is none."""
        if meta is None or f"{prefix}.mean" not in arrays:
            return None

        def get(name: str) -> np.ndarray:  # small: read into memory, not left memory-mapped
            return np.array(arrays[f"{prefix}.{name}"], dtype=np.float32)

        spec = FeatureSpec(tuple(meta["sources"]), tuple(meta.get("attributes") or ()))
        deep = tuple((get(f"deep_w{k}"), get(f"deep_b{k}")) for k in range(int(meta.get("deep", 0))))
        return cls(spec=spec, mean=get("mean"), scale=get("scale"), cross_w=get("cross_w"), cross_b=get("cross_b"),
                   deep=deep, out_w=get("out_w"), out_b=get("out_b"))
