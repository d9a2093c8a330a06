"""Files a run leaves in its run dir (README, "What a run writes"), each written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from pfedla.fairness import spread, spread_by_group


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old or the new file, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


METRIC_COLUMNS = (
    "round", "val/acc_mean", "test/acc_mean", "test/acc_weighted",
    "val/adapted_acc_mean", "test/adapted_acc_mean", "test/adapted_acc_weighted",
    "train/loss", "comm/bytes_down", "comm/bytes_up",
)
# Which score the headline is, in words (summary.json "headline", the report).
HEADLINE = ("test/acc_mean: score (a), the personalized model as the server produces it, unweighted mean over "
            "clients, at the round with the best val/acc_mean (summary 'best'); score (b), the same model after "
            "the client's local adaptation, is test/adapted_acc_mean (summary 'best_adapted')")


def write_metrics_csv(path: str | Path, history: list[dict]) -> None:
    """metrics.csv, one row per evaluation round, rendered whole from the (checkpointed) history.

    Re-rendering instead of appending is what keeps the file free of duplicate or missing rows
    when a run is resumed from a checkpoint taken rounds before it was killed. Rounds without
    score (b) leave its columns empty. An algorithm's own per-round statistics (``Algorithm.round_metrics``,
    columns named ``<statistic>/...``) follow the fixed columns.
    """
    own = sorted({k for record in history for k in record if "/" in k and k not in METRIC_COLUMNS})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*METRIC_COLUMNS, *own], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buffer.getvalue().encode())


def score_view(record: dict | None, prefix: str = "", groups: list[int] | None = None) -> dict | None:
    """One evaluation of one score: round, val and test accuracy, per-client test accuracies and their spread
    over clients (pfedla/fairness.py; per client group too where the partition has groups)."""
    if record is None:
        return None
    keys = (f"val/{prefix}acc_mean", f"test/{prefix}acc_mean", f"test/{prefix}acc_weighted", f"{prefix}client_acc")
    view = {"round": record["round"], **{k: record[k] for k in keys}}
    view["spread"] = spread(record[f"{prefix}client_acc"])
    if groups is not None:
        view["spread_by_group"] = spread_by_group(record[f"{prefix}client_acc"], groups)
    return view


def select(history: list[dict], prefix: str = "", groups: list[int] | None = None) -> tuple[dict | None, dict | None]:
    """(final, best) of one score: the last evaluation that has it, and the one with the best *validation*
    accuracy (the first such round on ties). The test split is never looked at to choose."""
    scored = [r for r in history if f"val/{prefix}acc_mean" in r]
    if not scored:
        return None, None
    best = max(scored, key=lambda r: r[f"val/{prefix}acc_mean"])
    return score_view(scored[-1], prefix, groups), score_view(best, prefix, groups)


def build_summary(history: list[dict], config: dict, wall_seconds: float, communication: dict,
                  rounds_done: int, groups: list[int] | None = None) -> dict:
    """Final and best (by validation) evaluation of both scores, with per-client accuracies and their spread
    (per group of ``groups``, each client's feature-skew group, where given).

    ``final``/``best`` are None until a first evaluation (a run stopped before it); ``rounds`` counts
    the rounds trained, which may be more than the last evaluated round."""
    final, best = select(history, "", groups)
    final_adapted, best_adapted = select(history, "adapted_", groups)
    return {
        "headline": HEADLINE,
        "final": final,
        "best": best,
        "final_adapted": final_adapted,
        "best_adapted": best_adapted,
        "rounds": rounds_done,
        "wall_seconds": wall_seconds,
        **communication,
        "config": config,
    }


def write_alpha(path: str | Path, alpha, retained, layers: list[str]) -> None:
    """alpha.npz: alpha [N, L, N] (row i receives from column j), retained [N, L], layer names [L]."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, alpha=np.asarray(alpha), retained=np.asarray(retained), layers=np.asarray(layers))
    os.replace(tmp, path)
