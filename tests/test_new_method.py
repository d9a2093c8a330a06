"""Adding a method touches no engine file: a method defined in this file, with a loss of its own, runs from
``algorithm._target_`` alone, on both engines, and trains by that loss."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from pfedla.algorithms.base import LocalPlan, Objective
from pfedla.algorithms.fedavg import FedAvg
from tests.helpers import assert_same_personalized_models, trained_module


def focal_loss(gamma: float):
    """The focal loss (Lin et al., ICCV 2017): mean over the batch of -(1 - p_y)^gamma log p_y; gamma 0 is the
    cross-entropy."""

    def loss(params, received, buffers, x, y, forward):
        logits, new_buffers = forward(params, buffers, x)
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        return -((1 - log_p.exp()) ** gamma * log_p).mean(), new_buffers

    return loss


class FocalAvg(FedAvg):
    """FedAvg whose clients train by the focal loss: the method is this class and nothing else."""

    gamma = 2.0

    def local_plan(self, epochs: int) -> LocalPlan:
        return LocalPlan.epochs(epochs, steps=(Objective(focal_loss(self.gamma)),))


class FocalZero(FocalAvg):
    gamma = 0.0


BN_RUN = ("model=cnn_bn", "federation.adapt_every=2")


def _run(synthetic_cfg, run_dir, target: str, engine: str):
    return trained_module(synthetic_cfg, run_dir, "algorithm=fedavg",
                          f"algorithm._target_=tests.test_new_method.{target}", "algorithm.name=focal",
                          f"client.engine={engine}", *BN_RUN)


@pytest.mark.slow
def test_a_method_defined_in_a_test_file_runs_on_both_engines_by_its_own_loss(synthetic_cfg, tmp_path):
    loop = _run(synthetic_cfg, tmp_path / "loop", "FocalAvg", "loop")
    vmap = _run(synthetic_cfg, tmp_path / "vmap", "FocalAvg", "vmap")
    assert type(loop.algorithm) is FocalAvg and loop.engine.name == "loop" and vmap.engine.name == "vmap"
    assert_same_personalized_models(loop, vmap)  # the two engines run the same plan
    assert loop.history[-1]["test/adapted_acc_mean"] > 0.5  # it learns (10 synthetic classes)

    # gamma 0 is the cross-entropy: the same models as FedAvg; gamma 2 trains to other ones
    zero = _run(synthetic_cfg, tmp_path / "zero", "FocalZero", "loop")
    fedavg = trained_module(synthetic_cfg, tmp_path / "fedavg", "algorithm=fedavg", "client.engine=loop", *BN_RUN)
    assert_same_personalized_models(zero, fedavg)
    with pytest.raises(AssertionError):
        assert_same_personalized_models(loop, fedavg, rtol=1e-2, atol=1e-3)
