"""How a client's local work runs (``client.engine``), chosen once per run as an object.

Both engines take a round's clients as (params, buffers), their data and their batch-order generators, run
a ``LocalPlan``'s objectives on the same batches with the same SGD step, and score models::

    engine.train(models, data, generators, **plan.training_args(client_cfg)) -> [(params', buffers', loss)]
    engine.predict(models, xs) -> [class predictions]

- batches.py     which batches a client draws (its seeded stream, the schedule both engines step through)
- objectives.py  an Objective (a loss over named tensors), the plain cross-entropy, the one SGD step
- loop.py        the reference: one client after another, one batch loop
- vmap.py        a round's clients together (torch.func.vmap), one batch loop
- evaluation.py  one model's predictions, loss and body features (prepare/finish steps read these too)
"""

from __future__ import annotations

from torch import nn

from pfedla.compute import REFERENCE, Compute
from pfedla.engines.loop import LoopEngine
from pfedla.engines.vmap import VmapEngine

ENGINES = {"loop": LoopEngine, "vmap": VmapEngine}
Engine = LoopEngine | VmapEngine


def make_engine(name: str, model: nn.Module, compute: Compute = REFERENCE, eval_batch_size: int = 256) -> Engine:
    """The engine ``client.engine`` names, for ``model`` (an architecture: weights come with each call)."""
    return ENGINES[name](model, compute, eval_batch_size)
