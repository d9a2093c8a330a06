"""How the arithmetic runs: the memory format of images and convolution weights (``trainer.memory_format``),
the precision of forward passes (``trainer.precision``) and the number of processes (``trainer.devices``).

``channels_last`` (NHWC) lets oneDNN's CPU convolutions skip the layout conversions that the default
NCHW layout costs; on this project's 2-core AMD EPYC it makes a training step of the default CNN
1.5-1.6x faster (docs/PERFORMANCE.md), and an Intel Xeon (AVX-512) was reported 1.6x faster too.
``auto`` is a fixed rule, not a timing, so a run on a given machine and config always makes the same
choice (and a resumed run the choice it started with): channels_last on the CPU for the ``loop``
engine when the model has a 2-D convolution, the default layout otherwise (the ``vmap`` engine stacks
per-client weights into 5-D tensors, which have no channels_last layout; GPUs are unmeasured here).
A layout changes rounding only, never the arithmetic: both agree to float tolerance (tested).

``devices=auto`` on a CPU runs one process per core (``torch.get_num_threads()``, which is the
physical cores unless OMP_NUM_THREADS says otherwise; each then gets one thread) through the K-process
path (pfedla/distributed.py), at most one per client of a round and at most ``MAX_AUTO_PROCESSES``
(each holds the data and the whole server state), when the run trains at least
``MIN_SAMPLES_FOR_PROCESSES`` samples over its rounds and no cluster launcher (SLURM, torchrun) has
already started the processes: small steps of a small CNN parallelise across
clients far better than across threads (docs/PERFORMANCE.md), but starting a process (importing torch
and Lightning, loading the data) costs seconds, which a short run does not win back. On a GPU (or any
accelerator that is not the CPU) it is one.
Also a fixed rule: same machine and config, same processes.

``precision=bf16`` runs forward passes under bf16 autocast (weights, gradients and the SGD step stay
fp32); it is for GPUs, and ``benchmarks/gpu.py --precision`` checks what it costs in accuracy.
"""

from __future__ import annotations

import os
import platform
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
CPUINFO = Path("/proc/cpuinfo")
PRECISIONS = ("32", "bf16")
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Compute:
    """The layout and precision a run's training and evaluation use (the defaults: the plain reference)."""

    memory_format: torch.memory_format = torch.contiguous_format
    autocast_dtype: torch.dtype | None = None

    @property
    def format_name(self) -> str:
        return "channels_last" if self.memory_format == torch.channels_last else "contiguous"

    def laid_out(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in this memory format if it is 4-D (images, conv weights); other tensors as they are.

        ``Tensor.to``, not ``.contiguous``: with one channel (grayscale images, a first conv's weight) both
        layouts count as contiguous, so ``.contiguous`` keeps NCHW strides, and a convolution picks its
        layout from the strides; ``.to`` writes the canonical channels_last strides.
        """
        return t.to(memory_format=self.memory_format) if t.dim() == 4 else t

    def cloned(self, tensors: Tensors) -> Tensors:
        """Detached copies (never views of the inputs), 4-D ones in this memory format."""
        return {k: v.detach().clone(memory_format=self.memory_format if v.dim() == 4 else torch.preserve_format)
                for k, v in tensors.items()}

    def autocast(self, device_type: str) -> AbstractContextManager:
        """Where forward passes run: bf16 autocast when asked for, else a no-op."""
        return torch.autocast(device_type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)


MIN_SAMPLES_FOR_PROCESSES = 100_000  # two rounds of full FMNIST; 4 such rounds already ran faster on 2 processes
MAX_AUTO_PROCESSES = 8  # every rank holds the data and the server state (pFedLA at 1000 clients: 2 GB each)
REFERENCE = Compute()  # NCHW, fp32: what every fast path is tested against


def choose_compute(trainer_cfg, model: nn.Module, device: torch.device, channels_last_engine: bool) -> Compute:
    """The run's Compute from ``trainer.memory_format`` (auto: the rule in the module docstring;
    ``channels_last_engine``: the engine can lay weights out as channels_last) and ``trainer.precision``."""
    setting = trainer_cfg.memory_format
    if setting == "auto":
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        setting = "channels_last" if device.type == "cpu" and channels_last_engine and has_conv else "contiguous"
    memory_format = torch.channels_last if setting == "channels_last" else torch.contiguous_format
    return Compute(memory_format, torch.bfloat16 if str(trainer_cfg.precision) == "bf16" else None)


# Set when a cluster launcher (SLURM, torchrun) started this process as one of a run's ranks: then the
# launcher decides the process count, and ``auto`` means one process per task.
LAUNCHER_VARIABLES = ("SLURM_NTASKS", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def cores() -> int:
    """Cores this process may use: PyTorch's intra-op threads (physical cores, or OMP_NUM_THREADS)."""
    return torch.get_num_threads()


def runs_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` resolves to the CPU (auto: no CUDA and no Apple MPS).

    Here, not in pfedla/run.py: a joblib sweep pickles run.py's functions by value when it runs as
    ``__main__``, and ``torch.backends`` cannot be pickled."""
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return accelerator == "cpu"


def devices_or_one(devices) -> int:
    """``trainer.devices`` as a count before a run starts (``auto`` -> 1): what a SLURM job asks for."""
    return 1 if devices == "auto" else int(devices)


def choose_processes(trainer_cfg, on_cpu: bool, train_samples: int, rounds: int, clients_per_round: int) -> int:
    """Processes per node for ``trainer.devices`` (auto: the rule in the module docstring). ``train_samples``:
    what one round trains if every client takes part (scaled by participation here)."""
    if trainer_cfg.devices != "auto":
        return int(trainer_cfg.devices)
    launched = any(v in os.environ for v in LAUNCHER_VARIABLES)
    if not on_cpu or launched or trainer_cfg.num_nodes > 1 or cores() < 2 or clients_per_round < 2:
        return 1
    if train_samples * rounds < MIN_SAMPLES_FOR_PROCESSES:
        return 1
    return min(cores(), clients_per_round, MAX_AUTO_PROCESSES)


@cache
def cpu_model() -> str:
    """The CPU this process runs on, as the OS names it (``model name`` in /proc/cpuinfo; elsewhere Python's
    ``platform`` names, or "unknown"): the same code runs at different speeds on different CPUs, so timings say
    which one they were measured on."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
