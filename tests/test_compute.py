"""The CPU fast path: channels_last convolutions and batched evaluation compute what the NCHW reference computes."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pfedla.compute import Compute, choose_compute
from pfedla.engines import ENGINES
from pfedla.engines.batches import client_generator
from pfedla.engines.evaluation import predict
from pfedla.engines.loop import train_client
from pfedla.errors import ConfigError
from pfedla.run import run, setup
from tests.helpers import assert_states_close, tiny_model

CL, NCHW = torch.channels_last, torch.contiguous_format
CPU = torch.device("cpu")


def is_channels_last(t: torch.Tensor) -> bool:
    """Canonical NHWC strides: channels innermost (also for one channel, where ``is_contiguous`` says both)."""
    n, c, h, w = t.shape
    return t.stride() == (h * w * c, 1, w * c, c)


def choose(setting, model, device, engine, precision="32"):
    return choose_compute(OmegaConf.create({"memory_format": setting, "precision": precision}), model, device,
                          ENGINES[engine].channels_last)


def test_auto_picks_channels_last_only_for_conv_models_on_cpu_with_the_loop_engine():
    conv, mlp = tiny_model(), nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert choose("auto", conv, CPU, "loop").memory_format == CL
    assert choose("auto", conv, CPU, "vmap").memory_format == NCHW
    assert choose("auto", mlp, CPU, "loop").memory_format == NCHW
    assert choose("auto", conv, torch.device("cuda"), "loop").memory_format == NCHW
    assert choose("contiguous", conv, CPU, "loop").memory_format == NCHW
    assert choose("channels_last", conv, CPU, "loop").memory_format == CL
    assert choose("auto", conv, CPU, "loop").autocast_dtype is None
    assert choose("auto", conv, CPU, "loop", "bf16").autocast_dtype == torch.bfloat16


def test_one_channel_weights_get_real_channels_last_strides():
    # For C=1 both layouts are "contiguous", so .contiguous(channels_last) would keep NCHW strides and
    # the convolution would stay on the NCHW path.
    w = torch.randn(16, 1, 5, 5)
    assert not is_channels_last(w.contiguous(memory_format=CL))
    assert is_channels_last(Compute(CL).cloned({"w": w})["w"]) and is_channels_last(Compute(CL).laid_out(w))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_channels_last_training_and_prediction_equal_the_nchw_reference(batch_norm):
    model = tiny_model(batch_norm=batch_norm)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 1, 16, 16, generator=gen), torch.randint(0, 3, (37,), generator=gen)
    params = {n: p.detach() + 0.05 for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    # A well-conditioned run: at lr 0.1 with BatchNorm, 37 noise images train so unstably that a rounding
    # difference between two float32 kernels grows to 1e-2 in 2 epochs (seen on an AVX-512 AMD EPYC, where the
    # NCHW run, not the channels_last one, strayed from the float64 run). Here both stay within 1e-6 of it.
    kw = dict(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref = train_client(model, params, buffers, x, y, generator=client_generator(0, 1, 0), **kw)
    fast = train_client(model, params, buffers, x.to(memory_format=CL), y, generator=client_generator(0, 1, 0),
                        compute=Compute(CL), **kw)
    exact = train_client(copy.deepcopy(model).double(), {n: v.double() for n, v in params.items()},  # in float64
                         {n: v.double() if v.is_floating_point() else v for n, v in buffers.items()}, x.double(), y,
                         generator=client_generator(0, 1, 0), **kw)
    assert is_channels_last(fast[0]["conv2.weight"]) and not is_channels_last(ref[0]["conv2.weight"])
    for part in (0, 1):
        for name in ref[part]:
            torch.testing.assert_close(fast[part][name], ref[part][name], rtol=1e-4, atol=1e-5, msg=name)
            for trained in (fast, ref):
                want = exact[part][name]
                torch.testing.assert_close(trained[part][name].to(want.dtype), want, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fast[2], ref[2], rtol=1e-5, atol=1e-6)
    p, b = ref[0], ref[1]
    logits = torch.func.functional_call(model.eval(), {**p, **b}, (x,))
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # only a near-tie may flip between two code paths
    assert clear.float().mean() > 0.8
    for batch_size in (1, 5, 64):
        got = predict(model, p, b, x.to(memory_format=CL), batch_size, Compute(CL))
        assert torch.equal(got[clear], logits.argmax(1)[clear])


def test_the_chosen_format_reaches_training_and_evaluation_alike(synthetic_cfg, tmp_path):
    seen = {}
    for setting in ("channels_last", "contiguous"):
        module = setup(synthetic_cfg("federation.rounds=1", "federation.adapt_every=1", "algorithm=fedavg",
                                     f"trainer.memory_format={setting}"))
        layouts = seen[setting] = {True: set(), False: set()}  # training mode -> layouts of conv2's input & weight

        def record(conv, inputs, _out, layouts=layouts):
            layouts[conv.training].add((is_channels_last(inputs[0]), is_channels_last(conv.weight)))

        module.model.conv2.register_forward_hook(record)
        run(module.cfg, tmp_path / setting, module=module)
    assert seen["channels_last"] == {True: {(True, True)}, False: {(True, True)}}
    assert seen["contiguous"] == {True: {(False, False)}, False: {(False, False)}}


@pytest.mark.parametrize("algorithm, model", [("pfedla", "cnn_bn"), ("fedavg", "cnn")])
def test_a_run_on_the_fast_path_equals_the_reference_run(synthetic_cfg, tmp_path, algorithm, model):
    runs = {}
    for setting in ("auto", "contiguous"):
        cfg = synthetic_cfg(f"algorithm={algorithm}", f"model={model}", f"trainer.memory_format={setting}",
                            "trainer.eval_batch_size=7" if setting == "auto" else "trainer.eval_batch_size=4096")
        module = setup(cfg)
        summary = run(cfg, tmp_path / setting, module=module)
        runs[setting] = (module.algorithm.state_dict(), summary)
    assert runs["auto"][1]["compute"]["memory_format"] == "channels_last"
    assert runs["contiguous"][1]["compute"]["memory_format"] == "contiguous"
    assert_states_close(runs["auto"][0], runs["contiguous"][0])
    for key in ("final", "final_adapted"):
        for metric, value in runs["contiguous"][1][key].items():
            assert runs["auto"][1][key][metric] == pytest.approx(value, abs=0.02), metric


def test_channels_last_with_the_vmap_engine_is_a_clear_error(synthetic_cfg, tmp_path):
    message = r"trainer.memory_format needs client.engine=loop .*try trainer.memory_format=auto"
    with pytest.raises(ConfigError, match=message):
        run(synthetic_cfg("trainer.memory_format=channels_last", "client.engine=vmap"), tmp_path / "run")


def test_bf16_autocast_runs_the_forward_pass_in_bf16_and_keeps_weights_fp32():
    model = tiny_model()
    x, y = torch.randn(12, 1, 16, 16), torch.randint(0, 3, (12,))
    params = {n: p.detach() for n, p in model.named_parameters()}
    dtypes = []
    model.fc3.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    kw = dict(epochs=1, batch_size=4, lr=0.1, generator=client_generator(0, 1, 0))
    bf16 = train_client(model, params, {}, x, y, compute=Compute(autocast_dtype=torch.bfloat16), **kw)
    assert set(dtypes) == {torch.bfloat16} and all(t.dtype == torch.float32 for t in bf16[0].values())
    dtypes.clear()
    fp32 = train_client(model, params, {}, x, y, **{**kw, "generator": client_generator(0, 1, 0)})
    assert set(dtypes) == {torch.float32}
    # Same batches and steps; bf16 rounds the forward pass (8 bits of mantissa), so close but not equal.
    for name in fp32[0]:
        torch.testing.assert_close(bf16[0][name], fp32[0][name], rtol=0.05, atol=0.02)
    assert any(not torch.equal(bf16[0][n], fp32[0][n]) for n in fp32[0])


def test_auto_processes_one_per_core_only_for_cpu_runs_large_enough_to_pay_for_them(monkeypatch):
    import pfedla.compute as compute
    from pfedla.compute import MIN_SAMPLES_FOR_PROCESSES, choose_processes

    def processes(devices="auto", gpu=False, samples=50_000, rounds=20, clients=10, nodes=1):
        trainer = OmegaConf.create({"devices": devices, "num_nodes": nodes})
        return choose_processes(trainer, not gpu, samples, rounds, clients)

    for variable in compute.LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert processes() == 4  # 1M samples over the run, 4 cores
    assert processes(clients=3) == 3  # never more processes than clients in a round
    assert processes(samples=MIN_SAMPLES_FOR_PROCESSES // 20 - 1) == 1  # too short to win back the start-up
    assert processes(samples=MIN_SAMPLES_FOR_PROCESSES // 20) == 4
    assert processes(gpu=True) == 1 and processes(nodes=2) == 1
    assert processes(devices=3) == 3 and processes(devices=1) == 1  # an explicit number is kept
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert processes(clients=100) == 8  # every process holds the data and the server state: at most 8
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # e.g. OMP_NUM_THREADS=1
    assert processes() == 1


def test_setup_turns_auto_devices_into_a_number_in_the_config(synthetic_cfg):
    cfg = synthetic_cfg()
    assert cfg.trainer.devices == "auto"
    module = setup(cfg)
    assert module.cfg.trainer.devices == 1  # a few hundred synthetic samples: one process
