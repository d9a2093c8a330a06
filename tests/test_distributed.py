"""One run across processes equals one process; multi-process resume and stop; sweeps on launchers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pfedla.algorithms.stacked import ClientModel
from pfedla.config import CONF_DIR
from pfedla.distributed import Ranks, _Layout
from tests.conftest import REPO, compose_config

# 5 clients, 3 sampled per round: two ranks get an uneven share (2 + 1) every round.
SYNTHETIC = ["dataset=synthetic", "logger=none", "federation.num_clients=5", "federation.participation=0.6",
             "client.lr=0.05", "client.momentum=0.9", "trainer.accelerator=cpu", "trainer.progress_bar=false"]
# Same intra-op thread count in every process: then one and two processes agree bit for bit.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pfedla.run", *args], cwd=REPO, env=ONE_THREAD,
                          capture_output=True, text=True, timeout=timeout)


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]


def _assert_same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["final"] == sb["final"] and sa["best"] == sb["best"]
    for held_out in (sa.get("unseen"), sb.get("unseen")):  # clients never seen in training (pfedla/unseen.py)
        if held_out:
            held_out.pop("wall_seconds")
    assert sa.get("unseen") == sb.get("unseen")
    assert sa["bytes_down"] == sb["bytes_down"] and sa["bytes_up"] == sb["bytes_up"]
    ta, tb = _state(a), _state(b)
    assert ta.keys() == tb.keys()
    differing = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differing, f"server state differs in {differing[:5]}"


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


# --- the pieces, in one process -------------------------------------------------------------------
def test_assign_puts_the_largest_loads_on_the_least_loaded_rank():
    loads = [5, 1, 9, 3, 7, 2]
    # by hand: 9->r0, 7->r1, 5->r1 (7<9), 3->r0 (9<12), 2->r0 (12=12: lower rank), 1->r1 (14>12)
    assert Ranks(0, 2).assign(loads) == [1, 1, 0, 0, 1, 0]
    items = [10, 11, 12, 13, 14, 15]
    shares = [Ranks(r, 3).share(items, loads) for r in range(3)]
    assert sorted(sum(shares, [])) == items  # every item on exactly one rank, order kept within a share
    assert all(s == sorted(s) for s in shares)
    assert Ranks(0, 1).share(items, loads) == items


def test_packing_round_trips_every_dtype_and_pads_empty_rows():
    template = ClientModel({"w": torch.zeros(2, 3), "b": torch.zeros(3)},
                           {"mean": torch.zeros(3), "count": torch.zeros((), dtype=torch.int64)})
    results = [({"w": torch.randn(2, 3), "b": torch.randn(3)},
                {"mean": torch.randn(3), "count": torch.tensor(2**40 + c, dtype=torch.int64)}, torch.tensor(0.5 + c))
               for c in range(2)]
    layout = _Layout(template)
    packed = layout.pack(results, rows=3)
    assert set(packed) == {torch.float32, torch.int64}
    assert packed[torch.float32].shape == (3, 6 + 3 + 3 + 1) and packed[torch.int64].shape == (3, 1)
    assert packed[torch.float32][2].eq(0).all()  # padding row
    for c, (params, buffers, loss) in enumerate(results):
        p, b, lo = layout.unpack({d: t[c] for d, t in packed.items()})
        assert all(torch.equal(p[k], params[k]) for k in params) and torch.equal(lo, loss)
        assert all(torch.equal(b[k], buffers[k]) and b[k].dtype == buffers[k].dtype for k in buffers)


def test_bad_process_counts_fail_before_training():
    from pfedla.errors import ConfigError
    from pfedla.validate import validate_config

    with pytest.raises(ConfigError, match=r"trainer.devices must be auto or an integer >= 1 .*got 0"):
        validate_config(compose_config(SYNTHETIC + ["trainer.devices=0"]))
    with pytest.raises(ConfigError, match=r"trainer.devices must be auto or an integer >= 1 .*got 'many'"):
        validate_config(compose_config(SYNTHETIC + ["trainer.devices=many"]))
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp is unknown"):
        validate_config(compose_config(SYNTHETIC + ["trainer.strategy=fsdp"]))
    gpus = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"trainer.devices must be <= the {gpus} GPU\(s\) of this machine"):
        validate_config(compose_config(SYNTHETIC + ["trainer.accelerator=gpu", f"trainer.devices={max(gpus, 1) + 1}"]))


def test_slurm_launcher_follows_the_process_counts():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.nodes) == (4, 2)


def test_slurm_asks_for_one_task_when_devices_is_auto():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.trainer.devices == "auto" and cfg.hydra.launcher.tasks_per_node == 1


def test_auto_devices_is_one_process_under_a_cluster_launcher_or_off_the_cpu(monkeypatch):
    from omegaconf import OmegaConf

    import pfedla.compute as compute

    assert compute.runs_on_cpu("cpu") and not compute.runs_on_cpu("gpu") and not compute.runs_on_cpu("mps")
    monkeypatch.setattr(compute, "cores", lambda: 4)
    trainer = OmegaConf.create({"devices": "auto", "num_nodes": 1})
    assert compute.choose_processes(trainer, True, 50_000, 20, 10) == 4
    assert compute.choose_processes(trainer, False, 50_000, 20, 10) == 1  # GPU, MPS
    monkeypatch.setenv("SLURM_NTASKS", "2")  # SLURM (or torchrun) started this process as one rank
    assert compute.choose_processes(trainer, True, 50_000, 20, 10) == 1


# --- real processes (gloo) ------------------------------------------------------------------------
@pytest.mark.slow
def test_auto_devices_runs_one_process_per_core_and_equals_the_explicit_run(tmp_path):
    """A run over the 100k-sample rule with devices=auto starts K processes, and computes what devices=K does."""
    if torch.get_num_threads() < 2:
        pytest.skip("one core: devices=auto is one process here")
    env = {k: v for k, v in ONE_THREAD.items() if k != "OMP_NUM_THREADS"}  # auto counts the cores
    large = [*SYNTHETIC, "federation.participation=1.0", "dataset.samples_per_class=2000", "federation.rounds=8",
             "federation.eval_every=4", "federation.adapt_every=0"]  # 13.5k train samples x 8 rounds > 100k
    runs = {}
    for name, devices in (("auto", "auto"), ("explicit", None)):
        if devices is None:  # the count auto chose, given explicitly
            devices = json.loads((runs["auto"] / "summary.json").read_text())["processes"]
        runs[name] = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "pfedla.run", *large, f"trainer.devices={devices}",
                               f"hydra.run.dir={runs[name]}"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((runs["auto"] / "summary.json").read_text())
    assert summary["processes"] == min(torch.get_num_threads(), 5, 8) >= 2
    assert summary["config"]["trainer"]["devices"] == summary["processes"] and summary["compute"]["threads"] >= 1
    _assert_same_run(runs["auto"], runs["explicit"])



@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [["algorithm=pfedla", "model=cnn_bn"], ["algorithm=fedavg"],
                                       ["algorithm=pfedla", "federation.unseen_fraction=0.25",
                                        "federation.unseen_rounds=2"],
                                       ["algorithm=fedfomo", "algorithm.peers=2"], ["algorithm=apfl", "model=cnn_bn"],
                                       ["algorithm=fedproto", "model=cnn_bn"], ["algorithm=fedpac", "model=cnn_bn"]],
                         ids=["pfedla-bn", "fedavg", "pfedla-unseen", "fedfomo", "apfl-bn", "fedproto-bn", "fedpac-bn"])
def test_two_processes_equal_one_process(tmp_path, algorithm):
    runs = {}
    for k in (1, 2):
        runs[k] = tmp_path / f"k{k}"
        proc = _cli(*SYNTHETIC, *algorithm, "federation.rounds=3", f"trainer.devices={k}", f"hydra.run.dir={runs[k]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(runs[1], runs[2])
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["processes"] == 2 and ("unseen" in summary) == ("federation.unseen_fraction=0.25" in algorithm)
    assert _files(runs[2]) == _files(runs[1])  # rank 1 wrote nothing of its own, nothing twice


def _child_rank_pid(parent: int) -> int | None:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    for pid in children.read_text().split() if children.exists() else []:
        if b"pfedla.rank" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    return None


@pytest.mark.slow
def test_two_process_run_stopped_through_one_rank_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGTERM reaching only rank 1 stops both ranks after the same round (no hang), with a checkpoint;
    resuming on two processes then ends exactly where an uninterrupted one-process run ends."""
    args = [*SYNTHETIC, "algorithm=pfedla", "algorithm.hn_momentum=0.5", "dataset.samples_per_class=300",
            "federation.rounds=20"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    proc = _cli(*args, f"hydra.run.dir={straight}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    popen = subprocess.Popen([sys.executable, "-m", "pfedla.run", *args, "trainer.devices=2", f"hydra.run.dir={cut}"],
                             cwd=REPO, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, signalled = time.time() + 300, False
    while time.time() < deadline and popen.poll() is None:
        metrics = cut / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # header + 2 rounds
            child = _child_rank_pid(popen.pid)
            if child is not None:
                os.kill(child, signal.SIGTERM)
                signalled = True
                break
        time.sleep(0.02)
    _, stderr = popen.communicate(timeout=300)
    assert signalled, "the run finished before rank 1 could be signalled"
    assert popen.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    partial = json.loads((cut / "summary.json").read_text())
    assert partial["stopped_by_signal"] == signal.SIGTERM and 2 <= partial["rounds"] < 20

    proc = _cli(*args, "trainer.devices=2", f"resume={cut}", f"hydra.run.dir={tmp_path / 'resume_call'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(cut, straight)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_pool", "submitit_local"])
def test_launcher_sweep_completes_and_the_report_reads_both_jobs(tmp_path, launcher):
    """local_pool: joblib worker processes; submitit_local: the submitit plugin behind hydra/launcher=slurm,
    running its jobs on this machine instead of submitting them."""
    sweep = tmp_path / "sweep"
    proc = _cli("-m", f"hydra/launcher={launcher}", *SYNTHETIC, "federation.rounds=2", "algorithm=fedavg,local",
                f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/summary.json")) == ["0_fedavg", "1_local"]
    report = subprocess.run([sys.executable, "-m", "pfedla.report", str(sweep)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    scores = (sweep / "report.md").read_text().split("## Spread over clients")[0]  # the first table
    table = [line for line in scores.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["fedavg", "local"]


@pytest.mark.slow
def test_sequential_sweep_of_two_process_runs(tmp_path):
    """Jobs run one after another in one Hydra process, each launching its own ranks: the second job must
    not inherit the first one's process group or launcher environment."""
    sweep = tmp_path / "sweep"
    proc = _cli("-m", *SYNTHETIC, "federation.rounds=2", "trainer.devices=2", "algorithm=fedavg,local",
                f"hydra.sweep.dir={sweep}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["config"]["algorithm"]["name"] for s in summaries] == ["fedavg", "local"]
    assert [s["processes"] for s in summaries] == [2, 2]


def test_the_strategy_module_does_not_import_the_runner():
    # Launched ranks enter through pfedla/rank.py; pfedla/distributed.py stays a library of the runner's.
    import ast

    tree = ast.parse((REPO / "pfedla" / "distributed.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "pfedla.run" not in imported and "pfedla.distributed" in (REPO / "pfedla" / "rank.py").read_text()
