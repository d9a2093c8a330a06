"""Per-FedAvg (Fallah et al., "Personalized Federated Learning with Theoretical Guarantees: A
Model-Agnostic Meta-Learning Approach", NeurIPS 2020).

FedAvg on the MAML objective F(w) = f(w - alpha grad f(w)). Every local step splits its batch in two
halves D and D' (the paper draws independent batches): the inner step w' = w - alpha grad f(w; D), then
w <- w - client.lr * g with
  ``variant=fo``: g = grad f(w'; D') (first-order MAML);
  ``variant=hf``: g = (I - alpha H) grad f(w'; D'), the Hessian-vector product H u (H at w on D, u =
  grad f(w'; D')) by the paper's finite difference (grad f(w + delta u; D) - grad f(w - delta u; D)) / 2 delta.
Each step therefore sees batch_size/2 samples per half (the paper's H is on a third batch D''; here on D).
``train/loss`` is f(w'; D'). The server averages as FedAvg. The model is meant to be personalized by one
step: score (a) is the global model, score (b) the global model after one SGD step of lr alpha on one batch
of the client's train split (``adapt_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from omegaconf import MISSING
from torch.func import grad

from pfedla.algorithms.base import LocalPlan, Objective, Options, options
from pfedla.algorithms.fedavg import FedAvg
from pfedla.errors import check, choice


@options("schema_perfedavg")
@dataclass
class PerFedAvgOptions(Options):
    alpha: float = MISSING  # the inner (adaptation) step size
    variant: str = MISSING  # fo | hf
    delta: float = MISSING  # hf: the finite-difference step of the Hessian-vector product


VARIANTS = ("fo", "hf")


class PerFedAvg(FedAvg):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.alpha > 0, "algorithm.alpha", cfg.alpha, "must be > 0 (the inner step size)", "0.01")
        choice("algorithm.variant", cfg.variant, VARIANTS)
        check(cfg.delta > 0, "algorithm.delta", cfg.delta, "must be > 0 (hf's finite-difference step)", "0.001")

    def __init__(self, model, num_clients: int, cfg):
        super().__init__(model, num_clients, cfg)
        self.alpha, self.variant, self.delta = float(cfg.alpha), cfg.variant, float(cfg.delta)

    def local_plan(self, epochs: int) -> LocalPlan:
        alpha, delta, hessian_free = self.alpha, self.delta, self.variant == "hf"

        def meta_loss(params, received, buffers, x, y, forward):
            half = max(len(y) // 2, 1)
            (x1, y1), (x2, y2) = (x[:half], y[:half]), ((x[half:], y[half:]) if len(y) > 1 else (x, y))

            def f(p, b, xs, ys):
                logits, new_b = forward(p, b, xs)
                return F.cross_entropy(logits, ys), new_b

            g1, buffers1 = grad(f, has_aux=True)(params, buffers, x1, y1)
            fast = {n: params[n] - alpha * g1[n].detach() for n in params}
            value, buffers2 = f(fast, buffers1, x2, y2)
            if not hessian_free:
                return value, buffers2  # its gradient at w is grad f(w'; D') (w' = w + a constant)
            u = {n: t.detach() for n, t in grad(lambda p: f(p, buffers1, x2, y2)[0])(fast).items()}
            plus = grad(lambda p: f(p, buffers, x1, y1)[0])({n: params[n].detach() + delta * u[n] for n in params})
            minus = grad(lambda p: f(p, buffers, x1, y1)[0])({n: params[n].detach() - delta * u[n] for n in params})
            direction = {n: u[n] - alpha * (plus[n] - minus[n]) / (2 * delta) for n in params}
            # a loss whose value is f(w'; D') and whose gradient is ``direction``
            linear = sum((params[n] * direction[n].detach()).sum() for n in params)
            return linear - linear.detach() + value.detach(), buffers2

        return LocalPlan.epochs(epochs, steps=(Objective(meta_loss, frozenset(self.param_names)),))

    def adapt_plan(self, epochs: int) -> LocalPlan:
        """One SGD step of lr alpha on one batch: the personalization Per-FedAvg is trained for."""
        return LocalPlan.epochs(1, lr=self.alpha, max_batches=1)
