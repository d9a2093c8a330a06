"""What a run's rounds cost, from the clock to the page: ``PhaseTimer`` times each round's phases in the server
(wall seconds, and the process's CPU seconds, which neither the load beside a run nor a pause moves),
``timing_summary`` condenses a run's rounds into its summary.json's ``timing``, and the readers below turn a summary
into the numbers the report and the benchmark pages show (``round_seconds``, ``cpu_round_seconds``, ``run_wall``,
``cpu_models``)."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from contextlib import contextmanager

import torch

PHASES = ("client", "gather", "server", "eval", "adapt")  # adapt: local adaptation for score (b), at evaluation


class PhaseTimer:
    """Wall seconds per named phase of a round (synchronising the GPU so the split is real), and the CPU seconds
    this process spent since the timer began (``cpu_seconds``: every thread of the process, time.process_time).
    CPU seconds do not grow while the process waits for a core or is paused, so they measure a round's cost
    under any load; they leave out work in other processes (K ranks' others, Flower's nodes)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self.cpu_started = time.process_time()

    def cpu_seconds(self) -> float:
        return time.process_time() - self.cpu_started

    @contextmanager
    def __call__(self, phase: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.seconds[phase] += time.perf_counter() - start


def timing_summary(timings: list[dict]) -> dict:
    """Seconds per round phase (client training, gathering results across ranks, server, evaluation) over the
    run's rounds (a resumed run's checkpoint carries the earlier ones): medians over the rounds after the first
    (which pays one-off start-up costs; so does a resumed process's first round), and totals. ``cpu_s_total``:
    the process's CPU seconds over the ``cpu_rounds_timed`` rounds that recorded them (a checkpoint written before
    they were recorded carries rounds without); ``cpu_models``: how many rounds ran on each CPU (``cpu_model``; a run
    resumed on another machine names both), over the rounds that recorded it."""
    phases = PHASES
    steady = timings[1:] or timings
    medians = {f"{p}_s_median": statistics.median(t[p] for t in steady) for p in phases} if steady else {}
    cpu = [t["cpu"] for t in timings if "cpu" in t]
    machines = Counter(t["cpu_model"] for t in timings if "cpu_model" in t)
    return {
        "rounds_timed": len(timings),
        "round_s_median": statistics.median(sum(t[p] for p in phases) for t in steady) if steady else None,
        **medians,
        **{f"{p}_s_total": sum(t[p] for t in timings) for p in phases},
        "cpu_rounds_timed": len(cpu),
        "cpu_s_total": sum(cpu),
        "cpu_models": dict(sorted(machines.items())),
    }


def run_wall(summary: dict) -> tuple[float, bool]:
    """A run's wall seconds over all its rounds, and whether that is an estimate. A run resumed from a checkpoint
    that predates the run's clock (pfedla/server.py, run_seconds) timed only its last process: its seconds are
    scaled by the rounds over the rounds that process trained."""
    timed = summary.get("timing") or {}
    covered = summary.get("wall_seconds_rounds", timed.get("rounds_timed", summary["rounds"]))
    if covered < summary["rounds"]:  # none timed: unknown
        return (summary["wall_seconds"] * summary["rounds"] / covered if covered else math.nan), True
    return summary["wall_seconds"], False


def round_seconds(summary: dict) -> float:
    """A run's seconds a round: its median round (the summary's ``timing``, over the rounds after the first), with
    score (b)'s adaptation counted as its mean over the rounds instead of its median; NaN where the run timed no
    round. A pause of the machine mid-run (SIGSTOP) falls in one round, which the median leaves out, unless it fell
    in an adaptation (whose total it joins); wall time (``run_wall``) counts every pause."""
    timing = summary.get("timing") or {}
    if timing.get("round_s_median") is None or not timing.get("rounds_timed"):
        return math.nan
    rounds, adapt_median = timing["rounds_timed"], timing.get("adapt_s_median", 0.0)
    return timing["round_s_median"] - adapt_median + timing.get("adapt_s_total", 0.0) / rounds


def cpu_round_seconds(summary: dict) -> float:
    """A run's CPU seconds a round: its process's CPU seconds over the rounds that recorded them, per round (every
    round counts, start-up and adaptation included: waiting for a core or a pause adds none); NaN where no round
    recorded them (runs from before they were). Work in other processes (K ranks' others, Flower's nodes) is not
    in it."""
    timing = summary.get("timing") or {}
    rounds = timing.get("cpu_rounds_timed", 0)
    return timing["cpu_s_total"] / rounds if rounds else math.nan


def cpu_models(summary: dict) -> list[str]:
    """The CPUs a run's rounds ran on (``cpu_model``), sorted; empty for a run from before rounds recorded it. A run
    resumed on another machine names each."""
    return sorted((summary.get("timing") or {}).get("cpu_models") or {})
