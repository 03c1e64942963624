"""The shipped Vec2Bundle model as the service uses it: the tree, and bundles for one photo.

`tradeoff` in [0, 1] is one knob for every predictor, 0 = as specific as possible (one class),
1 = as safe as possible:
* top-k: K = 1 + round(tradeoff * (N - 1)) most probable classes (no hierarchy);
* max-rew: the most specific node with P >= theta, theta = tradeoff;
* darts: the node maximising P(V) (r(V) + lambda), lambda fitted on held-out scenes so that
  the accuracy goes from that of lambda = 0 (tradeoff 0) to 100 % (tradeoff 1), interpolated;
* maxk-rew: up to 3 disjoint nodes with P >= tradeoff, most specific first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import vec2bundle as vb

MAXK = 3


@dataclass
class Bundle:
    labels: list[str]
    probability: float
    specificity: float
    name: str

    def as_dict(self) -> dict:
        return {"labels": self.labels, "probability": self.probability, "specificity": self.specificity, "name": self.name}


class BundlePredictor:
    def __init__(self, model, meta: dict):
        self.model = model
        self.labels: list[str] = list(meta["labels"])
        nodes = [tuple(n) for n in meta["tree_nodes"]]
        self.tree = vb.Tree(len(self.labels), nodes, [list(c) for c in meta["tree_children"]], "Vec2Bundle")
        self.darts_table = sorted(meta.get("darts", []), key=lambda r: r["tradeoff"])

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "BundlePredictor":
        from . import checkpoint, tagger  # noqa: F401  (registers the model)

        model, meta = checkpoint.load(path, device)
        return cls(model, meta)

    def tree_json(self) -> dict:
        return self.tree.to_json(self.labels)

    def darts_lambda(self, tradeoff: float) -> float:
        if not self.darts_table:
            return 1.0 * tradeoff
        t = [r["tradeoff"] for r in self.darts_table]
        lam = [r["lambda"] for r in self.darts_table]
        return float(np.interp(tradeoff, t, lam))

    def _bundle(self, node: int, P: np.ndarray) -> Bundle:
        leaves = self.tree.nodes[node]
        return Bundle([self.labels[i] for i in leaves], float(P[node]), float(self.tree.specificity()[node]),
                      vb.describe([self.labels[i] for i in leaves]) if len(leaves) > 1 else self.labels[leaves[0]])

    def bundles(self, leaf_probs: np.ndarray, tradeoff: float, predictor: str) -> list[Bundle]:
        """Bundles for one image's class probabilities (N,)."""
        p = np.asarray(leaf_probs, np.float64)[None]
        N = len(self.labels)
        if predictor == "top-k":
            k = 1 + int(round(tradeoff * (N - 1)))
            top = np.argsort(-p[0])[:k]
            names = [self.labels[i] for i in top]
            return [Bundle(names, float(p[0, top].sum()), float(vb.specificity(np.array([k]), N)[0]),
                           vb.describe(names) if k > 1 else names[0])]
        P = vb.node_probabilities(self.tree, p)
        if predictor == "max-rew":
            return [self._bundle(int(vb.max_rew(self.tree, P, tradeoff)[0]), P[0])]
        if predictor == "darts":
            return [self._bundle(int(vb.darts(self.tree, P, self.darts_lambda(tradeoff))[0]), P[0])]
        if predictor == "maxk-rew":
            return [self._bundle(j, P[0]) for j in vb.maxk_rew(self.tree, P, tradeoff, MAXK)[0]]
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {', '.join(vb.PREDICTORS)}")
