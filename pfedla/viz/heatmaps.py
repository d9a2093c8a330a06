"""Per-layer aggregation-weight heatmaps: what pFedLA learned about who borrows from whom.

Matrix for layer l: row i = receiving client, column j = contributing client, value alpha_i^l[j].
HeurpFedLA's retained (kept-local, one-hot) layers are marked with a dot on the diagonal cell and
an asterisk on the row label. With feature-skew groups, clients are ordered by group (labels
``client:group``) and white lines separate the groups, so weight kept within a group shows as blocks
on the diagonal.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _draw(ax, matrix: np.ndarray, retained_rows: np.ndarray | None, title: str, vmax: float,
          groups: np.ndarray | None = None, ids: list[int] | None = None):
    n = matrix.shape[0]
    order = np.arange(n) if groups is None else np.argsort(groups, kind="stable")
    matrix = matrix[np.ix_(order, order)]
    retained_rows = None if retained_rows is None else retained_rows[order]
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("contributing client j")
    ax.set_ylabel("receiving client i")
    ticks = np.arange(n) if n <= 30 else np.linspace(0, n - 1, 10).astype(int)
    ids = list(range(n)) if ids is None else ids  # partition ids (differ from positions with held-out clients)
    names = [str(ids[i]) if groups is None else f"{ids[i]}:{groups[i]}" for i in order]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([names[t] for t in ticks], fontsize=6, rotation=90 if groups is not None else 0)
    labels = [f"{names[t]}*" if retained_rows is not None and retained_rows[t] else names[t] for t in ticks]
    ax.set_yticklabels(labels, fontsize=6)
    if groups is not None:
        for edge in np.flatnonzero(np.diff(np.asarray(groups)[order])) + 0.5:
            ax.axhline(edge, color="white", linewidth=0.8)
            ax.axvline(edge, color="white", linewidth=0.8)
    if retained_rows is not None and retained_rows.any():
        rows = np.flatnonzero(retained_rows)
        ax.scatter(rows, rows, marker="o", s=12, c="red", label="kept local (one-hot)")
        ax.legend(loc="upper right", fontsize=6)
    return image


def plot_layer(alpha_layer: np.ndarray, layer: str, round_idx: int, path: str | Path,
               retained: np.ndarray | None = None, groups=None, ids=None) -> Path:
    """One layer's N x N alpha matrix with colour bar and title (clients ordered by ``groups`` if given)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    image = _draw(ax, alpha_layer, retained, f"alpha for layer {layer}, round {round_idx}", float(alpha_layer.max()),
                  None if groups is None else np.asarray(groups), ids)
    fig.colorbar(image, ax=ax, label="alpha_i[j]")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_all_layers(alpha: np.ndarray, layers: list[str], round_idx: int, path: str | Path,
                    retained: np.ndarray | None = None, groups=None, ids=None) -> Path:
    """Every layer side by side on one shared colour scale; alpha is [N, L, N]."""
    num_layers = alpha.shape[1]
    fig, axes = plt.subplots(1, num_layers, figsize=(3.2 * num_layers + 1, 3.6), squeeze=False)
    vmax = float(alpha.max())
    groups = None if groups is None else np.asarray(groups)
    for l, ax in enumerate(axes[0]):
        image = _draw(ax, alpha[:, l, :], None if retained is None else retained[:, l], layers[l], vmax, groups, ids)
        if l:
            ax.set_ylabel("")
    grouped = "" if groups is None else ", clients as client:group, ordered by group"
    fig.suptitle(f"Layer-wise aggregation weights alpha (row i receives from column j{grouped}), round {round_idx}")
    fig.colorbar(image, ax=axes[0].tolist(), label="alpha_i[j]", shrink=0.85)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def alpha_long_format(alpha: np.ndarray, layers: list[str], round_idx: int) -> list[list]:
    """Rows (round, layer, i, j, alpha) for a W&B table or a CSV."""
    n, num_layers, _ = alpha.shape
    return [
        [round_idx, layers[l], i, j, float(alpha[i, l, j])]
        for l in range(num_layers) for i in range(n) for j in range(n)
    ]


def save_heatmaps(alpha: np.ndarray, retained: np.ndarray, layers: list[str], round_idx: int,
                  folder: str | Path, groups=None, ids=None) -> list[Path]:
    """heatmaps/round_RRRR_<layer>.png for every layer plus heatmaps/round_RRRR_all.png (clients ordered by
    feature-skew ``groups`` when given; ticks name clients by their partition ``ids``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marks = retained if retained.any() else None
    paths = [
        plot_layer(alpha[:, l, :], layer, round_idx, folder / f"round_{round_idx:04d}_{layer}.png",
                   None if marks is None else marks[:, l], groups, ids)
        for l, layer in enumerate(layers)
    ]
    paths.append(plot_all_layers(alpha, layers, round_idx, folder / f"round_{round_idx:04d}_all.png", marks,
                                 groups, ids))
    return paths
