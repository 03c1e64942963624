"""Vec2Bundle (method §4): RBF prototypes, hierarchies clustered from them, and bundle predictors.

The last layer's prototypes are points in feature space; classes whose prototypes lie close are
the ones the network confuses, so agglomerating them (Ward) gives a hierarchy in which a node is
a bundle of interchangeable classes.  A prediction can then stop at a node ("one of these three
cars") when no single class is probable enough.

A hierarchy here is a :class:`Tree`: nodes as sorted tuples of leaf (class) indices, children per
node, the root last.  Baseline trees (semantic, k-means on class covariance, spectral clustering of
confusions) use the same type so every predictor and curve works on all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

PREDICTORS = ("top-k", "max-rew", "darts", "maxk-rew")


class RBFPrototypes(nn.Module):
    """d_k = ||w_k - x||^2 / gamma_k (gamma_k = 1); logits -d (single label) or, with a pair of
    prototypes per class, d_k^- - d_k^+ = log K(w+, x) / K(w-, x) (multi-label)."""

    def __init__(self, in_features: int, n_classes: int, multi_label: bool = False, init_std: float = 0.005):
        super().__init__()
        self.multi_label = multi_label
        shape = (n_classes, 2, in_features) if multi_label else (n_classes, in_features)
        self.prototypes = nn.Parameter(torch.randn(*shape) * init_std)
        self.register_buffer("gamma", torch.ones(n_classes))

    def distances(self, x: Tensor) -> Tensor:
        if self.multi_label:
            d = (x[:, None, None, :] - self.prototypes[None]).pow(2).sum(-1)     # (B, K, 2)
            return d / self.gamma[None, :, None]
        return torch.cdist(x, self.prototypes).pow(2) / self.gamma

    def forward(self, x: Tensor) -> Tensor:
        d = self.distances(x)
        if self.multi_label:
            return d[..., 1] - d[..., 0]   # sigmoid of this = K+ / (K+ + K-)
        return -d

    def centres(self) -> np.ndarray:
        """The points clustered into the hierarchy (the positive prototypes in the multi-label case)."""
        w = self.prototypes.detach().cpu().numpy()
        return w[:, 0] if self.multi_label else w


def prototype_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Prototypes are excluded from weight decay (it would pull them all to the origin)."""
    protos = [p for n, p in model.named_parameters() if n.endswith("prototypes")]
    others = [p for n, p in model.named_parameters() if not n.endswith("prototypes")]
    return [{"params": others, "weight_decay": weight_decay}, {"params": protos, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- trees


@dataclass
class Tree:
    n_leaves: int
    nodes: list[tuple[int, ...]]                  # each node's leaves, sorted; leaves first, root last
    children: list[list[int]] = field(default_factory=list)
    name: str = ""

    @property
    def root(self) -> int:
        return len(self.nodes) - 1

    def sizes(self) -> np.ndarray:
        return np.array([len(n) for n in self.nodes])

    def membership(self) -> np.ndarray:
        """(n_nodes, n_leaves) 0/1 matrix: which leaves each node holds."""
        m = np.zeros((len(self.nodes), self.n_leaves), np.float32)
        for i, leaves in enumerate(self.nodes):
            m[i, list(leaves)] = 1
        return m

    def specificity(self) -> np.ndarray:
        return specificity(self.sizes(), self.n_leaves)

    def to_json(self, labels: Sequence[str], node: int | None = None) -> dict:
        """Nested {"name", "labels", "children"}; internal nodes are named by what they hold."""
        node = self.root if node is None else node
        leaves = self.nodes[node]
        if not self.children[node]:
            return {"name": labels[leaves[0]], "labels": [labels[leaves[0]]]}
        return {"name": describe([labels[i] for i in leaves]), "labels": [labels[i] for i in leaves],
                "children": [self.to_json(labels, c) for c in self.children[node]]}


def describe(labels: Sequence[str]) -> str:
    """'car ×5 + boat ×1' from labels 'category/shape' (plain labels are listed)."""
    cats: dict[str, int] = {}
    for lab in labels:
        c = lab.split("/", 1)[0]
        cats[c] = cats.get(c, 0) + 1
    return " + ".join(f"{c} ×{n}" for c, n in sorted(cats.items(), key=lambda kv: -kv[1]))


def specificity(sizes: np.ndarray, n_classes: int) -> np.ndarray:
    """r(Y) = 1 - log2|Y| / log2 N."""
    return 1.0 - np.log2(np.maximum(sizes, 1)) / math.log2(max(n_classes, 2))


def tree_from_linkage(Z: np.ndarray, n: int, name: str = "") -> Tree:
    nodes: list[tuple[int, ...]] = [(i,) for i in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    for a, b, *_ in Z:
        a, b = int(a), int(b)
        nodes.append(tuple(sorted(nodes[a] + nodes[b])))
        children.append([a, b])
    return Tree(n, nodes, children, name)


def linkage_tree(points: np.ndarray, method: str = "ward", name: str | None = None) -> Tree:
    """Agglomerative clustering of class points (scipy): ward, centroid, single, complete, average."""
    from scipy.cluster.hierarchy import linkage

    Z = linkage(np.asarray(points, np.float64), method=method, metric="euclidean")
    return tree_from_linkage(Z, len(points), name or f"{method} linkage")


def grouped_tree(groups: Sequence[Sequence[int]], n: int, name: str = "semantic") -> Tree:
    """A two-level tree: root -> the given groups -> their classes (e.g. category -> shape)."""
    nodes: list[tuple[int, ...]] = [(i,) for i in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    tops = []
    for g in groups:
        g = sorted(int(i) for i in g)
        if len(g) == 1:
            tops.append(g[0])
            continue
        nodes.append(tuple(g))
        children.append(list(g))
        tops.append(len(nodes) - 1)
    nodes.append(tuple(range(n)))
    children.append(tops)
    return Tree(n, nodes, children, name)


def divisive_tree(n: int, split, name: str) -> Tree:
    """A binary tree by recursive bisection: split(list of classes) -> (left, right)."""
    nodes: list[tuple[int, ...]] = [(i,) for i in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]

    def build(members: list[int]) -> int:
        if len(members) == 1:
            return members[0]
        left, right = split(members)
        if not left or not right:   # degenerate split: peel one off
            left, right = members[:1], members[1:]
        a, b = build(sorted(left)), build(sorted(right))
        nodes.append(tuple(sorted(members)))
        children.append([a, b])
        return len(nodes) - 1

    root = build(list(range(n)))
    if root != len(nodes) - 1:
        raise AssertionError("root must come last")
    return Tree(n, nodes, children, name)


def kmeans_covariance_tree(probs: np.ndarray, seed: int = 0) -> Tree:
    """Classes described by their rows of the covariance of held-out class scores, split by 2-means."""
    from scipy.cluster.vq import kmeans2

    cov = np.cov(np.asarray(probs, np.float64), rowvar=False)
    rng = np.random.default_rng(seed)

    def split(members: list[int]):
        if len(members) == 2:
            return members[:1], members[1:]
        X = cov[np.ix_(members, members)]
        _, lab = kmeans2(X, 2, minit="++", seed=int(rng.integers(2**31)))
        return [m for m, l in zip(members, lab) if l == 0], [m for m, l in zip(members, lab) if l == 1]

    return divisive_tree(cov.shape[0], split, "k-means on covariance")


def spectral_confusion_tree(confusion: np.ndarray) -> Tree:
    """Recursive spectral bisection (Fiedler vector of the normalised Laplacian) of the symmetric
    confusion graph: classes confused with each other end up in the same subtree."""
    C = np.asarray(confusion, np.float64)
    A = C + C.T
    np.fill_diagonal(A, 0.0)
    A += 1e-6

    def split(members: list[int]):
        if len(members) == 2:
            return members[:1], members[1:]
        W = A[np.ix_(members, members)]
        d = W.sum(1)
        L = np.eye(len(members)) - W / np.sqrt(np.outer(d, d))
        _, vecs = np.linalg.eigh(L)
        f = vecs[:, 1] / np.sqrt(d)
        cut = np.median(f)
        left = [m for m, v in zip(members, f) if v <= cut]
        right = [m for m, v in zip(members, f) if v > cut]
        return left, right

    return divisive_tree(C.shape[0], split, "spectral (confusions)")


# --------------------------------------------------------------------------- probabilities and predictors


def node_probabilities(tree: Tree, leaf_probs: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """(B, n_nodes). Single label: the sum of the node's leaves. Multi-label: the negation rule
    1 - prod(1 - p_l), rescaled so the root is 1."""
    p = np.asarray(leaf_probs, np.float64)
    M = tree.membership().astype(np.float64)
    if not multi_label:
        return np.clip(p @ M.T, 0.0, 1.0)
    log_not = np.log(np.clip(1.0 - p, 1e-12, 1.0))
    P = 1.0 - np.exp(log_not @ M.T)
    root = np.maximum(P[:, [tree.root]], 1e-12)
    return np.clip(P / root, 0.0, 1.0)


def top_k_bundles(leaf_probs: np.ndarray, k: int) -> list[tuple[int, ...]]:
    order = np.argsort(-leaf_probs, axis=1)[:, :k]
    return [tuple(sorted(int(i) for i in row)) for row in order]


def max_rew(tree: Tree, P: np.ndarray, theta: float) -> np.ndarray:
    """The most specific node with P >= theta (ties: the more probable); the root always qualifies."""
    spec = tree.specificity()
    score = np.where(P >= theta - 1e-12, spec[None] * 1e3 + P, -np.inf)
    score[:, tree.root] = np.maximum(score[:, tree.root], -1e6)
    return score.argmax(1)


def darts(tree: Tree, P: np.ndarray, lam: float) -> np.ndarray:
    """The node maximising the expected reward P(V) (r(V) + lambda)."""
    return (P * (tree.specificity()[None] + lam)).argmax(1)


def fit_darts_lambda(tree: Tree, P: np.ndarray, targets: np.ndarray, accuracy: float, iters: int = 40) -> float:
    """Smallest lambda whose held-out accuracy reaches `accuracy` (bisection; accuracy grows with lambda)."""
    def acc(lam):
        return bundle_accuracy(tree, darts(tree, P, lam), targets)[0]

    lo, hi = 0.0, 1.0
    while acc(hi) < accuracy and hi < 1e6:
        hi *= 4
    if acc(lo) >= accuracy:
        return 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if acc(mid) >= accuracy else (mid, hi)
    return hi


def maxk_rew(tree: Tree, P: np.ndarray, theta: float, k: int) -> list[list[int]]:
    """Per image, up to k nodes with P >= theta, most specific first, none inside another chosen one."""
    spec = tree.specificity()
    sets = [set(n) for n in tree.nodes]
    out = []
    for row in P:
        order = np.lexsort((-row, -spec))
        chosen: list[int] = []
        for j in order:
            if row[j] < theta - 1e-12:
                continue
            if any(sets[j] <= sets[c] or sets[c] <= sets[j] for c in chosen):
                continue
            chosen.append(int(j))
            if len(chosen) == k:
                break
        out.append(chosen or [tree.root])
    return out


def bundle_accuracy(tree: Tree, nodes: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Single label: accuracy E[1(y in Y)] and specificity E[1(y in Y) r(Y)]."""
    M = tree.membership()
    hit = M[np.asarray(nodes), np.asarray(targets)] > 0
    r = tree.specificity()[np.asarray(nodes)]
    return float(hit.mean()), float((hit * r).mean())


def multilabel_bundle_accuracy(tree: Tree, chosen: list[list[int]], labels: np.ndarray) -> tuple[float, float]:
    """Each predicted bundle counts: correct when it holds one of the image's labels."""
    M = tree.membership()
    spec = tree.specificity()
    hits, rewards = [], []
    for nodes, y in zip(chosen, labels):
        for j in nodes:
            h = float((M[j] * y).sum() > 0)
            hits.append(h)
            rewards.append(h * spec[j])
    return float(np.mean(hits)), float(np.mean(rewards))


def curve(tree: Tree, P: np.ndarray, targets: np.ndarray, predictor: str = "max-rew",
          values: Sequence[float] | None = None) -> list[tuple[float, float]]:
    """(accuracy, specificity) points while the predictor's knob sweeps."""
    pts = []
    if predictor == "max-rew":
        for t in (values if values is not None else np.linspace(0, 1, 41)):
            pts.append(bundle_accuracy(tree, max_rew(tree, P, float(t)), targets))
    elif predictor == "darts":
        for lam in (values if values is not None else np.concatenate([[0], np.geomspace(1e-3, 50, 40)])):
            pts.append(bundle_accuracy(tree, darts(tree, P, float(lam)), targets))
    else:
        raise ValueError(predictor)
    return pts


def top_k_curve(leaf_probs: np.ndarray, targets: np.ndarray, ks: Sequence[int] | None = None) -> list[tuple[float, float]]:
    n = leaf_probs.shape[1]
    pts = []
    for k in (ks if ks is not None else sorted({1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 48, 64, n})):
        if k > n:
            continue
        order = np.argsort(-leaf_probs, axis=1)[:, :k]
        hit = (order == np.asarray(targets)[:, None]).any(1)
        r = specificity(np.array([k]), n)[0]
        pts.append((float(hit.mean()), float(hit.mean() * r)))
    return pts


def area_under(points: Sequence[tuple[float, float]]) -> float:
    """Area under specificity as a function of accuracy, over the accuracy range the curve spans,
    with the curve's upper envelope (a predictor can always pick its best knob setting)."""
    pts = sorted(points)
    if len(pts) < 2:
        return 0.0
    acc = np.array([p[0] for p in pts])
    spec = np.maximum.accumulate(np.array([p[1] for p in pts])[::-1])[::-1]
    return float(np.trapezoid(spec, acc))


def specificity_at(points: Sequence[tuple[float, float]], accuracy: float) -> float:
    """Best specificity among the points whose accuracy reaches `accuracy` (0 when none does)."""
    ok = [s for a, s in points if a >= accuracy - 1e-9]
    return float(max(ok)) if ok else 0.0


def softmax_probs(logits: Tensor) -> np.ndarray:
    return F.softmax(logits, -1).detach().cpu().numpy()
