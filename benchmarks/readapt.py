"""Score (b) of a finished run again, from its last checkpoint, at other adaptation learning rates: is a (b) far
below (a) the adaptation's step size, or the method? Score (b) adapts every method the same way (client.epochs of
plain SGD on all parameters at client.lr, the value the search chose for training); this runs that adaptation on
the checkpoint's models, with the run's last round's batch order, once per ``--lrs`` value, and prints one JSON
line per value: the mean validation and test accuracy over clients of (a) and (b) (choose an lr by validation,
never by test), and the clients whose (b) fell more than 20 points below their (a) on test.

    python benchmarks/readapt.py <run dir> --lrs 0.17 0.05 0.01
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from pfedla.checkpointing import load_checkpoint
from pfedla.engines.batches import STREAM_ADAPT_BATCHES
from pfedla.run import quiet_third_parties, setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run dir with checkpoints/last.ckpt")
    parser.add_argument("--lrs", type=float, nargs="+", required=True, help="adaptation learning rates")
    args = parser.parse_args(argv)
    quiet_third_parties()
    checkpoint = load_checkpoint(args.run_dir / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create(checkpoint["pfedla_config"])
    module = setup(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    round_idx = int(checkpoint["pfedla_rounds_done"])
    clients = list(range(module.data.num_clients))
    models = module.algorithm.scored_parts(clients)
    personalized = module.transport.score(clients, models)
    for lr in args.lrs:
        with open_dict(module.cfg):
            module.cfg.client.lr = lr
        adapted = module.transport.adapted_score(round_idx, clients, models, STREAM_ADAPT_BATCHES)
        fell = [i for i in clients if personalized["test"][i] - adapted["test"][i] > 0.2]
        mean = lambda scores, split: round(100 * scores[split].mean().item(), 2)
        print(json.dumps({"run": str(args.run_dir), "round": round_idx, "algorithm": cfg.algorithm.name,
                          "trained_lr": checkpoint["pfedla_config"]["client"]["lr"], "adapt_lr": lr,
                          "a_val_mean": mean(personalized, "val"), "b_val_mean": mean(adapted, "val"),
                          "a_test_mean": mean(personalized, "test"), "b_test_mean": mean(adapted, "test"),
                          "clients_b_20_below_a": fell}), flush=True)


if __name__ == "__main__":
    main()
