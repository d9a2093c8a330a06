"""Lightning callbacks that show a run while it goes: partition, progress, heatmaps, curves, per-client bars.

All of them act on global rank zero only, so a run on several processes writes and shows everything once.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pfedla.outputs import write_json  # noqa: E402
from pfedla.viz.heatmaps import alpha_long_format, save_heatmaps  # noqa: E402
from pfedla.viz.partition import plot_partition  # noqa: E402

log = logging.getLogger("pfedla")


class PartitionFiles(L.Callback):
    """partition.json and partition.png (and the W&B image) when training starts."""

    def __init__(self, run_dir: Path, title: str, wandb_logger=None):
        self.run_dir, self.title, self.wandb = Path(run_dir), title, wandb_logger

    def on_fit_start(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        partition = module.partition_summary()
        write_json(self.run_dir / "partition.json", partition)
        plot_partition(partition, self.run_dir / "partition.png", self.title)
        if self.wandb is not None:
            import wandb

            self.wandb.experiment.log({"figures/partition": wandb.Image(str(self.run_dir / "partition.png"))})


class RoundProgress(L.Callback):
    """Progress over rounds. On a terminal: one tqdm bar (clients done in the round, latest test/acc_mean,
    ETA). Elsewhere (a log file, CI, a SLURM job): one plain line per round, no carriage-return redraws."""

    bar = None

    def __init__(self, interactive: bool | None = None):
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.started = None

    def on_train_start(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        self.last_acc = module.history[-1]["test/acc_mean"] if module.history else None
        self.started, self.first_round = time.perf_counter(), module.current_epoch
        if not self.interactive:
            return
        self.bar = tqdm(total=trainer.max_epochs, initial=module.current_epoch, desc="round", unit="round",
                        dynamic_ncols=True)
        module.client_progress = lambda done, total: self._show(f"clients {done}/{total}")

    def _show(self, clients: str = "") -> None:
        parts = ([clients] if clients else []) + ([f"acc_mean {self.last_acc:.4f}"] if self.last_acc else [])
        self.bar.set_postfix_str(", ".join(parts), refresh=True)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.started is None:
            return
        if module.history and module.history[-1]["round"] == module.round:
            self.last_acc = module.history[-1]["test/acc_mean"]
        if self.bar is not None:
            self.bar.update(1)
            self._show()
            return
        per_round = (time.perf_counter() - self.started) / (module.round - self.first_round)
        acc = f"  test/acc_mean {self.last_acc:.4f}" if self.last_acc is not None else ""
        log.info("round %d/%d%s  %.1f s/round, %.0f s left", module.round, trainer.max_epochs, acc, per_round,
                 per_round * (trainer.max_epochs - module.round))

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()


class Figures(L.Callback):
    """Heatmaps every ``every`` rounds and at the end (pFedLA); curve and per-client bars at the end.

    Everything is saved under the run dir and, with a W&B logger, logged as images and tables.
    """

    def __init__(self, run_dir: Path, every: int, wandb_logger=None):
        self.run_dir, self.every, self.wandb = Path(run_dir), every, wandb_logger

    def on_train_epoch_end(self, trainer, module) -> None:
        r, due = module.round, module.round % self.every == 0 or module.round == trainer.max_epochs
        if trainer.is_global_zero and hasattr(module.algorithm, "current_alpha") and due:
            self.heatmaps(module.algorithm, r, module.data.groups, module.data.ids)

    def heatmaps(self, algorithm, round_idx: int, groups=None, ids=None) -> None:
        alpha, retained = (t.cpu().numpy() for t in algorithm.current_alpha())
        layers = list(algorithm.layer_names)
        paths = save_heatmaps(alpha, retained, layers, round_idx, self.run_dir / "heatmaps", groups, ids)
        if self.wandb is not None:
            import wandb

            images = {f"alpha/{p.stem.split('_', 2)[-1]}": wandb.Image(str(p)) for p in paths}
            table = wandb.Table(columns=["round", "layer", "i", "j", "alpha"],
                                data=alpha_long_format(alpha, layers, round_idx))
            self.wandb.experiment.log({**images, "alpha/table": table, "round": round_idx})

    def on_train_end(self, trainer, module) -> None:
        if not module.history or not trainer.is_global_zero:
            return
        paths = [plot_accuracy_curve(module.history, self.run_dir / "accuracy.png"),
                 plot_client_accuracy(module.history[-1], self.run_dir / "client_accuracy.png")]
        if self.wandb is not None:
            import wandb

            self.wandb.experiment.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths})


def plot_accuracy_curve(history: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    curves = [("test/acc_mean", "-", "(a) test, mean over clients"), ("val/acc_mean", ":", "(a) validation"),
              ("test/acc_weighted", "--", "(a) test, weighted by test samples"),
              ("test/adapted_acc_mean", "o-", "(b) after local adaptation, test")]
    for key, style, label in curves:
        points = [(h["round"], 100 * h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Personalized accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_client_accuracy(record: dict, path: Path) -> Path:
    acc = 100 * np.asarray(record["client_acc"])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(acc) + 2), 4))
    ax.bar(np.arange(len(acc)), acc)
    ax.axhline(acc.mean(), color="k", linestyle="--", label=f"mean {acc.mean():.1f}%")
    ax.set_xlabel("client")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Per-client test accuracy, round {record['round']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
