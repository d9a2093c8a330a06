"""``python -m pfedla.report <multirun dir>``: one table and one figure across a sweep.

Reads every job's ``summary.json`` and ``metrics.csv``; rows are algorithms (plus whatever else the
sweep varied, except the seed), numbers are mean ± std over seeds. Both scores of every method, each at
the round its *validation* accuracy was best, and final; bytes, wall time, pFedLA's alpha statistics.
Writes ``report.md`` and ``curves.png`` into the sweep dir. Jobs without a summary (failed, killed,
still running) are listed, not crashed on.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pfedla.algorithms.alpha_stats import one_line  # noqa: E402
from pfedla.compatibility import with_added_keys  # noqa: E402
from pfedla.fairness import spread  # noqa: E402
from pfedla.timing import cpu_models, cpu_round_seconds, round_seconds, run_wall  # noqa: E402

IGNORED_KEYS = {"seed", "resume", "dataset.root", "dataset.download"}  # where the data was, not what it was
IGNORED_PREFIXES = ("logger.", "trainer.", "checkpoint.", "viz.")  # how a job ran, not what it ran


@dataclass
class Job:
    path: Path
    summary: dict | None
    error: str | None

    @property
    def config(self) -> dict:
        """The run's config, flattened; keys added since it ran read as their values from before they existed
        (pfedla.compatibility.ADDED_KEYS), so an older run groups with a newer one of the same experiment."""
        return flatten(with_added_keys(self.summary["config"])) if self.summary else {}


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
    """Group evaluated jobs by algorithm and every other key the sweep varied, except the seed."""
    done = [j for j in jobs if j.summary and j.summary.get("final")]
    by_algorithm: dict[str, list[Job]] = {}
    for job in done:
        by_algorithm.setdefault(job.config["algorithm.name"], []).append(job)
    groups: dict[str, list[Job]] = {}
    for algorithm, jobs_of_algorithm in by_algorithm.items():
        # Label rows by the keys that vary among this algorithm's jobs (other algorithms' keys,
        # e.g. a swept pFedLA learning rate, say nothing about FedAvg's rows).
        keys = sorted({k for j in jobs_of_algorithm for k in j.config} - IGNORED_KEYS - {"algorithm.name"})
        keys = [k for k in keys if not k.endswith("._target_")]  # the class its group's name names
        varying = [k for k in keys if not k.startswith(IGNORED_PREFIXES)
                   and len({repr(j.config.get(k)) for j in jobs_of_algorithm}) > 1]
        for job in jobs_of_algorithm:
            label = " ".join([algorithm] + [f"{k}={job.config.get(k)}" for k in varying])
            groups.setdefault(label, []).append(job)
    return dict(sorted(groups.items()))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _scores(summaries: list[dict], which: str, key: str) -> tuple[float, float] | None:
    values = [x[which][key] for x in summaries if x.get(which) and key in x[which]]
    return _mean_std(values) if len(values) == len(summaries) else None


def _seconds(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0f}"


def table_rows(groups: dict[str, list[Job]]) -> list[dict]:
    rows = []
    for label, jobs in groups.items():
        s = [j.summary for j in jobs]
        walls = [run_wall(x) for x in s]
        rows.append({
            "label": label,
            "seeds": sorted(j.config.get("seed") for j in jobs),
            "best": _scores(s, "best", "test/acc_mean"),  # test accuracy at the best-validation round
            "best_round": statistics.fmean(x["best"]["round"] for x in s),
            "final": _scores(s, "final", "test/acc_mean"),
            "best_adapted": _scores(s, "best_adapted", "test/adapted_acc_mean"),
            "final_adapted": _scores(s, "final_adapted", "test/adapted_acc_mean"),
            "mb": statistics.fmean([(x["bytes_down"] + x["bytes_up"]) / 1e6 for x in s]),
            "wall": statistics.fmean(w for w, _ in walls),
            "wall_estimated": any(guessed for _, guessed in walls),
            "round_s": statistics.fmean(round_seconds(x) for x in s),  # NaN if a seed timed no round
            "cpu_round_s": [c for c in (cpu_round_seconds(x) for x in s) if not math.isnan(c)],  # seeds with them
            "cpu_models": [cpu_models(x) for x in s],  # per seed: its CPUs
            "rounds": max(x["rounds"] for x in s),
            "alpha": _mean_alpha_stats([x["alpha_stats"] for x in s if x.get("alpha_stats")]),
            "unseen": _scores(s, "unseen", "test/acc_mean"),  # held-out clients (pfedla/unseen.py)
            "unseen_adapted": _scores(s, "unseen", "test/adapted_acc_mean"),
            "by_group": _mean_by_group(s),
            "spread": _mean_spread(s, "best", "client_acc"),
            "spread_adapted": _mean_spread(s, "best_adapted", "adapted_client_acc"),
            "by_seed": {which: {j.config.get("seed"): j.summary[which][key] for j in jobs
                                if j.summary.get(which) and key in j.summary[which]}
                        for which, key in (("best", "test/acc_mean"), ("best_adapted", "test/adapted_acc_mean"))},
        })
    return rows


def _mean_by_group(summaries: list[dict]) -> dict | None:
    """Feature skew: per client group, the mean and worst client of (a) at the best-validation round, averaged
    over seeds (None without groups)."""
    groups = [x["best"].get("spread_by_group") for x in summaries if x.get("best")]
    if not groups or any(g is None for g in groups):
        return None
    return {g: {k: statistics.fmean(by[g][k] for by in groups) for k in ("mean", "worst")} for g in groups[0]}


def _mean_spread(summaries: list[dict], which: str, key: str) -> dict | None:
    """The spread over clients (pfedla/fairness.py) of one evaluation, each figure averaged over seeds;
    computed from the per-client accuracies, so summaries written before the spread existed have it too."""
    spreads = [spread(x[which][key]) for x in summaries if x.get(which)]
    if not spreads or len(spreads) < len(summaries):
        return None
    return {k: statistics.fmean(sp[k] for sp in spreads) for k in ("mean", "std", "worst", "worst10pct_mean")}


def _mean_alpha_stats(stats: list[dict]) -> dict | None:
    """Each per-layer number averaged over seeds (None where any seed has none)."""
    if not stats:
        return None
    layers = {}
    for layer, first in stats[0]["layers"].items():
        layers[layer] = {}
        for key in first:
            values = [st["layers"][layer][key] for st in stats]
            layers[layer][key] = None if any(v is None for v in values) else statistics.fmean(values)
    return {"layers": layers, "max_abs_from_uniform": statistics.fmean(st["max_abs_from_uniform"] for st in stats),
            "uniform": stats[0]["uniform"]}


ROUND_SECONDS_EXPLAINED = (
    "s a round: each run's median round, with score (b)'s adaptation counted as its mean over the rounds, averaged "
    "over seeds (round_seconds in pfedla/timing.py). A pause of the machine the grid ran on falls in one round, which "
    "the median leaves out (unless it fell in an adaptation); wall time would count it. Other work on the machine "
    "during a run slows its rounds, and its s a round count that. CPU s a round: the run's CPU seconds over its rounds "
    "(cpu_round_seconds; one thread), which neither that load nor a pause changes, averaged over the seeds that "
    "recorded them (runs from before they were recorded: –)."
)

SCORES_EXPLAINED = (
    "Accuracy in %, mean ± std over seeds, unweighted mean over clients, on each client's test split. "
    "**(a)** is the personalized model as the server produces it (pFedLA: the aggregate theta_bar_i; "
    "pFedHN: the generated model; FedAvg, FedProx, Per-FedAvg: the global model; FedBN, FedPer, FedRep, "
    "LG-FedAvg: the global part with the client's personal part; Ditto, pFedMe: the personal model; APFL: "
    "alpha v + (1 - alpha) w; FedFomo, FedAMP, FedProto, FedALA, Local: the client's own model; pFedGraph: its "
    "graph-weighted aggregate; FedPAC: the body with its combined head; FedRoD: the generic model with generic + "
    "personal head; FedBABU: the global model, its head untrained). **(b)** is that model after the client's "
    "local adaptation (`client.epochs` of local SGD on its train split, on a copy; Per-FedAvg: one SGD step of "
    "lr alpha on one batch; FedBABU: `finetune_epochs` at `finetune_lr`). \"best val\": test accuracy at the "
    "round whose *validation* accuracy was best (the test split chooses nothing); \"best-val round\" is that "
    "round of (a), its mean over seeds. The headline is (a) at best val. Local has one score: its (b) is its (a)."
)


def table_markdown(rows: list[dict], cost: str = "wall") -> list[str]:
    """The scores table. Its last columns: ``wall`` seconds a run took (a sweep's report), or ``round``: seconds a
    round (``round_seconds``; the benchmark pages, whose grid is paused at times) and CPU seconds a round
    (``cpu_round_seconds``, over the seeds that recorded them)."""
    if cost not in ("wall", "round"):
        raise ValueError(f"cost={cost!r}: 'wall' or 'round'")
    def cells(r):
        def pct(ms):  # one seed has no spread to show
            if ms is None:
                return "–"
            return f"{100 * ms[0]:.2f}" + (f" ± {100 * ms[1]:.2f}" if len(r["seeds"]) > 1 else "")
        return pct

    def time_cells(r):  # round: s a round, then CPU s a round over the seeds that recorded them (how many if not all)
        if cost == "wall":
            return f"{'~' * r['wall_estimated']}{_seconds(r['wall'])}"
        wall = "–" if math.isnan(r["round_s"]) else f"{r['round_s']:.1f}"
        cpu, seeds = r["cpu_round_s"], len(r["seeds"])
        some = f" ({len(cpu)} of {seeds} seeds)" if cpu and len(cpu) < seeds else ""
        return f"{wall} | " + (f"{statistics.fmean(cpu):.1f}{some}" if cpu else "–")

    last = "wall s" if cost == "wall" else "s a round | CPU s a round"
    lines = [
        "| algorithm | seeds | rounds | (a) best val | (a) final | (b) best val | (b) final | best-val round "
        f"| MB communicated | {last} |",
        "|" + " --- |" * (10 if cost == "wall" else 11),
    ]
    for r in rows:
        pct = cells(r)
        seeds = ",".join(map(str, r["seeds"]))
        one_score = r["best_adapted"] is None and r["label"].startswith("local")
        best_b = "= (a)" if one_score else pct(r["best_adapted"])
        final_b = "= (a)" if one_score else pct(r["final_adapted"])
        lines.append(
            f"| {r['label']} | {seeds} | {r['rounds']} | {pct(r['best'])} | {pct(r['final'])} | {best_b} "
            f"| {final_b} | {r['best_round']:.0f} | {r['mb']:.1f} | {time_cells(r)} |"
        )
    if cost == "round":
        lines += ["", timed_on(rows)]
    if cost == "wall" and any(r["wall_estimated"] for r in rows):
        lines += ["", "~: a run resumed from a checkpoint older than the run's clock timed only its last process; "
                  "its wall time is that process's, scaled to all rounds (unknown, –, where it trained none)."]
    return lines


def timed_on(rows: list[dict]) -> str:
    """Which CPUs the table's runs were timed on (the same code runs at different speeds on different CPUs), as
    runs per CPU: a run resumed on another machine counts under each; runs from before rounds recorded their CPU
    are counted apart."""
    per_run = [models for r in rows for models in r["cpu_models"]]
    counts = Counter(m for models in per_run for m in models)
    unrecorded = sum(not models for models in per_run)
    named = [f"{m} ({n} run{'s' * (n != 1)})" for m, n in sorted(counts.items())]
    if unrecorded:
        named.append(f"not recorded ({unrecorded} run{'s' * (unrecorded != 1)}, from before runs recorded it)")
    mixed = " Seconds measured on different CPUs do not compare." if len(counts) + bool(unrecorded) > 1 else ""
    return "Timed on: " + "; ".join(named) + "." + mixed


def spread_markdown(rows: list[dict]) -> list[str]:
    """Per method, how accuracy spreads over clients at the best-validation round (pfedla/fairness.py)."""
    lines = ["How accuracy spreads over clients at the best-validation round, each figure averaged over seeds "
             "(%): the standard deviation over clients, the worst client, the mean of the worst 10% of clients.", "",
             "| algorithm | (a) mean | (a) std | (a) worst | (a) worst 10% | (b) mean | (b) std | (b) worst "
             "| (b) worst 10% |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        figures = []
        for key in ("spread", "spread_adapted"):
            sp = r[key]
            figures += (["–"] * 4 if sp is None else
                        [f"{100 * sp[k]:.2f}" for k in ("mean", "std", "worst", "worst10pct_mean")])
        lines.append(f"| {r['label']} | " + " | ".join(figures) + " |")
    with_groups = [r for r in rows if r["by_group"]]
    if with_groups:
        names = list(with_groups[0]["by_group"])
        lines += ["", "Per feature-skew group (score (a) at the best-validation round, %): mean / worst client.", "",
                  "| algorithm | " + " | ".join(f"group {g}" for g in names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for r in with_groups:
            cells = [f"{100 * r['by_group'][g]['mean']:.2f} / {100 * r['by_group'][g]['worst']:.2f}"
                     if g in r["by_group"] else "–" for g in names]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


def unseen_markdown(rows: list[dict]) -> list[str]:
    """Seen vs held-out clients (federation.unseen_fraction), for the rows that have held-out clients."""
    with_unseen = [r for r in rows if r["unseen"] is not None]
    if not with_unseen:
        return []

    def pct(ms):
        return "–" if ms is None else f"{100 * ms[0]:.2f}" + (f" ± {100 * ms[1]:.2f}" if ms[1] else "")

    lines = ["Clients never seen in training, personalized for after the last round by each method's own recipe "
             "(pfedla/unseen.py), next to the trained clients' final scores (%, mean ± std over seeds).", "",
             "| algorithm | seen (a) final | seen (b) final | unseen (a) | unseen (b) |",
             "| --- | --- | --- | --- | --- |"]
    for r in with_unseen:
        lines.append(f"| {r['label']} | {pct(r['final'])} | {pct(r['final_adapted'])} | {pct(r['unseen'])} "
                     f"| {pct(r['unseen_adapted'])} |")
    return lines


def alpha_markdown(rows: list[dict]) -> list[str]:
    with_alpha = [r for r in rows if r["alpha"]]
    if not with_alpha:
        return []
    lines = ["Per layer: mean self-weight, mean weight on peers with similar / dissimilar label distributions "
             "(1 - total variation >= 0.5 / < 0.5), and r, the correlation of alpha with that similarity "
             f"(final round, mean over seeds). Uniform is {with_alpha[0]['alpha']['uniform']:.3f}.", ""]
    for r in with_alpha:
        lines.append(f"- **{r['label']}** (max |alpha - 1/N| {r['alpha']['max_abs_from_uniform']:.3f}): "
                     f"{one_line(r['alpha'])}")
    return lines


def render_markdown(rows: list[dict], jobs: list[Job], sweep_dir: Path) -> str:
    lines = [f"# Sweep report: `{sweep_dir}`", "", SCORES_EXPLAINED, "", *table_markdown(rows),
             "", "## Spread over clients", "", *spread_markdown(rows)]
    unseen = unseen_markdown(rows)
    if unseen:
        lines += ["", "## Clients never seen in training", "", *unseen]
    alpha = alpha_markdown(rows)
    if alpha:
        lines += ["", "## What alpha learned", "", *alpha]
    failed = [j for j in jobs if not (j.summary and j.summary.get("final"))]
    if failed:
        lines += ["", "## Jobs without results", ""]
        lines += [f"- `{j.path.relative_to(sweep_dir)}`: {(j.error or 'stopped before its first evaluation')}"
                  .splitlines()[0] for j in failed]
    return "\n".join(lines) + "\n"


CURVES = (("val/acc_mean", "(a) validation"), ("test/acc_mean", "(a) test"),
          ("test/adapted_acc_mean", "(b) after local adaptation, test"))


def draw_curves(groups: dict[str, list[Job]]):
    """The curves figure: one colour per algorithm in every panel (a method without score (b), such as Local,
    is absent from the last panel but keeps its colour elsewhere), one legend with every algorithm."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(15, 4.6), sharey=True)
    palette = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    colours = {label: palette(k % palette.N) for k, label in enumerate(groups)}
    legend: dict[str, object] = {}
    for ax, (key, title) in zip(axes, CURVES):
        for label, jobs in groups.items():
            curves = [c for c in (_read_curve(j.path / "metrics.csv", key) for j in jobs) if c]
            if not curves:
                continue
            rounds = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[c[r] for r in rounds] for c in curves]) * 100
            mean, std = values.mean(0), values.std(0)
            (line,) = ax.plot(rounds, mean, label=f"{label} (n={len(curves)})", color=colours[label],
                              marker="o" if len(rounds) < 15 else None, markersize=3)
            ax.fill_between(rounds, mean - std, mean + std, alpha=0.2, color=colours[label])
            legend.setdefault(label, line)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy, mean over clients (%)")
    axes[-1].legend(list(legend.values()), [line.get_label() for line in legend.values()], fontsize=8,
                    loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Accuracy vs round (band: ± std over seeds)")
    fig.tight_layout()
    return fig


def plot_curves(groups: dict[str, list[Job]], path: Path) -> None:
    fig = draw_curves(groups)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_curve(path: Path, key: str) -> dict[int, float]:
    if not path.is_file():
        return {}
    return {int(float(r["round"])): float(r[key]) for r in csv.DictReader(path.read_text().splitlines()) if r.get(key)}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
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
