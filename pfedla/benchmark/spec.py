"""A benchmark, as one yaml under ``conf/benchmark/``: the methods, their search spaces and one search budget, the
splits and seeds of the final runs, their rounds, and where its runs and pages go (``load_spec`` checks it all
before anything runs).

The protocol is fixed by construction, not by the yaml: every search trial runs with
``dataset.test_images=unused`` (the dataset's own test images are never read) and every final run with
``dataset.test_images=held_out`` (its clients' test splits are those images alone), so no search ever touched a
final test image; a yaml that sets ``dataset.test_images`` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pfedla.errors import ConfigError

BENCHMARK_DIR = Path(__file__).resolve().parent.parent.parent / "conf" / "benchmark"
SAMPLERS = ("tpe", "random")


@dataclass
class MethodSpec:
    algorithm: str = MISSING  # conf/algorithm/<algorithm>.yaml
    space: str = MISSING  # conf/hparams_search/<space>.yaml: its params (the benchmark sets budget, sampler, proxy)
    overrides: list[str] = field(default_factory=list)  # every run of this method, trials and final runs
    trials: Optional[int] = None  # another budget than search.trials; refused unless trials_why says why
    trials_why: Optional[str] = None


@dataclass
class SearchSpec:
    trials: int = MISSING  # per method, the same for all
    sampler: str = MISSING  # tpe | random, seeded
    seed: int = MISSING  # the sampler's
    proxy: list[str] = field(default_factory=list)  # overrides of ``common`` that make the cheap proxy
    reuse: Optional[str] = None  # another benchmark whose searches' chosen values this one runs with (no search
    # of its own: its methods must be among that one's)


@dataclass
class ProxyCheckSpec:
    top: int = 0  # each checked method's best trials by proxy objective, run at full scale (0: no check)
    methods: list[str] = field(default_factory=list)  # [] : the reference and the best other method on the first
    # split (its first seed), once the final runs have it


@dataclass
class SplitSpec:
    overrides: list[str] = MISSING
    seeds: list[int] = MISSING
    about: str = ""  # what the page's heading says of it


@dataclass
class BenchmarkSpec:
    name: str = MISSING
    title: str = MISSING
    common: list[str] = MISSING  # every run: search trials and final runs
    methods: dict[str, MethodSpec] = MISSING
    search: SearchSpec = field(default_factory=SearchSpec)
    splits: dict[str, SplitSpec] = MISSING
    rounds: int = MISSING  # of every final run
    proxy_check: ProxyCheckSpec = field(default_factory=ProxyCheckSpec)
    extend_rounds: int = 0  # final runs whose validation curve still rises at ``rounds`` run on to this (0: never)
    rising: float = 0.5  # "still rising": least-squares slope over the last rounds above this, points / 10 rounds
    reference: str = MISSING  # the method every verdict compares against
    reductions: dict[str, str] = field(default_factory=dict)  # method: another it must equal bit for bit in score
    # (a) and the training loss on every seed both ran at the same values (an exact reduction; the page checks it)
    alpha: float = 0.05  # the family-wise error rate of the Holm-corrected verdicts
    work: str = MISSING  # run dirs, checkpoints and studies (not committed), relative to the repository
    store: str = MISSING  # what the pages are rebuilt from (committed): trials, chosen values, finished runs
    page: str = MISSING  # the results page
    tuning_page: Optional[str] = None  # the search page (none with search.reuse: the other benchmark's is it)
    intro: Optional[str] = None  # markdown put at the top of the results page
    notes: Optional[str] = None  # markdown put at its end


def load_spec(name_or_path: str, root: Path | None = None) -> BenchmarkSpec:
    """The benchmark ``conf/benchmark/<name>.yaml`` (or a path to a yaml), typed and checked."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml")))
        raise ConfigError(f"benchmark {name_or_path!r}: no {path}; known: {known}")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(BenchmarkSpec), OmegaConf.load(path))
        spec = OmegaConf.to_object(spec)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]} (keys: {', '.join(BenchmarkSpec.__dataclass_fields__)})"
                          ) from None
    check_spec(spec, path)
    return spec


def check_spec(spec: BenchmarkSpec, path: Path) -> None:
    """Refuse what would make the comparison unfair or unsound, naming the key and the fix."""
    if not spec.methods:
        raise ConfigError(f"{path}: methods is empty; list at least two, e.g. methods.fedavg.algorithm=fedavg")
    if spec.reference not in spec.methods:
        raise ConfigError(f"{path}: reference={spec.reference} is not one of the methods ({', '.join(spec.methods)})")
    if spec.search.reuse is not None:
        other = load_spec(spec.search.reuse)
        missing = sorted(set(spec.methods) - set(other.methods))
        if missing:
            raise ConfigError(f"{path}: search.reuse={spec.search.reuse} has no search of {', '.join(missing)}; "
                              "remove those methods or search them here")
    if spec.search.sampler not in SAMPLERS:
        raise ConfigError(f"{path}: search.sampler={spec.search.sampler} is unknown; valid: {', '.join(SAMPLERS)}")
    if spec.search.trials < 1:
        raise ConfigError(f"{path}: search.trials must be >= 1 (got {spec.search.trials}); e.g. search.trials=16")
    for name, method in spec.methods.items():
        if method.trials is not None and method.trials != spec.search.trials and not method.trials_why:
            raise ConfigError(
                f"{path}: methods.{name}.trials={method.trials} differs from search.trials={spec.search.trials}: "
                f"every method gets the same budget; remove it, or say why in methods.{name}.trials_why")
    for where, overrides in [("common", spec.common), ("search.proxy", spec.search.proxy),
                             *[(f"methods.{n}.overrides", m.overrides) for n, m in spec.methods.items()],
                             *[(f"splits.{n}.overrides", s.overrides) for n, s in spec.splits.items()]]:
        for override in overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key == "dataset.test_images":
                raise ConfigError(f"{path}: {where} sets {key}; the benchmark sets it (unused for searches, held_out "
                                  "for final runs), so remove it")
            if key in ("algorithm", "hydra.run.dir", "resume") or (
                    where != "search.proxy" and key in ("seed", "federation.rounds")):
                raise ConfigError(f"{path}: {where} sets {key}; the benchmark sets it from splits.*.seeds, rounds and "
                                  "methods.*.algorithm, so remove it")
    for method, other in spec.reductions.items():
        if method not in spec.methods or other not in spec.methods:
            raise ConfigError(f"{path}: reductions.{method}={other} names a method not among the methods "
                              f"({', '.join(spec.methods)})")
    unknown = sorted(set(spec.proxy_check.methods) - set(spec.methods))
    if unknown:
        raise ConfigError(f"{path}: proxy_check.methods names {', '.join(unknown)}, not among the methods")
    if spec.extend_rounds and spec.extend_rounds <= spec.rounds:
        raise ConfigError(f"{path}: extend_rounds={spec.extend_rounds} must exceed rounds={spec.rounds} (or be 0)")
    if not 0 < spec.alpha < 1:
        raise ConfigError(f"{path}: alpha={spec.alpha} must be in (0, 1); e.g. alpha=0.05")


def budget(spec: BenchmarkSpec, method: str) -> int:
    """The trials of one method's search."""
    own = spec.methods[method].trials
    return spec.search.trials if own is None else own
