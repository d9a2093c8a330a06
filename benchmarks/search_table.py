"""docs/TUNING.md from the trials of ``hparams_search`` runs: every trial's searched values, its objective
(validation only) and, for pFedLA, what its alpha did; the chosen values are the best objective's.

    python benchmarks/search_table.py multirun/search          # reads multirun/search/<algorithm>/<trial>/
    python benchmarks/search_table.py docs/results/search      # or the committed copy (one JSON per algorithm)

The trials are also written, compact, to docs/results/search/<algorithm>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from pfedla.report import flatten  # noqa: E402

SEARCHED = ("client.lr", "algorithm.hn_optimizer", "algorithm.hn_lr", "algorithm.head_init",
            "algorithm.normalisation", "algorithm.k", "algorithm.embedding_dim", "algorithm.mu")
INTRO = REPO / "docs" / "results" / "tuning_intro.md"


def trials_of(folder: Path) -> list[dict]:
    """Compact trials from a sweep dir (run dirs with summary.json / error.txt); given the study's folder
    (multirun/search/<study>/<time>/<trial>), from its latest sweep."""
    if not any(p.name.isdigit() for p in folder.iterdir()):
        folder = max(p for p in folder.iterdir() if p.is_dir())
    out = []
    for job in sorted(folder.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 1 << 30):
        if (job / "summary.json").is_file():
            s = json.loads((job / "summary.json").read_text())
            config = flatten(s["config"])
            alpha = s.get("alpha_stats")
            out.append({
                "trial": job.name, "objective": s["objective"], "best_test": s["best"]["test/acc_mean"],
                "params": {k: config[k] for k in SEARCHED if k in config},
                "alpha_self": {l: v["self"] for l, v in alpha["layers"].items()} if alpha else None,
                "alpha_similar_vs_dissimilar": {l: [v["similar_peer"], v["dissimilar_peer"]]
                                                for l, v in alpha["layers"].items()} if alpha else None,
                "wall_seconds": s["wall_seconds"],
            })
        elif (job / "error.txt").is_file():
            out.append({"trial": job.name, "error": (job / "error.txt").read_text().splitlines()[0]})
    return out


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(algorithm: str, trials: list[dict]) -> list[str]:
    searched = [k for k in SEARCHED if any(k in t.get("params", {}) and _varies(trials, k) for t in trials)]
    ok = [t for t in trials if "objective" in t]
    best = max(ok, key=lambda t: t["objective"]) if ok else None
    head = ["trial", *searched, "objective (val)", "test at best val"]
    if any(t.get("alpha_self") for t in ok):
        head += ["alpha self-weight conv1 / fc3", "fc3 similar / dissimilar peer"]
    lines = [f"### {algorithm}: {len(trials)} trials", "", "| " + " | ".join(head) + " |",
             "| " + " | ".join("---" for _ in head) + " |"]
    for t in trials:
        if "error" in t:
            lines.append(f"| {t['trial']} | failed: {t['error']} |")
            continue
        mark = " **(chosen)**" if t is best else ""
        cells = [t["trial"] + mark, *(fmt(t["params"].get(k)) for k in searched),
                 f"{100 * t['objective']:.2f}", f"{100 * t['best_test']:.2f}"]
        if t.get("alpha_self"):
            sd = t["alpha_similar_vs_dissimilar"]["fc3"]
            cells += [f"{t['alpha_self']['conv1']:.2f} / {t['alpha_self']['fc3']:.2f}",
                      f"{sd[0]:.3f} / {sd[1]:.3f}" if None not in sd else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if best:
        chosen = ", ".join(f"`{k}={fmt(v)}`" for k, v in best["params"].items() if k in searched)
        lines += ["", f"Chosen: {chosen} (objective {100 * best['objective']:.2f})."]
    return lines + [""]


def _varies(trials: list[dict], key: str) -> bool:
    return len({repr(t["params"].get(key)) for t in trials if "params" in t}) > 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="multirun/search (sweep dirs) or docs/results/search (JSON)")
    parser.add_argument("--algorithms", nargs="+",
                        default=["pfedla", "heurpfedla", "pfedhn", "pfedhn_steps", "fedavg", "fedbn", "local",
                                 "fedper", "lgfedavg", "fedprox", "fedrep"])
    args = parser.parse_args()
    saved = REPO / "docs" / "results" / "search"
    saved.mkdir(parents=True, exist_ok=True)
    lines = [INTRO.read_text().rstrip(), ""]
    for algorithm in args.algorithms:
        if (args.source / algorithm).is_dir():
            trials = trials_of(args.source / algorithm)
            (saved / f"{algorithm}.json").write_text(json.dumps(trials, indent=1) + "\n")
        elif (args.source / f"{algorithm}.json").is_file() or (saved / f"{algorithm}.json").is_file():
            source = args.source if (args.source / f"{algorithm}.json").is_file() else saved
            trials = json.loads((source / f"{algorithm}.json").read_text())
        else:
            lines += [f"### {algorithm}: not searched yet", ""]
            continue
        lines += table(algorithm, trials)
    (REPO / "docs" / "TUNING.md").write_text("\n".join(lines))
    print(f"wrote {REPO / 'docs' / 'TUNING.md'}")


if __name__ == "__main__":
    main()
