"""Per-layer aggregation-weight heatmaps: what pFedLA learned about who borrows from whom.

Matrix for layer l: row i = receiving client, column j = contributing client, value alpha_i^l[j].
HeurpFedLA's retained (kept-local, one-hot) layers are marked with a dot on the diagonal cell and
an asterisk on the row label.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _draw(ax, matrix: np.ndarray, retained_rows: np.ndarray | None, title: str, vmax: float):
    n = matrix.shape[0]
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("contributing client j")
    ax.set_ylabel("receiving client i")
    ticks = np.arange(n) if n <= 30 else np.linspace(0, n - 1, 10).astype(int)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(ticks, fontsize=6)
    labels = [f"{i}*" if retained_rows is not None and retained_rows[i] else str(i) for i in ticks]
    ax.set_yticklabels(labels, fontsize=6)
    if retained_rows is not None and retained_rows.any():
        rows = np.flatnonzero(retained_rows)
        ax.scatter(rows, rows, marker="o", s=12, c="red", label="kept local (one-hot)")
        ax.legend(loc="upper right", fontsize=6)
    return image


def plot_layer(alpha_layer: np.ndarray, layer: str, round_idx: int, path: str | Path,
               retained: np.ndarray | None = None) -> Path:
    """One layer's N x N alpha matrix with colour bar and title."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    image = _draw(ax, alpha_layer, retained, f"alpha for layer {layer}, round {round_idx}", float(alpha_layer.max()))
    fig.colorbar(image, ax=ax, label="alpha_i[j]")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_all_layers(alpha: np.ndarray, layers: list[str], round_idx: int, path: str | Path,
                    retained: np.ndarray | None = None) -> Path:
    """Every layer side by side on one shared colour scale; alpha is [N, L, N]."""
    num_layers = alpha.shape[1]
    fig, axes = plt.subplots(1, num_layers, figsize=(3.2 * num_layers + 1, 3.6), squeeze=False)
    vmax = float(alpha.max())
    for l, ax in enumerate(axes[0]):
        image = _draw(ax, alpha[:, l, :], None if retained is None else retained[:, l], layers[l], vmax)
        if l:
            ax.set_ylabel("")
    fig.suptitle(f"Layer-wise aggregation weights alpha (row i receives from column j), round {round_idx}")
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
                  folder: str | Path) -> list[Path]:
    """heatmaps/round_RRRR_<layer>.png for every layer plus heatmaps/round_RRRR_all.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marks = retained if retained.any() else None
    paths = [
        plot_layer(alpha[:, l, :], layer, round_idx, folder / f"round_{round_idx:04d}_{layer}.png",
                   None if marks is None else marks[:, l])
        for l, layer in enumerate(layers)
    ]
    paths.append(plot_all_layers(alpha, layers, round_idx, folder / f"round_{round_idx:04d}_all.png", marks))
    return paths
