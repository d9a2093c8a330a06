"""Files a run leaves in its run dir (DESIGN.md contracts), each written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np


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


METRIC_COLUMNS = ("round", "test/acc_mean", "test/acc_weighted", "train/loss", "comm/bytes_down", "comm/bytes_up")


def write_metrics_csv(path: str | Path, history: list[dict]) -> None:
    """metrics.csv, one row per evaluation round, rendered whole from the (checkpointed) history.

    Re-rendering instead of appending is what keeps the file free of duplicate or missing rows
    when a run is resumed from a checkpoint taken rounds before it was killed.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buffer.getvalue().encode())


def build_summary(history: list[dict], config: dict, wall_seconds: float, communication: dict) -> dict:
    """Last and best evaluation (best by test/acc_mean), with per-client accuracies for both."""
    last = history[-1] if history else None
    best = max(history, key=lambda r: r["test/acc_mean"]) if history else None

    def view(record):
        if record is None:
            return None
        return {k: record[k] for k in ("round", "test/acc_mean", "test/acc_weighted", "client_acc")}

    return {
        "final": view(last),
        "best": view(best),
        "rounds": last["round"] if last else 0,
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
