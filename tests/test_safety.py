"""Never lose a run: kill + resume is exact, bad checkpoints and configs are refused, NaN is contained."""

import json
import math
import os
import pickle
import platform
import signal
import subprocess
import sys
import time

import pytest
import torch

from pfedla.compute import cpu_model
from pfedla.errors import ConfigError
from pfedla.run import run, setup
from pfedla.sampling import sample_clients
from tests.conftest import REPO

CLI_SYNTHETIC = ["+experiment=smoke", "federation.num_clients=4", "client.lr=0.05", "trainer.progress_bar=false",
                 "trainer.accelerator=cpu", "dataset.samples_per_class=300"]  # slower rounds: time to kill


def _cli(*args):
    return [sys.executable, "-m", "pfedla.run", *CLI_SYNTHETIC, *args]


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm, sig",
    [("pfedla", signal.SIGKILL), ("fedavg", signal.SIGKILL), ("pfedla", signal.SIGTERM)],
    ids=["pfedla-kill", "fedavg-kill", "pfedla-term"],
)
def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path, algorithm, sig):
    rounds = "federation.rounds=25"
    straight = tmp_path / "straight"
    subprocess.run(_cli(f"algorithm={algorithm}", rounds, f"hydra.run.dir={straight}"), cwd=REPO, check=True,
                   capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(f"algorithm={algorithm}", rounds, f"hydra.run.dir={killed}"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = killed / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:  # header + 3 rounds
            os.kill(proc.pid, sig)
            break
        time.sleep(0.02)
    proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (killed / "summary.json").exists()
    else:  # SIGTERM: finishes the round, checkpoints, writes a partial summary, exits 128 + 15
        assert proc.returncode == 128 + signal.SIGTERM
        partial = json.loads((killed / "summary.json").read_text())
        assert partial["stopped_by_signal"] == signal.SIGTERM and partial["rounds"] < 25

    resumed = subprocess.run(_cli(f"algorithm={algorithm}", rounds, f"resume={killed}",
                                  f"hydra.run.dir={tmp_path / 'resume_call'}"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (killed, straight))
    assert a["final"] == b["final"] and a["best"] == b["best"]
    assert (killed / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()  # no dup/missing rows
    sa = torch.load(killed / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(straight / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def finished_run(synthetic_cfg, tmp_path):
    run(synthetic_cfg(), tmp_path / "run")
    return tmp_path / "run"


def test_truncated_checkpoint_is_refused_and_nothing_changes(synthetic_cfg, finished_run):
    ckpt = finished_run / "checkpoints/last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    before = _snapshot(finished_run)
    with pytest.raises(ConfigError, match=r"truncated or not a PyTorch checkpoint"):
        run(synthetic_cfg("federation.rounds=3", f"resume={finished_run}"), finished_run)
    assert _snapshot(finished_run) == before


class _Payload:
    def __reduce__(self):  # would run code on unpickling
        return (os.system, ("touch /tmp/pfedla-pwned",))


def test_checkpoint_with_code_is_refused_without_running_it(synthetic_cfg, finished_run, tmp_path):
    ckpt = finished_run / "checkpoints/last.ckpt"
    payload = torch.load(ckpt, weights_only=True)
    payload["evil"] = _Payload()
    with open(ckpt, "wb") as f:
        torch.save(payload, f, pickle_module=pickle)
    before = _snapshot(finished_run)
    with pytest.raises(ConfigError, match="holds objects other than tensors"):
        run(synthetic_cfg("federation.rounds=3", f"resume={finished_run}"), finished_run)
    assert not os.path.exists("/tmp/pfedla-pwned")
    assert _snapshot(finished_run) == before


def test_resume_with_a_changed_federation_is_refused_naming_the_keys(synthetic_cfg, finished_run):
    before = _snapshot(finished_run)
    with pytest.raises(ConfigError) as err:
        run(synthetic_cfg("federation.num_clients=5", "seed=3", f"resume={finished_run}"), finished_run)
    assert "federation.num_clients: 4 -> 5" in str(err.value) and "seed: 0 -> 3" in str(err.value)
    assert _snapshot(finished_run) == before
    # harmless changes are allowed
    summary = run(synthetic_cfg("federation.rounds=3", "federation.eval_every=2", f"resume={finished_run}"),
                  finished_run)
    assert summary["rounds"] == 3


def test_a_resumed_runs_wall_time_and_timings_cover_every_round_over_its_processes(synthetic_cfg, finished_run):
    """A checkpoint carries the run's clock and per-round timings: the resumed summary's wall_seconds is the
    checkpoint's seconds plus this process's, over all rounds. A checkpoint from before that clock leaves only
    this process's seconds, says which rounds they cover, and the report scales them to all rounds, marked."""
    from pfedla.timing import run_wall

    ckpt = finished_run / "checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    first = json.loads((finished_run / "summary.json").read_text())  # the run that wrote that checkpoint
    assert 0 < saved["pfedla_seconds"] <= first["wall_seconds"]
    assert [t["round"] for t in saved["pfedla_timings"]] == [1, 2]
    summary = run(synthetic_cfg("federation.rounds=3", f"resume={finished_run}"), finished_run)
    assert summary["wall_seconds"] == saved["pfedla_seconds"] + summary["wall_seconds_process"]
    assert summary["wall_seconds_rounds"] == 3 and summary["timing"]["rounds_timed"] == 3
    assert run_wall(summary) == (summary["wall_seconds"], False)

    older = {k: v for k, v in torch.load(ckpt, weights_only=True).items()
             if k not in ("pfedla_seconds", "pfedla_timings")}  # as written before the clock
    torch.save(older, ckpt)
    summary = run(synthetic_cfg("federation.rounds=4", f"resume={finished_run}"), finished_run)
    assert summary["wall_seconds"] == summary["wall_seconds_process"] and summary["wall_seconds_rounds"] == 1
    assert summary["timing"]["rounds_timed"] == 1
    assert run_wall(summary) == (4 * summary["wall_seconds"], True)
    nothing_timed = run_wall({**summary, "wall_seconds_rounds": 0})
    assert math.isnan(nothing_timed[0]) and nothing_timed[1]


def test_a_rounds_cpu_seconds_leave_out_the_time_it_waited(synthetic_cfg, tmp_path, monkeypatch):
    """Each round records the process's CPU seconds beside its wall phases. A round that waits 0.3 s (a sleep in
    its server phase, as a paused or crowded process waits) takes 0.3 s more wall time, and no more CPU time. One
    thread, so that CPU seconds cannot outgrow wall seconds by computing on several cores at once."""
    import pfedla.server
    import pfedla.timing

    sample = pfedla.server.sample_clients

    def sample_slowly(*args):
        time.sleep(0.3)
        return sample(*args)

    monkeypatch.setattr(pfedla.server, "sample_clients", sample_slowly)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timing = run(synthetic_cfg("federation.rounds=3"), tmp_path / "run")["timing"]
    finally:
        torch.set_num_threads(threads)
    wall = sum(timing[f"{p}_s_total"] for p in pfedla.timing.PHASES)
    assert timing["cpu_rounds_timed"] == timing["rounds_timed"] == 3
    assert timing["cpu_models"] == {cpu_model(): 3}  # every round names the CPU it ran on
    assert timing["server_s_total"] >= 3 * 0.3
    assert 0 < timing["cpu_s_total"] < wall - 3 * 0.25


def test_timing_summary_counts_cpu_seconds_over_the_rounds_that_recorded_them():
    """A run resumed from a checkpoint written before rounds recorded CPU seconds: rounds 1-2 have none; rounds 3-5
    name their CPU, and round 5 ran on another machine (a resume there)."""
    from pfedla.timing import PHASES, timing_summary

    phases = {p: 0.0 for p in PHASES}
    timings = [{"round": 1, **phases}, {"round": 2, **phases}, {"round": 3, **phases, "cpu": 0.5},
               {"round": 4, **phases, "cpu": 0.75, "cpu_model": "Xeon"},
               {"round": 5, **phases, "cpu": 1.0, "cpu_model": "EPYC"}]
    timings[2]["cpu_model"] = "Xeon"
    summary = timing_summary(timings)
    assert (summary["rounds_timed"], summary["cpu_rounds_timed"], summary["cpu_s_total"]) == (5, 3, 2.25)
    assert summary["cpu_models"] == {"EPYC": 1, "Xeon": 2}
    assert timing_summary([])["cpu_rounds_timed"] == 0 and timing_summary([])["cpu_models"] == {}


def test_the_cpu_is_named_as_the_os_names_it(tmp_path, monkeypatch):
    import pfedla.compute

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU 9000 @ 1.00GHz\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000 @ 1.00GHz\n")
    monkeypatch.setattr(pfedla.compute, "CPUINFO", info)
    pfedla.compute.cpu_model.cache_clear()
    try:
        assert pfedla.compute.cpu_model() == "Test CPU 9000 @ 1.00GHz"
        pfedla.compute.cpu_model.cache_clear()
        monkeypatch.setattr(pfedla.compute, "CPUINFO", tmp_path / "none")  # no /proc: Python's own name for it
        assert pfedla.compute.cpu_model() == (platform.processor() or platform.machine() or "unknown")
    finally:
        pfedla.compute.cpu_model.cache_clear()


def test_checkpoint_writes_are_atomic(synthetic_cfg, finished_run, monkeypatch):
    """A crash in the middle of writing leaves the previous checkpoint intact."""
    import pfedla.outputs as outputs

    ckpt = finished_run / "checkpoints/last.ckpt"
    good = ckpt.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(outputs.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        run(synthetic_cfg("federation.rounds=3", f"resume={finished_run}"), finished_run)
    assert ckpt.read_bytes() == good
    assert not list(ckpt.parent.glob(".*.tmp"))


def test_a_nan_update_is_rejected_and_server_state_stays_finite(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg("federation.rounds=2")
    module = setup(cfg)
    real = module.engine.train_one

    def poisoned(model, params, buffers, x, y, **kw):
        params, buffers, loss = real(model, params, buffers, x, y, **kw)
        if torch.equal(x, module.data.train_x[1]) and module.round == 1:
            params = {n: torch.full_like(t, float("nan")) for n, t in params.items()}
        return params, buffers, loss

    module.engine.train_one = poisoned
    rounds, receive_round = [], module.algorithm.receive_round  # the server hands each round over in one call

    def recording(reports):
        rounds.append([r.client for r in reports])
        assert all(r.num_samples == module.data.train_sizes[r.client] for r in reports)
        receive_round(reports)

    module.algorithm.receive_round = recording
    summary = run(cfg, tmp_path, module=module)
    assert summary["rejected_updates"] == [[1, 1]]
    sampled = [sample_clients(cfg.seed, t, 4, cfg.federation.participation) for t in (1, 2)]
    assert rounds == [[i for i in sampled[0] if i != 1], sampled[1]] and 1 in sampled[0]
    state = module.algorithm.state_dict()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    # A model with NaN weights predicts one class (~10% here); after adaptation the models learn well beyond it.
    assert summary["final_adapted"]["test/adapted_acc_mean"] > 0.2

    module = setup(synthetic_cfg("federation.rounds=2", "client.on_nonfinite=fail"))
    module.engine.train_one = poisoned
    with pytest.raises(FloatingPointError, match="client 1 returned a non-finite update"):
        run(module.cfg, tmp_path / "fail", module=module)


BAD_INPUTS = [
    ("partition.alpha=-1", "partition.alpha must be > 0 (got -1.0); try partition.alpha=0.5"),
    ("partition=pathological partition.classes_per_client=11", "try partition.classes_per_client=2"),
    ("federation.num_clients=500", "federation.num_clients=500 x partition.min_samples=10 needs 5000"),
    ("federation.participation=0", "federation.participation must be in (0, 1] (got 0.0)"),
    ("federation.participation=1.5", "federation.participation must be in (0, 1] (got 1.5)"),
    ("federation.rounds=0", "federation.rounds must be >= 1 (got 0); try federation.rounds=30"),
    ("client.epochs=0", "client.epochs must be >= 1 (got 0); try client.epochs=1"),
    ("client.batch_size=-4", "client.batch_size must be >= 1 (got -4); try client.batch_size=32"),
    ("client.lr=0", "client.lr must be > 0 (got 0.0); try client.lr=0.01"),
    ("algorithm.hn_lr=-1", "algorithm.hn_lr must be > 0 (got -1.0); try algorithm.hn_lr=0.005"),
    ("algorithm=heurpfedla algorithm.k=5", "algorithm.k=5 must be in [0, 5) for 5 layers"),
    ("algorithm=fedbn", "algorithm=fedbn needs a model with BatchNorm, but model=CNN has none; try model=cnn_bn"),
    ("dataset.fraction=1.5", "dataset.fraction must be in (0, 1] (got 1.5); try dataset.fraction=0.1"),
    ("partition.test_fraction=1", "partition.test_fraction must be in (0, 1) (got 1.0)"),
]


@pytest.mark.parametrize("override, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_clear_error_before_training(synthetic_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        run(synthetic_cfg(*override.split()), tmp_path / "run")
    assert message in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_output_dir_is_a_clear_error(synthetic_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match=r"output dir .* is not writable .*hydra.run.dir"):
        run(synthetic_cfg(), blocker / "run")


@pytest.mark.parametrize("group, bad", [("dataset", "imagenet"), ("model", "resnet"), ("algorithm", "fedfancy")])
def test_unknown_group_option_lists_the_valid_names(tmp_path, group, bad):
    proc = subprocess.run(_cli(f"{group}={bad}", f"hydra.run.dir={tmp_path / 'run'}"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"Could not find '{group}/{bad}'" in proc.stderr and "Available options" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_refused_cli_run_leaves_no_run_dir(tmp_path):
    proc = subprocess.run(_cli("partition.alpha=0", f"hydra.run.dir={tmp_path / 'run'}"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "partition.alpha must be > 0" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_one_failing_job_does_not_stop_a_sweep(tmp_path):
    cmd = [sys.executable, "-m", "pfedla.run", "-m", *CLI_SYNTHETIC, "federation.rounds=1", "partition.alpha=0.5,-1",
           f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "0_pfedla" / "summary.json").is_file()
    assert "partition.alpha must be > 0" in (tmp_path / "1_pfedla" / "error.txt").read_text()
