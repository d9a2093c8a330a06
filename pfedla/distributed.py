"""One federated run across K processes (``trainer.devices=K``, ``trainer.num_nodes``).

Each round, every rank samples the same clients and computes what the server sends each of them;
each rank then trains its share of the clients (balanced by sample count), the trained models are
all-gathered, and every rank applies the identical server update in the sampled order. Evaluation
is split the same way and its accuracies gathered. So every rank holds the whole server state, the
only per-round traffic is the trained client models (what FL sends up anyway), and a run on K
processes computes exactly what one process computes (tested bit for bit on CPU, with the same
number of intra-op threads per process; other thread counts differ at rounding level).

Why not "rank 0 updates and broadcasts": the server step is a few percent of a round (docs/
PERFORMANCE.md), while broadcasting its result means shipping every sampled client's new model
*and* hypernetwork state back each round; replicating it costs no traffic and keeps every rank
ready to checkpoint, evaluate and continue. Replicas are checked for drift (``check_ranks_agree``)
at the start and at every checkpoint.

Lightning provides what it is good at: launching (its subprocess launcher, SLURM, torchelastic),
the process group (gloo on CPU, NCCL on GPU), rank/device assignment and ``num_nodes``. Its
DistributedDataParallel wrapper is skipped: no gradient is all-reduced in federated learning.
Ranks other than zero write nothing; they are started as ``python -m pfedla.rank`` with the
already-composed config, so they never re-run Hydra (or a whole ``-m`` sweep).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

ENV_CONFIG = "PFEDLA_RANK_CONFIG"  # the resolved config (JSON) a launched rank runs
ENV_RUN_DIR = "PFEDLA_RANK_RUN_DIR"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one run, and the collectives a round needs."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, trainer) -> Ranks:
        if trainer is None or trainer.world_size == 1:
            return cls()
        return cls(trainer.global_rank, trainer.world_size)

    def assign(self, loads: list[float] | list[int]) -> list[int]:
        """The rank of each item: largest load first onto the least-loaded rank (ties: lower rank)."""
        owner, totals = [0] * len(loads), [0.0] * self.world
        for j in sorted(range(len(loads)), key=lambda j: -loads[j]):
            owner[j] = min(range(self.world), key=lambda r: totals[r])
            totals[owner[j]] += loads[j]
        return owner

    def share(self, items: list[int], loads: list[float]) -> list[int]:
        """This rank's items, in their original order."""
        if self.world == 1:
            return list(items)
        return [i for i, r in zip(items, self.assign(loads)) if r == self.rank]

    def gather_clients(self, items: list[int], loads: list[float], mine: list, template) -> list:
        """All ranks' results for ``items`` (as ``share`` split them), in ``items`` order.

        A result is ``(params, buffers, loss)``; ``template`` (a ClientModel) gives names, shapes and
        dtypes, so a rank with no client this round still takes part. One all_gather per dtype.
        """
        if self.world == 1:
            return list(mine)
        owner = self.assign(loads)
        rows = max(owner.count(r) for r in range(self.world))
        layout = _Layout(template)
        local = layout.pack(mine, rows)
        gathered = {dtype: [torch.empty_like(t) for _ in range(self.world)] for dtype, t in local.items()}
        for dtype, t in local.items():
            dist.all_gather(gathered[dtype], t.contiguous())
        seen = [0] * self.world
        results = []
        for r in owner:
            results.append(layout.unpack({dtype: g[r][seen[r]] for dtype, g in gathered.items()}))
            seen[r] += 1
        return results

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (used to assemble per-client values each rank filled in part)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_int(self, value: int, device) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def check_agree(self, what: str, value: str) -> None:
        """Raise on every rank if ranks hold different ``value`` (a digest of data or state)."""
        if self.world == 1:
            return
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            detail = ", ".join(f"rank {r}: {v[:12]}" for r, v in enumerate(values))
            raise RuntimeError(
                f"ranks disagree on {what} ({detail}). Every rank must see the same dataset files, config and "
                "code; on several nodes, check that dataset.root holds identical data everywhere"
            )


