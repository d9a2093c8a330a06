"""Where a client's training step spends its time on the CPU: torch.profiler over local SGD steps of the
default CNN, at the run's compute settings. Prints one JSON object per setting.

    python benchmarks/profile_step.py                      # batch 32, 200 steps, 1 thread, NCHW vs channels_last
    python benchmarks/profile_step.py --threads 2 --model cnn_bn

``ms_per_step`` is wall time; ``op_share`` is each op's share of the profiled self CPU time (top ops),
``gflops`` the step's forward+backward FLOPs over wall time, next to a 1024x1024 fp32 matmul in the
same process (``matmul_gflops``). What the ops do not explain is Python and dispatch overhead.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pfedla.compute import Compute
from pfedla.engines.batches import client_generator
from pfedla.engines.loop import train_client
from pfedla.models.cnn import CNN


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def step_flops(model, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def profile_setting(memory_format: torch.memory_format, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = CNN((1, 28, 28), 10, batch_norm=args.model == "cnn_bn")
    compute = Compute(memory_format)
    n = args.batch_size * args.steps
    x = compute.laid_out(torch.randn(n, 1, 28, 28))
    y = torch.randint(0, 10, (n,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    kw = dict(epochs=1, batch_size=args.batch_size, lr=0.01, compute=compute)
    train_client(model, params, buffers, x[: 10 * args.batch_size], y[: 10 * args.batch_size],
                 generator=client_generator(0, 0, 0), **kw)  # warm-up
    start = time.perf_counter()
    train_client(model, params, buffers, x, y, generator=client_generator(0, 1, 0), **kw)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_client(model, params, buffers, x, y, generator=client_generator(0, 2, 0), **kw)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    flops = step_flops(model, args.batch_size)
    return {
        "model": args.model, "memory_format": compute.format_name, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "steps": args.steps, "ms_per_step": round(1e3 * wall / args.steps, 3),
        "gflops": round(flops * args.steps / wall / 1e9, 1), "matmul_gflops": round(matmul_gflops(), 1),
        "profiled_ops_ms_per_step": round(total / 1e3 / args.steps, 3),
        "op_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in top},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", choices=["cnn", "cnn_bn"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        print(json.dumps(profile_setting(memory_format, args)), flush=True)


if __name__ == "__main__":
    main()
