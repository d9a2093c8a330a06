"""Every option of every config group composes, validates, and (where it builds objects) builds them."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from pfedla.config import CONF_DIR
from pfedla.datasets.federated import build_federated_data
from pfedla.datasets.partition import LabelSkew, build_label_skew
from pfedla.datasets.sources import PooledData, Source, build_source
from pfedla.errors import ConfigError
from pfedla.run import setup
from pfedla.validate import validate_config
from tests.conftest import SYNTHETIC, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("algorithm", options("algorithm"))
def test_every_algorithm_builds_and_runs_one_round(algorithm, tmp_path):
    from pfedla.run import run

    summary = run(compose_config(SYNTHETIC + [f"algorithm={algorithm}", "model=cnn_bn", "federation.rounds=1",
                                              "federation.adapt_every=0"]), tmp_path)
    assert summary["final"]["round"] == 1 and summary["config"]["algorithm"]["name"] == algorithm


@pytest.mark.parametrize("group", ["model", "partition"])
def test_every_model_and_partition_builds(group):
    for option in options(group):
        module = setup(compose_config(SYNTHETIC + [f"{group}={option}"]))
        assert module.cfg[group].name == option


@pytest.mark.parametrize("group, build, base", [("dataset", build_source, Source),
                                                ("partition", build_label_skew, LabelSkew)])
def test_every_dataset_and_partition_is_built_from_its_target(group, build, base):
    for option in options(group):
        cfg = compose_config(SYNTHETIC + [f"{group}={option}"])
        built = build(cfg[group])  # no data loaded
        assert isinstance(built, base) and f"{type(built).__module__}.{type(built).__name__}" == cfg[group]._target_


@pytest.mark.parametrize("group, prefix", [("dataset", ""), ("logger", ""), ("experiment", "+")])
def test_every_dataset_logger_and_experiment_composes_and_validates(group, prefix):
    for option in options(group):
        cfg = compose_config([f"{prefix}{group}={option}"])
        validate_config(cfg)  # no data loaded: these may name datasets this machine does not hold


@pytest.mark.parametrize("partition", options("partition"))
def test_every_experiment_and_search_takes_every_partition(partition):
    """No experiment or search sets a key of one partition only (it would be refused under the others)."""
    for option in options("experiment"):
        validate_config(compose_config([f"+experiment={option}", f"partition={partition}"]))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for option in set(options("hparams_search")) - {"proxy"}:
            validate_config(compose(config_name="config", overrides=[f"hparams_search={option}",
                                                                     f"partition={partition}"]))


def test_every_search_composes_with_its_sweeper():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for option in options("hparams_search"):
            if option == "proxy":
                continue  # the shared proxy, pulled in by every search
            cfg = compose(config_name="config", overrides=[f"hparams_search={option}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.study_name == option and cfg.hydra.sweeper.params, option
            validate_config(cfg)


def test_a_checkpoint_from_before_target_resumes_and_a_changed_target_is_refused():
    from pfedla.compatibility import check_resume_compatible, with_added_keys

    saved = {"algorithm": {"name": "fedprox", "mu": 0.01}, "model": {"name": "cnn"},  # from before _target_
             "dataset": {"name": "fmnist"}, "partition": {"name": "dirichlet", "alpha": 0.3}}
    today = with_added_keys({  # today's keys the saved run predates, at the values it ran with
        "algorithm": {"_target_": "pfedla.algorithms.fedavg.FedProx", "name": "fedprox", "mu": 0.01},
        "model": {"_target_": "pfedla.models.cnn.CNN", "name": "cnn"},
        "dataset": {"_target_": "pfedla.datasets.sources.FashionMNIST", "name": "fmnist"},
        "partition": {"_target_": "pfedla.datasets.partition.Dirichlet", "name": "dirichlet", "alpha": 0.3}})
    check_resume_compatible(saved, today)
    for group in ("dataset", "partition"):
        with pytest.raises(ConfigError, match=f"{group}._target_"):
            check_resume_compatible(today, {**today, group: {**today[group], "_target_": "tests.elsewhere.X"}})
    with pytest.raises(ConfigError, match="algorithm.name: 'fedprox' -> 'fedavg'"):
        check_resume_compatible(saved, {**today, "algorithm": {**today["algorithm"], "name": "fedavg"}})
    with pytest.raises(ConfigError, match="algorithm._target_"):
        moved = {**today["algorithm"], "_target_": "pfedla.algorithms.x.Y"}
        check_resume_compatible(today, {**today, "algorithm": moved})


def test_models_are_built_from_target_with_the_datasets_shape_and_errors_stay_clear():
    import torch

    from pfedla.errors import ConfigError
    from pfedla.models import build_model
    from pfedla.models.cnn import CNN
    from pfedla.validate import validate_config

    cfg = compose_config(SYNTHETIC + ["model=cnn_bn"])
    torch.manual_seed(3)
    built = build_model(cfg.model, (1, 16, 16), 5)
    torch.manual_seed(3)
    direct = CNN((1, 16, 16), 5, channels=(16, 32), hidden=(120, 84), batch_norm=True)
    assert type(built) is CNN and built.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    with pytest.raises(ConfigError, match=r"^model: input 8x8 is too small"):  # not wrapped by hydra
        build_model(cfg.model, (1, 8, 8), 5)
    with pytest.raises(ConfigError, match=r"model._target_='pfedla.models.nothing.X' \(model=cnn_bn\)"):
        validate_config(compose_config(SYNTHETIC + ["model=cnn_bn", "model._target_=pfedla.models.nothing.X"]))


@dataclass
class Stripes(Source):
    """A dataset defined here, not in pfedla: image i is constant i / n, label i % classes."""

    name: str
    classes: int = 3
    size: int = 60

    def load(self, seed: int) -> PooledData:
        images = (torch.arange(self.size, dtype=torch.float32) / self.size).view(-1, 1, 1, 1).expand(-1, 1, 16, 16)
        return PooledData(images.clone(), torch.arange(self.size) % self.classes, self.classes)


@dataclass(frozen=True)
class RoundRobin(LabelSkew):
    """Sample j goes to client (j + offset) % N: the partition a test can predict."""

    offset: int = 0

    def __call__(self, labels, num_clients, rng, weights):
        return [np.flatnonzero((np.arange(len(labels)) + self.offset) % num_clients == i) for i in range(num_clients)]


def test_a_dataset_and_a_partition_defined_outside_pfedla_are_built_from_target_alone():
    cfg = compose_config(SYNTHETIC + ["dataset._target_=tests.test_config_groups.Stripes", "dataset.name=stripes",
                                      "dataset.num_classes=null", "dataset.samples_per_class=null",
                                      "dataset.image_size=null", "dataset.noise=null",
                                      "partition._target_=tests.test_config_groups.RoundRobin", "partition.alpha=null",
                                      "partition.max_tries=null", "partition.min_samples=3"])
    data = build_federated_data(cfg)
    assert data.num_classes == 3 and data.num_clients == 4
    for client in range(4):  # every image of client i is one of i/60, (i+4)/60, ...: the round-robin share
        pool = torch.cat([data.train_x[client], data.val_x[client], data.test_x[client]])[:, 0, 0, 0] * 60
        assert sorted(pool.round().long().tolist()) == list(range(client, 60, 4))


def test_an_option_the_chosen_class_does_not_take_is_refused_and_a_bad_target_named():
    with pytest.raises(ConfigError, match=r"partition.alpha=0.3 is not an option of partition=pathological "
                                          r"\(Pathological takes classes_per_client\)"):
        build_label_skew(compose_config(SYNTHETIC + ["partition=pathological", "partition.alpha=0.3"]).partition)
    with pytest.raises(ConfigError, match=r"dataset._target_='pfedla.nowhere.X' \(dataset=synthetic\) does not name "
                                          r"a subclass of Source; give its dotted path"):
        validate_config(compose_config(SYNTHETIC + ["dataset._target_=pfedla.nowhere.X"]))
    with pytest.raises(ConfigError, match=r"^partition.alpha must be > 0 \(got 0.0\)"):  # the class checks its own
        build_label_skew(compose_config(SYNTHETIC + ["partition.alpha=0"]).partition)
    with pytest.raises(ConfigError, match=r"^partition.alpha must be set for partition=dirichlet \(Dirichlet\)"):
        build_label_skew(compose_config(SYNTHETIC + ["partition.alpha=null"]).partition)


class Linear(torch.nn.Module):
    """A model defined here that takes its options as **kwargs: it gets every key of the model node but name."""

    def __init__(self, input_shape, num_classes, **options):
        super().__init__()
        self.options = options
        self.fc = torch.nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_model_that_takes_keyword_options_gets_every_key_of_its_node():
    from pfedla.models import build_model

    cfg = compose_config(SYNTHETIC + ["model._target_=tests.test_config_groups.Linear"])
    built = build_model(cfg.model, (1, 4, 4), 3)
    assert built.options == {"channels": list(cfg.model.channels), "hidden": list(cfg.model.hidden),
                             "batch_norm": cfg.model.batch_norm} and built.fc.in_features == 16