class _Layout:
    """How one client's (params, buffers, loss) packs into one flat row per dtype."""

    def __init__(self, template):
        self.entries = [("params", n, t.shape, t.dtype) for n, t in template.params.items()]
        self.entries += [("buffers", n, t.shape, t.dtype) for n, t in template.buffers.items()]
        self.loss_dtype = next(iter(template.params.values())).dtype
        self.device = next(iter(template.params.values())).device
        self.dtypes = list(dict.fromkeys([d for *_, d in self.entries] + [self.loss_dtype]))

    def pack(self, results: list, rows: int) -> dict[torch.dtype, torch.Tensor]:
        packed = {}
        for dtype in self.dtypes:
            flat = []
            for params, buffers, loss in results:
                parts = {"params": params, "buffers": buffers}
                row = [parts[kind][n].reshape(-1) for kind, n, _, d in self.entries if d == dtype]
                if dtype == self.loss_dtype:
                    row.append(loss.reshape(1).to(dtype))
                flat.append(torch.cat(row))
            width = sum(math.prod(s) for *_, s, d in self.entries if d == dtype) + (dtype == self.loss_dtype)
            out = torch.zeros(rows, width, dtype=dtype, device=self.device)
            if flat:
                out[: len(flat)] = torch.stack(flat)
            packed[dtype] = out
        return packed

    def unpack(self, rows: dict[torch.dtype, torch.Tensor]) -> tuple[dict, dict, torch.Tensor]:
        parts: dict[str, dict] = {"params": {}, "buffers": {}}
        offsets = dict.fromkeys(rows, 0)
        for kind, name, shape, dtype in self.entries:
            n = math.prod(shape)
            parts[kind][name] = rows[dtype][offsets[dtype] : offsets[dtype] + n].view(shape).clone()
            offsets[dtype] += n
        loss = rows[self.loss_dtype][offsets[self.loss_dtype]].clone()
        return parts["params"], parts["buffers"], loss


def tensors_digest(*collections) -> str:
    """SHA-256 over strings and tensors (dicts hash their keys too): equal on two ranks iff bitwise equal."""
    h = hashlib.sha256()

    def feed(item):
        if isinstance(item, torch.Tensor):
            h.update(str((item.dtype, tuple(item.shape))).encode())
            h.update(item.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            for key, value in item.items():
                h.update(str(key).encode())
                feed(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                feed(value)
        else:
            h.update(str(item).encode())

    feed(collections)
    return h.hexdigest()


# --- launching ------------------------------------------------------------------------------------
class FederatedDDPStrategy(DDPStrategy):
    """Lightning's DDP processes and process group without the DistributedDataParallel wrapper."""

    strategy_name = "pfedla_ddp"

    def __init__(self, config: dict, run_dir, **kwargs):
        super().__init__(**kwargs)
        self.run_config, self.run_dir = config, str(run_dir)

    def _configure_launcher(self) -> None:
        self._launcher = RankLauncher(self.cluster_environment, self.num_processes, self.num_nodes,
                                      self.run_config, self.run_dir)

    def configure_ddp(self) -> None:
        pass  # no gradient all-reduce: ranks exchange trained client models explicitly (Ranks)

    def teardown(self) -> None:
        super().teardown()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the next run in this process (a sweep) builds its own


class RankLauncher(_SubprocessScriptLauncher):
    """Starts local ranks 1..K-1 as ``python -m pfedla.rank``, handing them the composed config."""

    def __init__(self, cluster_environment, num_processes: int, num_nodes: int, config: dict, run_dir: str):
        super().__init__(cluster_environment, num_processes, num_nodes)
        self.config, self.run_dir = config, run_dir

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank()),
                          LOCAL_RANK=str(env.local_rank()), WORLD_SIZE=str(self.num_processes * self.num_nodes))
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), ENV_CONFIG: json.dumps(self.config),
                         ENV_RUN_DIR: self.run_dir, "PFEDLA_PARENT_PID": str(os.getpid())}
            self.procs.append(subprocess.Popen([sys.executable, "-m", "pfedla.rank"], env=child_env))


def launch_rank() -> int:
    """This process's rank as its launcher set it in the environment, known before the process group
    exists (torchrun: RANK; SLURM: SLURM_PROCID; Lightning and pfedla: NODE_RANK, LOCAL_RANK); 0 if not
    launched. Nonzero only tells "not rank zero" for Lightning's variables, which is all it is used for."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0)) + int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def restored_process_state():
    """Undo what launching ranks changes in this process (env vars, torch threads), so that the next
    run in the same process (the next job of a sequential sweep) starts clean."""
    environ, threads = dict(os.environ), torch.get_num_threads()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
