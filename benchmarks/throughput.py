"""Cost of a federated round, split into client training / server / evaluation, against the hardware
and against a bare PyTorch loop doing the same client work. Prints one JSON object per case.

    python benchmarks/throughput.py                 # the cases of docs/PERFORMANCE.md (real FMNIST)
    python benchmarks/throughput.py --smoke         # tiny synthetic cases, seconds (CI runs this)
    python benchmarks/throughput.py --cases dirichlet20 --algorithms pfedla --engines loop vmap

Each case runs in its own subprocess, so peak RSS is that case's own. Rounds: one warm-up round,
then ``--rounds`` timed rounds (medians reported), each evaluated (``eval_every=1``): ``round_s`` is
client + server + evaluation. Every case also runs at the settings that were the defaults before the
CPU fast path (``--settings old-default``: NCHW layout, evaluation 4096 samples per forward pass), so
a speed-up is a ratio measured side by side in one run, not against a number from another day.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pfedla.benchmark.fields import THROUGHPUT_FIELDS

CASES = {  # name: (num_clients, participation)
    "dirichlet20": (20, 1.0),  # the noniid_dirichlet workload
    "clients100": (100, 0.1),
    "clients1000": (1000, 0.1),
}
SETTINGS = {  # name: overrides on top of the case's
    "default": [],
    "old-default": ["trainer.memory_format=contiguous", "trainer.eval_batch_size=4096"],
}
FIELDS = THROUGHPUT_FIELDS


def matmul_peak_gflops(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_sample(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training batch, per sample (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(y)


def reference_round(module, sampled: list[int], round_idx: int) -> float:
    """The same clients, batches and SGD as the framework's round, with nn.Module + torch.optim.SGD only
    (in the run's memory format, the standard ``model.to(memory_format=...)`` way)."""
    from pfedla.engines.batches import client_generator

    cl = module.cfg.client
    model = copy.deepcopy(module.model).to(memory_format=module.compute.memory_format)
    sync = torch.cuda.synchronize if module.device.type == "cuda" else (lambda: None)
    starts = {i: module.algorithm.personalized_model(i) for i in sampled}
    sync()
    start = time.perf_counter()
    for i in sampled:
        model.load_state_dict({**starts[i].params, **starts[i].buffers})
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=cl.lr, momentum=cl.momentum, weight_decay=cl.weight_decay)
        x, y = module.data.train_x[i], module.data.train_y[i]
        gen = client_generator(module.cfg.seed, round_idx, i)
        for _ in range(cl.epochs):
            order = torch.randperm(len(y), generator=gen).to(y.device)
            for s in range(0, len(y), cl.batch_size):
                batch = order[s : s + cl.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
    sync()
    return time.perf_counter() - start


def run_case(case: str, algorithm: str, engine: str, model: str, settings: str, rounds: int, smoke: bool,
             accelerator: str) -> dict:
    import logging

    from hydra import compose, initialize_config_dir

    from pfedla.config import CONF_DIR
    from pfedla.run import make_trainer, setup
    from pfedla.sampling import sample_clients

    logging.disable(logging.WARNING)
    num_clients, participation = CASES[case]
    overrides = [
        f"algorithm={algorithm}", f"client.engine={engine}", f"federation.num_clients={num_clients}",
        f"federation.participation={participation}", f"federation.rounds={rounds + 1}",
        "federation.eval_every=1", "federation.adapt_every=0", f"model={model}", *SETTINGS[settings], "logger=none",
        "trainer.progress_bar=false", "trainer.devices=1",  # one process: benchmarks/scaling.py compares K
        f"trainer.accelerator={accelerator}", "checkpoint.every=1000000", "viz.every=1000000",
        "partition.alpha=0.3", "partition.min_samples=10",
    ]
    if smoke:
        overrides += ["dataset=synthetic", f"federation.num_clients={min(num_clients, 8)}", "partition.min_samples=4"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    module = setup(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        make_trainer(cfg, Path(tmp), figures=False).fit(module)
    timed = module.timings[1:]  # round 1 warms up caches and allocators
    client_s = statistics.median(t["client"] for t in timed)
    server_s = statistics.median(t["server"] for t in timed)
    eval_s = statistics.median(t["eval"] for t in timed)
    round_s = statistics.median(t["client"] + t["server"] + t["eval"] for t in timed)
    last = timed[-1]["round"]
    sampled = sample_clients(cfg.seed, last, module.data.num_clients, participation)
    samples = cfg.client.epochs * sum(module.data.train_sizes[i] for i in sampled)
    device = module.device
    first = sampled[0]
    x, y = module.data.train_x[first][: cfg.client.batch_size], module.data.train_y[first][: cfg.client.batch_size]
    module.model.train()
    per_sample = flops_per_sample(module.model, x, y)
    # The reference trains the round's clients from their current models (work equal to a round).
    reference_s = min(reference_round(module, sampled, last) for _ in range(2))
    peak = matmul_peak_gflops(device)
    client_gflops = per_sample * samples / client_s / 1e9
    return {
        "case": case + ("-smoke" if smoke else ""), "algorithm": algorithm, "engine": engine, "model": model,
        "settings": settings, "memory_format": module.compute.format_name, "device": str(device),
        "clients": module.data.num_clients, "clients_per_round": len(sampled),
        "round_s": round(round_s, 4), "client_s": round(client_s, 4), "server_s": round(server_s, 4),
        "eval_s": round(eval_s, 4), "eval_share": round(eval_s / round_s, 4),
        "server_share": round(server_s / round_s, 4), "samples_per_s": round(samples / round_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None),
        "client_gflops": round(client_gflops, 2), "matmul_peak_gflops": round(peak, 1),
        "flop_efficiency": round(client_gflops / peak, 4),
        "reference_s": round(reference_s, 4), "ratio_to_reference": round(client_s / reference_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--algorithms", nargs="+", default=["pfedla", "fedavg"])
    parser.add_argument("--engines", nargs="+", default=["loop", "vmap"], choices=["loop", "vmap"])
    parser.add_argument("--models", nargs="+", default=["cnn", "cnn_bn"], choices=["cnn", "cnn_bn"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic sizes (seconds)")
    parser.add_argument("--one", nargs=5, metavar=("CASE", "ALGORITHM", "ENGINE", "MODEL", "SETTINGS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(*args.one, args.rounds, args.smoke, args.accelerator)), flush=True)
        return
    combos = [(case, algorithm, engine, model, settings) for case in args.cases for algorithm in args.algorithms
              for engine in args.engines for model in args.models for settings in args.settings]
    for combo in combos:  # the settings of one combination run back to back: a side-by-side ratio
        cmd = [sys.executable, __file__, "--one", *combo, "--rounds", str(args.rounds),
               "--accelerator", args.accelerator] + (["--smoke"] if args.smoke else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
        if line is None:
            keys = ("case", "algorithm", "engine", "model", "settings")
            print(json.dumps({**dict(zip(keys, combo)), "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
        else:
            print(line, flush=True)


if __name__ == "__main__":
    main()
