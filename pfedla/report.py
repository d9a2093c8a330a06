"""``python -m pfedla.report <multirun dir>``: one table and one figure across a sweep.

Reads every job's ``summary.json`` and ``metrics.csv``; rows are algorithms (plus whatever else the
sweep varied, except the seed), numbers are mean ± std over seeds. Writes ``report.md`` and
``curves.png`` into the sweep dir. Jobs without a summary (failed, killed, still running) are listed,
not crashed on.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

IGNORED_KEYS = {"seed", "resume", "dataset.root"}
IGNORED_PREFIXES = ("logger.", "trainer.", "checkpoint.", "viz.")  # how a job ran, not what it ran


@dataclass
class Job:
    path: Path
    summary: dict | None
    error: str | None

    @property
    def config(self) -> dict:
        return _flatten(self.summary["config"]) if self.summary else {}


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir below ``sweep_dir``: those with summary.json, error.txt or Hydra's .hydra/."""
    dirs = {p.parent for pattern in ("summary.json", "error.txt", ".hydra") for p in sweep_dir.rglob(pattern)}
    jobs = []
    for d in sorted(dirs):
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else None
        error = (d / "error.txt").read_text().strip() if (d / "error.txt").is_file() else None
        if summary is None and error is None:
            error = "no summary.json (failed, killed or still running)"
        jobs.append(Job(d, summary, error))
    return jobs


def group_jobs(jobs: list[Job]) -> dict[str, list[Job]]:
    """Group finished jobs by algorithm and every other key the sweep varied, except the seed."""
    done = [j for j in jobs if j.summary]
    by_algorithm: dict[str, list[Job]] = {}
    for job in done:
        by_algorithm.setdefault(job.config["algorithm.name"], []).append(job)
    groups: dict[str, list[Job]] = {}
    for algorithm, jobs_of_algorithm in by_algorithm.items():
        # Label rows by the keys that vary among this algorithm's jobs (other algorithms' keys,
        # e.g. a swept pFedLA learning rate, say nothing about FedAvg's rows).
        keys = sorted({k for j in jobs_of_algorithm for k in j.config} - IGNORED_KEYS - {"algorithm.name"})
        varying = [k for k in keys if not k.startswith(IGNORED_PREFIXES)
                   and len({repr(j.config.get(k)) for j in jobs_of_algorithm}) > 1]
        for job in jobs_of_algorithm:
            label = " ".join([algorithm] + [f"{k}={job.config.get(k)}" for k in varying])
            groups.setdefault(label, []).append(job)
    return dict(sorted(groups.items()))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table_rows(groups: dict[str, list[Job]]) -> list[dict]:
    rows = []
    for label, jobs in groups.items():
        s = [j.summary for j in jobs]
        rows.append({
            "label": label,
            "seeds": sorted(j.config.get("seed") for j in jobs),
            "final": _mean_std([x["final"]["test/acc_mean"] for x in s]),
            "best": _mean_std([x["best"]["test/acc_mean"] for x in s]),
            "final_weighted": _mean_std([x["final"]["test/acc_weighted"] for x in s]),
            "mb": statistics.fmean([(x["bytes_down"] + x["bytes_up"]) / 1e6 for x in s]),
            "wall": statistics.fmean([x["wall_seconds"] for x in s]),
            "rounds": max(x["rounds"] for x in s),
        })
    return rows


def render_markdown(rows: list[dict], jobs: list[Job], sweep_dir: Path) -> str:
    pct = lambda ms: f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"  # noqa: E731
    lines = [
        f"# Sweep report: `{sweep_dir}`",
        "",
        "Accuracies in %, mean ± std over seeds; `test/acc_mean` is the unweighted mean over clients.",
        "",
        "| algorithm | seeds | rounds | final acc_mean | best acc_mean | final acc_weighted "
        "| MB communicated | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seeds = ",".join(map(str, r["seeds"]))
        lines.append(
            f"| {r['label']} | {seeds} | {r['rounds']} | {pct(r['final'])} | {pct(r['best'])} "
            f"| {pct(r['final_weighted'])} | {r['mb']:.1f} | {r['wall']:.0f} |"
        )
    failed = [j for j in jobs if j.summary is None]
    if failed:
        lines += ["", "## Jobs without results", ""]
        lines += [f"- `{j.path.relative_to(sweep_dir)}`: {j.error.splitlines()[0]}" for j in failed]
    return "\n".join(lines) + "\n"


def plot_curves(groups: dict[str, list[Job]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label, jobs in groups.items():
        curves = [_read_curve(j.path / "metrics.csv") for j in jobs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        rounds = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[r] for r in rounds] for c in curves]) * 100
        mean, std = values.mean(0), values.std(0)
        ax.plot(rounds, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy, mean over clients (%)")
    ax.set_title("Personalized accuracy vs round (band: ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_curve(path: Path) -> dict[int, float]:
    if not path.is_file():
        return {}
    return {int(float(r["round"])): float(r["test/acc_mean"]) for r in csv.DictReader(open(path))}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def report(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"pfedla.report: {sweep_dir} is not a directory; pass a multirun/<date>/<time> folder")
    jobs = find_jobs(sweep_dir)
    groups = group_jobs(jobs)
    (sweep_dir / "report.md").write_text(render_markdown(table_rows(groups), jobs, sweep_dir))
    plot_curves(groups, sweep_dir / "curves.png")
    return sweep_dir / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a Hydra multirun dir (or any folder of run dirs)")
    path = report(parser.parse_args(argv).sweep_dir)
    print(path.read_text())


if __name__ == "__main__":
    main()
