import pytest
import torch
from hydra import compose, initialize_config_dir

from pfedla.config import CONF_DIR
from pfedla.errors import ConfigError
from pfedla.models import layer_groups
from pfedla.models.build import build_model
from pfedla.models.contract import body_names, head_module, head_names
from pfedla.run import run
from tests.helpers import tiny_model


def test_module_grouping_pairs_weight_and_bias_and_never_includes_bn_statistics():
    groups = layer_groups(tiny_model(batch_norm=True), "module")
    assert list(groups) == ["conv1", "bn1", "conv2", "bn2", "fc1", "fc2", "fc3"]
    assert groups["bn1"] == ["bn1.weight", "bn1.bias"]
    assert not any("running" in n or "num_batches" in n for names in groups.values() for n in names)


def test_tensor_and_block_groupings():
    model = tiny_model()
    assert layer_groups(model, "tensor") == {n: [n] for n, _ in model.named_parameters()}
    assert len(layer_groups(model, "tensor")) == 10
    assert layer_groups(model, "block") == layer_groups(model, "module")  # flat model: blocks are modules
    from collections import OrderedDict

    from torch import nn

    nested = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
                                       head=nn.Linear(2, 3)))
    assert layer_groups(nested, "module") == {
        "features.0": ["features.0.weight", "features.0.bias"], "features.1": ["features.1.weight", "features.1.bias"],
        "head": ["head.weight", "head.bias"]}
    assert layer_groups(nested, "block") == {
        "features": ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"],
        "head": ["head.weight", "head.bias"]}
    with pytest.raises(ConfigError, match="algorithm.grouping"):
        layer_groups(model, "neuron")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 16, 16)])
def test_cnn_accepts_paper_input_shapes(shape):
    from pfedla.models.cnn import CNN

    assert CNN(shape, 10)(torch.zeros(2, *shape)).shape == (2, 10)


def test_batchnorm_statistics_stay_each_clients_own_under_pfedla(synthetic_cfg, tmp_path):
    from pfedla.run import setup

    cfg = synthetic_cfg("model=cnn_bn", "federation.rounds=2", "federation.participation=1.0")
    module = setup(cfg)
    algo, train = module.algorithm, module.engine.train
    checked = []

    def train_spying(models, *args, **kwargs):  # every client trains from its own statistics, never a mix
        own = [algo.client_buffers.row(i) for i in range(algo.num_clients)]
        assert len(models) == len(own)
        for (_, buffers), mine in zip(models, own):
            assert buffers.keys() == mine.keys() and all(torch.equal(buffers[n], mine[n]) for n in mine)
        checked.append(not torch.equal(own[0]["bn1.running_mean"], own[1]["bn1.running_mean"]))
        return train(models, *args, **kwargs)

    module.engine.train = train_spying
    run(cfg, tmp_path, module=module)
    assert any(checked), "no round started from statistics that differ between clients"
    mean = module.algorithm.client_buffers["bn1.running_mean"]
    assert not torch.allclose(mean[0], mean[1]), "running stats were mixed or never updated"
    assert int(module.algorithm.client_buffers["bn1.num_batches_tracked"][0]) > 0
    assert "bn1" in module.algorithm.layer_names  # BN affine parameters are mixed like any layer


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_in_conf_meets_the_body_head_contract(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}"])
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    x = torch.randn(4, 1, 28, 28)
    head = head_module(model)
    torch.testing.assert_close(head(model(x, features=True)), model(x))  # two call paths: float tolerance
    names = [n for n, _ in model.named_parameters()]
    assert head_names(model) == [n for n in names if n.startswith(model.head_name + ".")] != []
    assert sorted(body_names(model) + head_names(model)) == sorted(names)


def test_a_model_without_a_head_is_refused_by_name():
    with pytest.raises(ConfigError, match="head_name"):
        head_names(torch.nn.Sequential(torch.nn.Linear(3, 2)))
