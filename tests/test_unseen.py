"""Clients never seen in training (federation.unseen_fraction; pfedla/unseen.py)."""

import json

import pytest
import torch

from pfedla.algorithms.stacked import ClientModel, tensor_key
from pfedla.run import run, setup
from pfedla.unseen import held_out_clients, init_generator

UNSEEN = ("federation.num_clients=5", "federation.unseen_fraction=0.4", "federation.unseen_rounds=2")


def test_held_out_clients_never_enter_a_training_round(synthetic_cfg, tmp_path):
    cfg = synthetic_cfg(*UNSEEN, "federation.participation=0.67", "federation.rounds=3")
    module = setup(cfg)
    unseen = held_out_clients(5, 0.4, cfg.seed)
    assert module.unseen.ids == unseen and len(unseen) == 2
    assert sorted(module.data.ids + unseen) == list(range(5))
    sampled, trained_on, recipe_on = [], [], []
    begin_round, trainer = module.algorithm.begin_round, module.engine.train_one

    def spy_round(ctx):
        sampled.extend(module.data.ids[i] for i in ctx.sampled)  # positions in the federation -> partition ids
        return begin_round(ctx)

    def spy_trainer(model, params, buffers, x, y, **kwargs):  # training rounds, then the held-out clients' recipe
        (trained_on if module.rounds_done < cfg.federation.rounds else recipe_on).append(x.clone())
        return trainer(model, params, buffers, x, y, **kwargs)

    module.algorithm.begin_round, module.engine.train_one = spy_round, spy_trainer
    summary = run(cfg, tmp_path, module)
    assert sampled and not set(sampled) & set(unseen)
    held_out_images = module.unseen.train_x
    assert trained_on and not any(x.shape == h.shape and torch.equal(x, h) for x in trained_on for h in held_out_images)
    # the recipe ran on the run's engine, on the held-out clients' own images
    assert recipe_on and all(any(x.shape == h.shape and torch.equal(x, h) for h in held_out_images) for x in recipe_on)
    # seen and unseen are reported apart
    assert len(summary["final"]["client_acc"]) == 3 and summary["clients"] == module.data.ids
    assert summary["unseen"]["clients"] == unseen and len(summary["unseen"]["client_acc"]) == 2
    assert "test/adapted_acc_mean" in summary["unseen"] and summary["unseen"]["rounds"] == 2
    assert json.loads((tmp_path / "partition.json").read_text())["unseen_clients"] == unseen


@pytest.mark.parametrize("algorithm", ["pfedla", "heurpfedla", "pfedhn", "fedavg", "fedbn", "local", "fedamp",
                                       "pfedgraph", "fedrod", "fedbabu", "fedproto",
                                       "fedala", "fedpac"])
def test_a_recipe_changes_only_the_new_clients_parameters(synthetic_cfg, algorithm):
    module = setup(synthetic_cfg(f"algorithm={algorithm}", "model=cnn_bn"))
    algo = module.algorithm
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    initial = ClientModel({n: p.detach().clone() for n, p in module.model.named_parameters()},
                          {n: b.clone() for n, b in module.model.named_buffers()})
    sent = []

    def fit(model, r):  # one SGD-like step towards zero, recording what the round started from
        sent.append({k: v.clone() for k, v in model.params.items()})
        return ClientModel({k: 0.5 * v for k, v in model.params.items()}, model.buffers)

    out = algo.personalize_new_client(initial, fit, 2, torch.Generator().manual_seed(3))
    after = algo.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    trains = algorithm not in ("fedavg", "fedbn", "fedrod", "fedbabu", "fedala", "fedpac")
    assert len(sent) == (2 if trains else 0)
    assert set(out.params) == set(initial.params)
    differs = lambda a, b: any(not torch.equal(a.params[n], b.params[n]) for n in a.params)
    if trains:  # what its local rounds trained reaches the model: a fit that changes nothing gives another one
        idle = algo.personalize_new_client(initial, lambda model, r: model, 2, torch.Generator().manual_seed(3))
        assert differs(out, initial) and differs(out, idle)
    else:  # the trained clients' model alone: the new client's initial model plays no part
        doubled = ClientModel({n: 2 * p for n, p in initial.params.items()}, initial.buffers)
        again = algo.personalize_new_client(doubled, fit, 2, torch.Generator().manual_seed(3))
        assert not differs(out, again)


def test_pfedla_new_client_starts_from_the_mean_of_the_trained_models_and_its_own(synthetic_cfg):
    # head_init=uniform: the new hypernetwork's alpha is 1/(N+1) over N trained models and its own initial one
    module = setup(synthetic_cfg("algorithm.head_init=uniform"))
    algo = module.algorithm
    with torch.no_grad():  # distinct trained models
        for k in algo.param_names:
            algo.client_params[k].add_(torch.randn_like(algo.client_params[k]))
    initial = ClientModel({n: p.detach().clone() for n, p in module.model.named_parameters()},
                          dict(module.model.named_buffers()))
    sent = []

    def fit(model, r):
        sent.append(model.params)
        return model

    algo.personalize_new_client(initial, fit, 1, torch.Generator().manual_seed(0))
    for k in algo.param_names:
        by_hand = (sum(algo.client_params[k][j] for j in range(4)) + initial.params[k]) / 5
        assert torch.allclose(sent[0][k], by_hand, atol=1e-6)


def test_pfedhn_new_client_gets_the_frozen_hypernetworks_output_for_a_new_embedding(synthetic_cfg):
    module = setup(synthetic_cfg("algorithm=pfedhn"))
    algo = module.algorithm
    initial = ClientModel({n: p.detach().clone() for n, p in module.model.named_parameters()}, {})
    sent = []
    algo.personalize_new_client(initial, lambda m, r: sent.append(m.params) or m, 1, init_generator(0, 7))
    embedding = torch.randn(1, algo.embeddings.embedding_dim, generator=init_generator(0, 7))
    h = algo.body(embedding)  # by hand: the body, then each tensor's head
    for name, shape in algo.shapes.items():
        assert torch.allclose(sent[0][name], algo.heads[tensor_key(name)](h).view(shape), atol=1e-6)
    assert not any(torch.allclose(sent[0][n], algo.generate(torch.arange(4))[n][j]) for n in sent[0] for j in range(4))


def test_unseen_results_resume_exactly(synthetic_cfg, tmp_path):
    straight = run(synthetic_cfg(*UNSEEN, "federation.rounds=2"), tmp_path / "straight")
    run(synthetic_cfg(*UNSEEN, "federation.rounds=1"), tmp_path / "cut")
    resumed = run(synthetic_cfg(*UNSEEN, "federation.rounds=2", f"resume={tmp_path / 'cut'}"), tmp_path / "cut")
    for summary in (straight, resumed):
        summary["unseen"].pop("wall_seconds")
    assert resumed["unseen"] == straight["unseen"]



def test_report_shows_seen_and_unseen_scores_side_by_side(synthetic_cfg, tmp_path):
    from pfedla.report import report

    summaries = {a: run(synthetic_cfg(*UNSEEN, f"algorithm={a}"), tmp_path / a) for a in ("fedavg", "local")}
    text = report(tmp_path).read_text().split("## Clients never seen in training")[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["fedavg"][2] == f"{100 * summaries['fedavg']['unseen']['test/acc_mean']:.2f}"
    assert rows["fedavg"][3] == f"{100 * summaries['fedavg']['unseen']['test/adapted_acc_mean']:.2f}"
    assert rows["local"][2] == f"{100 * summaries['local']['unseen']['test/acc_mean']:.2f}" and rows["local"][3] == "–"
