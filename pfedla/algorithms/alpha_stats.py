"""What pFedLA's alpha learned, in a few numbers per layer (summary.json ``alpha_stats``, the report).

For each layer l, over clients i and peers j != i:
- ``self``: mean self-weight alpha_i^l[i] (uniform is 1/N; 1 is "this layer is purely local");
- ``collapsed``: fraction of clients whose self-weight is >= 0.99 (the layer has become Local for them);
- ``similar_peer`` / ``dissimilar_peer``: mean weight on peers whose label distribution is similar to
  the client's (similarity >= 0.5) or not (< 0.5), where similarity = 1 - total variation distance
  between the two clients' label distributions (1: identical, 0: no class in common);
- ``corr_with_similarity``: Pearson correlation of alpha_i^l[j] with that similarity over all pairs
  (0: alpha ignores the labels; > 0: clients take more from peers with similar labels);
- with feature skew (client groups, pfedla/datasets/feature_skew.py): ``same_group_peer`` /
  ``other_group_peer``, the mean weight on peers of the client's own group / of other groups, and
  ``same_group``, the total weight a client keeps within its group (itself included). Layer-wise
  aggregation that follows the inputs puts more weight within the group in the layers that see them.
A learned, label-aware alpha shows similar_peer > dissimilar_peer and a positive correlation; an
alpha that never moved shows every number at 1/N; a collapse into Local shows self near 1.
"""

from __future__ import annotations

import numpy as np

SIMILAR = 0.5  # similarity threshold between "similar" and "dissimilar" peers
COLLAPSED = 0.99  # self-weight at or above which a client's layer counts as local


def label_similarity(class_counts) -> np.ndarray:
    """[N, N]: 1 - total variation distance between the clients' label distributions."""
    counts = np.asarray(class_counts, dtype=np.float64)
    p = counts / counts.sum(1, keepdims=True)
    return 1.0 - 0.5 * np.abs(p[:, None, :] - p[None, :, :]).sum(-1)


def alpha_statistics(alpha, layers: list[str], class_counts, groups=None) -> dict:
    """``alpha`` [N, L, N] (row i receives from column j); ``class_counts`` [N, C]; ``groups`` [N] or None."""
    alpha = np.asarray(alpha, dtype=np.float64)
    n = alpha.shape[0]
    similarity = label_similarity(class_counts)
    off = ~np.eye(n, dtype=bool)
    similar, dissimilar = off & (similarity >= SIMILAR), off & (similarity < SIMILAR)
    per_layer = {}
    for l, layer in enumerate(layers):
        a = alpha[:, l, :]
        own = np.diag(a)
        per_layer[str(layer)] = {
            "self": float(own.mean()),
            "collapsed": float((own >= COLLAPSED).mean()),
            "similar_peer": float(a[similar].mean()) if similar.any() else None,
            "dissimilar_peer": float(a[dissimilar].mean()) if dissimilar.any() else None,
            "corr_with_similarity": _pearson(a[off], similarity[off]),
        }
        if groups is not None:
            per_layer[str(layer)].update(_group_weights(a, np.asarray(groups)))
    return {
        "uniform": 1.0 / n,
        "max_abs_from_uniform": float(np.abs(alpha - 1.0 / n).max()),
        "similar_pairs": int(similar.sum()),
        "dissimilar_pairs": int(dissimilar.sum()),
        "layers": per_layer,
    }


def _group_weights(a: np.ndarray, groups: np.ndarray) -> dict:
    """Weight within vs across feature-skew groups of one layer's alpha [N, N]."""
    n = len(groups)
    same = groups[:, None] == groups[None, :]
    off = ~np.eye(n, dtype=bool)
    return {
        "same_group_peer": float(a[same & off].mean()) if (same & off).any() else None,
        "other_group_peer": float(a[~same].mean()) if (~same).any() else None,
        "same_group": float((a * same).sum(1).mean()),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None  # undefined: alpha (or similarity) is constant
    return float(np.corrcoef(x, y)[0, 1])


def one_line(stats: dict) -> str:
    """``conv1 self .05 sim .05 dis .05 r +.01 [grp in .06 out .04] | ...``: the per-layer numbers a reader
    scans (``grp``: feature-skew groups)."""
    def fmt(v, signed=False):
        return "-" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")

    def groups(s):  # feature skew only: weight on a peer of the own group / of another group
        if "same_group_peer" not in s:
            return ""
        return f" grp in {fmt(s['same_group_peer'])} out {fmt(s['other_group_peer'])}"

    return " | ".join(
        f"{layer} self {fmt(s['self'])} sim {fmt(s['similar_peer'])} dis {fmt(s['dissimilar_peer'])} "
        f"r {fmt(s['corr_with_similarity'], True)}{groups(s)}"
        for layer, s in stats["layers"].items()
    )
