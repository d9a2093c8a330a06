"""Partition figure: one stacked bar per client, one colour per class (train + val + test samples); with
feature skew, each client's group under its number (``g0``, ``g1``, ...)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_partition(summary: dict, path: str | Path, title: str = "Client data partition") -> Path:
    counts = sum(np.asarray(summary[f"{split}_class_counts"]) for split in ("train", "val", "test")
                 if f"{split}_class_counts" in summary)
    num_clients, num_classes = counts.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * num_clients + 2), 4))
    cmap = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
    bottom = np.zeros(num_clients)
    for c in range(num_classes):
        ax.bar(np.arange(num_clients), counts[:, c], bottom=bottom, color=cmap(c % cmap.N), label=str(c), width=0.85)
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("samples (train + val + test)")
    ax.set_title(title)
    groups = summary.get("groups")
    if num_clients <= 50:
        ax.set_xticks(np.arange(num_clients))
        if groups is not None:
            ax.set_xticklabels([f"{i}\ng{g}" for i, g in enumerate(groups)], fontsize=7)
    if groups is not None:
        ax.set_xlabel(f"client (g: {summary.get('feature', 'feature')} group)")
    if num_classes <= 20:
        ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
