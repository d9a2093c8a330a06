"""Does pFedLA's hypernetwork learn? Runs pFedLA for a list of overrides and prints, per run, one JSON
line: accuracy and its alpha statistics (pfedla.algorithms.alpha_stats): how far alpha moved from
uniform, the mean self-weight, and -- the paper's claim -- how much weight clients put on peers with
similar label distributions versus peers with dissimilar ones.

    python benchmarks/alpha_dynamics.py --rounds 20 --fraction 0.25 algorithm.hn_lr=0.005 algorithm.hn_lr=0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile

from hydra import compose, initialize_config_dir

from pfedla.config import CONF_DIR
from pfedla.run import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--base", default="partition=pathological,partition.classes_per_client=2")
    parser.add_argument("variants", nargs="+", help="one override set per run, comma-separated")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    base = [
        "+experiment=noniid_dirichlet", f"federation.rounds={args.rounds}", f"dataset.fraction={args.fraction}",
        "trainer.accelerator=cpu", "trainer.progress_bar=false", "logger=none", "checkpoint.every=1000",
        *args.base.split(","),
    ]
    for variant in args.variants:
        overrides = base + variant.split(",")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        with tempfile.TemporaryDirectory() as tmp:
            summary = run(cfg, tmp)
            result = {
                "variant": variant,
                "base": args.base,
                "rounds": args.rounds,
                "final_acc_mean": summary["final"]["test/acc_mean"],
                "best_val_test_acc_mean": summary["best"]["test/acc_mean"],
                "wall_seconds": round(summary["wall_seconds"], 1),
                **summary["alpha_stats"],
            }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
