"""The search step: each method's Optuna search (Hydra's sweeper, ``python -m pfedla.run -m hparams_search=<space>``)
on the benchmark's proxy, with the same budget and sampler for every method, the dataset's own test images never
read (``dataset.test_images=unused``).

A study lives in a SQLite file, so a search cut short resumes: trials that finished or failed count against the
budget, a trial that was running when the search was killed is marked failed (``interrupted``) and does not count,
and the sweeper runs the rest (its sampler restarts from its seed, so the later trials differ from an uncut
search's). A finished search is written to the store: every trial, and the chosen values (the best validation
objective; the first on ties). A search whose trials all failed stops the benchmark with the first trial's error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

from pfedla.benchmark.paths import REPO, Places
from pfedla.benchmark.spec import BenchmarkSpec, budget
from pfedla.report import flatten

# A chosen value within this share of its log range from an end "sits at an edge": widen the range, search again.
EDGE = 0.05


class SearchFailed(RuntimeError):
    """Every trial of a search failed; the message names the first trial's error."""


@dataclass
class Study:
    """One method's study on disk."""

    db: Path
    name: str

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def load(self) -> optuna.Study | None:
        if not self.db.is_file():
            return None
        try:
            return optuna.load_study(study_name=self.name, storage=self.url)
        except KeyError:  # the file exists, the study was never created in it
            return None

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        study = self.load()
        return [] if study is None else study.get_trials(deepcopy=False)


def spent(trials) -> int:
    """Trials that count against the budget: finished or failed, not cut by an interruption."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    return sum(1 for t in trials if t.state in states and not t.user_attrs.get("interrupted"))


def mark_interrupted(study: Study) -> None:
    """A trial left running by a killed search is failed and flagged: it does not count, and no sampler waits."""
    loaded = study.load()
    if loaded is None:
        return
    for trial in loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage = loaded._storage
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        if hasattr(storage, "set_trial_state_values"):  # optuna >= 3
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        else:  # optuna 2.x, which hydra-optuna-sweeper 1.2 installs
            storage.set_trial_state(trial._trial_id, optuna.trial.TrialState.FAIL)


def search_command(spec: BenchmarkSpec, method: str, places: Places, remaining: int, attempt: Path) -> list[str]:
    m = spec.methods[method]
    study = Study(places.search_dir(method) / "study.db", method)
    return [sys.executable, "-m", "pfedla.run", "-m", f"hparams_search={m.space}", f"algorithm={m.algorithm}",
            *spec.common, *spec.search.proxy, *m.overrides, "dataset.test_images=unused",
            f"hydra/sweeper/sampler={spec.search.sampler}", f"hydra.sweeper.sampler.seed={spec.search.seed}",
            f"hydra.sweeper.n_trials={remaining}", f"hydra.sweeper.storage={study.url}",
            f"hydra.sweeper.study_name={study.name}", f"hydra.sweep.dir={attempt}",
            "logger=none", "trainer.devices=1", "trainer.progress_bar=false"]


def run_search(spec: BenchmarkSpec, method: str, places: Places, threads: int) -> dict:
    """Run (or resume, or skip) one method's search; return its record (also written to the store)."""
    record_path = places.search_record(method)
    if record_path.is_file():
        return json.loads(record_path.read_text())
    folder = places.search_dir(method)
    folder.mkdir(parents=True, exist_ok=True)
    study = Study(folder / "study.db", method)
    mark_interrupted(study)
    remaining = budget(spec, method) - spent(study.trials())
    if remaining > 0:
        attempt = folder / f"attempt{len(list(folder.glob('attempt*')))}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
        with open(folder / "console.log", "a") as console:
            subprocess.call(search_command(spec, method, places, remaining, attempt), cwd=REPO, env=env,
                            stdout=console, stderr=subprocess.STDOUT)
        mark_interrupted(study)
    trials = study.trials()
    if spent(trials) < budget(spec, method):
        raise SearchFailed(f"search {method}: {spent(trials)} of {budget(spec, method)} trials done (stopped early; "
                           f"see {folder / 'console.log'}); run the benchmark again to resume it")
    record = search_record(spec, method, trials, folder)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def search_record(spec: BenchmarkSpec, method: str, trials, folder: Path) -> dict:
    """The trials and the chosen values; raises SearchFailed when no trial finished."""
    runs = trial_runs(folder)
    rows = []
    for t in trials:
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        run = next((r for params, r in runs if all(params.get(k) == v for k, v in t.params.items())), {})
        rows.append({"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
                     "seconds": seconds, "interrupted": bool(t.user_attrs.get("interrupted")), **run})
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise SearchFailed(f"search {method}: all {len(trials)} trials failed; the first: {first_error(folder)}")
    best = max(done, key=lambda t: (t.value, -t.number))
    return {"method": method, "space": spec.methods[method].space, "sampler": spec.search.sampler,
            "seed": spec.search.seed, "budget": budget(spec, method), "proxy": spec.search.proxy,
            "chosen": {"number": best.number, "params": best.params, "value": best.value,
                       "at_edge": at_edge(best)},
            "trials": rows}


def trial_runs(folder: Path) -> list[tuple[dict, dict]]:
    """(flattened config, what the trial's run adds to its record) for every trial run dir of a search: its error,
    or pFedLA's final mean self-weight per layer (how far alpha collapsed onto the client itself)."""
    runs = []
    for job in sorted(folder.glob("attempt*/*/.hydra")):
        job = job.parent
        summary = job / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            alpha = s.get("alpha_stats")
            extra = {"alpha_self": {l: v["self"] for l, v in alpha["layers"].items()}} if alpha else {}
            runs.append((flatten(s["config"]), extra))
        elif (job / "error.txt").is_file():
            lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
            params = dict(line[2:].split("=", 1) for line in lines if line.startswith("- ") and "=" in line)
            runs.append(({k: _parse(v) for k, v in params.items()},
                         {"error": (job / "error.txt").read_text().splitlines()[0]}))
    return runs


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def at_edge(trial) -> list[str]:
    """The chosen trial's float parameters within EDGE of their range's end (in log units where the range is)."""
    edges = []
    for name, dist in trial.distributions.items():
        value = trial.params[name]
        if not isinstance(value, float) or not hasattr(dist, "low"):
            continue
        low, high = dist.low, dist.high
        if getattr(dist, "log", False) or "LogUniform" in type(dist).__name__:  # optuna 3 / optuna 2
            value, low, high = math.log(value), math.log(low), math.log(high)
        if min(value - low, high - value) <= EDGE * (high - low):
            edges.append(name)
    return edges


def first_error(folder: Path) -> str:
    """The first line of the first failed trial's error.txt (pfedla.run writes one per failed job)."""
    for attempt in sorted(folder.glob("attempt*")):
        for error in sorted(attempt.glob("*/error.txt"), key=lambda p: _job_number(p.parent.name)):
            return f"{error.read_text().splitlines()[0]} ({error})"
    return f"no error.txt under {folder} (see {folder / 'console.log'})"


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def chosen_overrides(record: dict) -> list[str]:
    """The chosen values as command-line overrides (floats in full: the run uses exactly what was searched)."""
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
            for key, value in record["chosen"]["params"].items()]
