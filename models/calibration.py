"""Calibration and detection metrics: ECE with its reliability bins, AUROC, top-k F1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width confidence bins over [0, 1] (the last one closed): count, mean confidence, accuracy."""
    conf = np.asarray(confidence, float).ravel()
    ok = np.asarray(correct, float).ravel()
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "confidence": float(conf[m].mean()) if n else None, "accuracy": float(ok[m].mean()) if n else None})
    return out


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| weighted by the bin's share."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]))


def bootstrap_ece(probs: dict[str, np.ndarray], labels: np.ndarray, k: int = 4, bins: int = 10, n: int = 1000,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Top-k ECE of every head on the same `n` resamples of the images (paired bootstrap).

    One ECE on a thousand test scenes moves by about a point with the draw of the scenes; pairing the
    heads on one resample says whether one head's lead is larger than that."""
    rng = np.random.default_rng(seed)
    m = len(labels)
    pairs = {name: top_k_pairs(p, labels, k) for name, p in probs.items()}
    width = {name: len(conf) // m for name, (conf, _) in pairs.items()}   # k, or fewer when a head has fewer labels
    out = {name: np.empty(n) for name in probs}
    for i in range(n):
        rows = rng.integers(0, m, m)
        for name, (conf, hit) in pairs.items():
            flat = (rows[:, None] * width[name] + np.arange(width[name])).ravel()
            out[name][i] = ece(conf[flat], hit[flat], bins)
    return out


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / n1 n2)."""
    pos, neg = np.asarray(positive, float).ravel(), np.asarray(negative, float).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def top_k_pairs(probs: np.ndarray, labels: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (confidence, is-a-true-label) pairs of every image, flattened."""
    order = np.argsort(-probs, axis=1)[:, :k]
    conf = np.take_along_axis(probs, order, 1)
    hit = np.take_along_axis(labels, order, 1) > 0
    return conf.ravel(), hit.ravel()


def top_k_f1(probs: np.ndarray, labels: np.ndarray, k: int = 4, threshold: float = 0.5) -> float:
    """Micro F1 of the predicted sets: the top-k labels whose confidence reaches `threshold`."""
    conf, hit = top_k_pairs(probs, labels, k)
    predicted = conf >= threshold
    tp = float((predicted & hit).sum())
    fp = float((predicted & ~hit).sum())
    fn = float(labels.sum() - tp)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def reliability_diagram(curves: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """One panel per method: accuracy per confidence bin against the diagonal, bin counts as bar widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.3), squeeze=False)
    for ax, (name, table) in zip(axes[0], curves.items()):
        centres = [(b["lo"] + b["hi"]) / 2 for b in table]
        acc = [b["accuracy"] if b["count"] else 0.0 for b in table]
        ax.bar(centres, acc, width=0.1, edgecolor="k", color="#4c72b0", label="accuracy")
        conf = [b["confidence"] if b["count"] else c for b, c in zip(table, centres)]
        ax.bar(centres, np.array(conf) - np.array(acc), bottom=acc, width=0.1, color="#dd8452", alpha=0.5, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
