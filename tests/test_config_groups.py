"""Every option of every config group composes, validates, and (where it builds objects) builds them."""

import pytest
from hydra import compose, initialize_config_dir

from pfedla.run import CONF_DIR, setup
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


@pytest.mark.parametrize("group, prefix", [("dataset", ""), ("logger", ""), ("experiment", "+")])
def test_every_dataset_logger_and_experiment_composes_and_validates(group, prefix):
    for option in options(group):
        cfg = compose_config([f"{prefix}{group}={option}"])
        validate_config(cfg)  # no data loaded: these may name datasets this machine does not hold


def test_every_search_composes_with_its_sweeper():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for option in options("hparams_search"):
            if option == "proxy":
                continue  # the shared proxy, pulled in by every search
            cfg = compose(config_name="config", overrides=[f"hparams_search={option}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.study_name == option and cfg.hydra.sweeper.params, option
            validate_config(cfg)


def test_a_checkpoint_from_before_target_resumes_and_a_changed_target_is_refused():
    from pfedla.checkpointing import check_resume_compatible
    from pfedla.errors import ConfigError

    saved = {"algorithm": {"name": "fedprox", "mu": 0.01}, "model": {"name": "cnn"}}  # from before _target_
    today = {"algorithm": {"_target_": "pfedla.algorithms.fedavg.FedProx", "name": "fedprox", "mu": 0.01},
             "model": {"_target_": "pfedla.models.cnn.CNN", "name": "cnn"}}
    check_resume_compatible(saved, today)
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
