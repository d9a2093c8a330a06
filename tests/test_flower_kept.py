"""What a SuperNode keeps of its clients' models (pfedla/flower/kept.py) and which tensors a method keeps there
(ClientModel.kept), without Flower: the store round-trips bit for bit, prunes only what no checkpoint needs, and
names the client and what it holds when asked for a version it lost."""

from __future__ import annotations

import pytest
import torch

from pfedla.algorithms.stacked import ClientModel
from pfedla.flower.kept import KeptMissing, KeptStore, settle


def test_the_store_returns_each_version_bit_for_bit_and_prunes_only_older_ones(tmp_path):
    store = KeptStore(tmp_path, KeptStore.run_key("outputs/run", "abc"))
    versions = {v: ClientModel({"w": torch.randn(3, 4, dtype=torch.float64)}, {"n": torch.tensor(v)})
                for v in (1, 3, 4)}
    for v, model in versions.items():
        store.save(0, v, model)
    assert store.versions(0) == [1, 3, 4] and store.versions(1) == []
    for v, model in versions.items():
        loaded = store.load(0, v)
        assert loaded.params.keys() == {"w"} and loaded.buffers.keys() == {"n"}
        assert torch.equal(loaded.params["w"], model.params["w"])
        assert torch.equal(loaded.buffers["n"], model.buffers["n"])
    store.prune(0, keep_from=3)  # the last checkpoint expects round 3: round 1 can never be asked for again
    assert store.versions(0) == [3, 4]
    with pytest.raises(KeptMissing, match=r"client 0's own layers as of round 1 .*holds rounds 3, 4"):
        store.load(0, 1)
    with pytest.raises(KeptMissing, match="client 2's own layers as of round 5 .*holds none"):
        store.load(2, 5)
    # another run (or partition) never reads this one's versions
    assert KeptStore(tmp_path, KeptStore.run_key("outputs/run", "abd")).versions(0) == []


def test_a_result_the_server_will_reject_is_not_kept_and_its_loss_says_so(tmp_path):
    store = KeptStore(tmp_path, "run")
    kept = frozenset({"head", "stat"})
    good = ClientModel({"head": torch.ones(2)}, {"stat": torch.zeros(2)}, kept)
    assert settle(store, 0, 1, good, torch.tensor(0.5), keep_from=0) == 0.5 and store.versions(0) == [1]
    # NaN in a kept tensor the server never sees: not kept (round 1 stays the client's own), loss NaN (rejected)
    bad = ClientModel({"head": torch.tensor([1.0, float("nan")])}, {"stat": torch.zeros(2)}, kept)
    assert torch.isnan(settle(store, 0, 2, bad, torch.tensor(0.4), keep_from=1)) and store.versions(0) == [1]
    bad_loss = ClientModel({"head": torch.ones(2)}, {"stat": torch.zeros(2)}, kept)
    assert torch.isnan(settle(store, 0, 3, bad_loss, torch.tensor(float("inf")), keep_from=1))
    assert store.versions(0) == [1]
    assert settle(store, 0, 4, good, torch.tensor(0.3), keep_from=1) == 0.3 and store.versions(0) == [1, 4]
    assert settle(store, 0, 5, good, torch.tensor(0.3), keep_from=4) == 0.3 and store.versions(0) == [4, 5]


def test_a_node_keeps_only_the_kept_tensors_under_the_clients_own_names(tmp_path):
    """Ditto trains its personal model under ``personal/``: the node keeps it under the model's own names (which
    the personalized model the server scores names), over the global model's tensors of those names."""
    from pfedla.flower.protocol import fill_kept

    store = KeptStore(tmp_path, "run")
    personal = {"personal/w": torch.full((2,), 2.0)}
    trained = ClientModel({"w": torch.ones(2), **personal}, {"personal/n": torch.tensor(3)},
                          frozenset({"personal/w", "personal/n"}), "personal/")
    assert settle(store, 0, 1, trained, torch.tensor(0.5), keep_from=0) == 0.5
    own = store.load(0, 1)
    assert own.params.keys() == {"w"} and own.buffers.keys() == {"n"}
    assert torch.equal(own.params["w"], personal["personal/w"]) and own.buffers["n"] == 3
    # filled back in: under ``personal/`` for the next round's training, under the own names for scoring
    params, buffers = {"w": torch.zeros(2)}, {}
    fill_kept(params, buffers, frozenset({"personal/w", "personal/n"}), own, "personal/")
    assert torch.equal(params["personal/w"], own.params["w"]) and buffers == {"personal/n": own.buffers["n"]}
    assert torch.equal(params["w"], torch.zeros(2))  # the global model the server sent is untouched
    params, buffers = {}, {}
    fill_kept(params, buffers, frozenset({"w", "n"}), own)
    assert torch.equal(params["w"], own.params["w"]) and buffers == {"n": own.buffers["n"]}


HEAD = ("fc3.weight", "fc3.bias")  # cnn_bn's classifier: head_layers=1 in fedper.yaml and lgfedavg.yaml


@pytest.mark.parametrize("algorithm, kept", [
    ("fedavg", lambda alg: set()),
    ("pfedla", lambda alg: set(alg.buffer_names)),  # BatchNorm statistics, never mixed
    ("pfedhn", lambda alg: set(alg.buffer_names)),  # never generated
    ("fedper", lambda alg: set(HEAD)),
    ("lgfedavg", lambda alg: {*alg.param_names, *alg.buffer_names} - set(HEAD)),
    ("fedbn", lambda alg: {n for n in [*alg.param_names, *alg.buffer_names] if n.startswith(("bn1.", "bn2."))}),
    ("local", lambda alg: {*alg.param_names, *alg.buffer_names}),
])
def test_the_tensors_a_method_keeps_on_the_client_are_the_ones_it_never_shares(synthetic_cfg, algorithm, kept):
    from pfedla.algorithms.base import RoundContext
    from pfedla.run import setup

    alg = setup(synthetic_cfg(f"algorithm={algorithm}", "model=cnn_bn")).algorithm
    assert set(alg.personalized_model(1).kept) == kept(alg)
    alg.begin_round(RoundContext(1, [0, 1], 0, alg.device))
    assert set(alg.model_for(1).kept) == kept(alg)


def test_ditto_keeps_its_personal_model_on_the_client_in_training_and_scoring(synthetic_cfg):
    from pfedla.algorithms.base import RoundContext
    from pfedla.algorithms.stacked import PERSONAL
    from pfedla.run import setup

    alg = setup(synthetic_cfg("algorithm=ditto", "model=cnn_bn")).algorithm
    names = {*alg.param_names, *alg.buffer_names}
    scored = alg.personalized_model(1)
    assert scored.kept == names and scored.kept_prefix == ""
    alg.begin_round(RoundContext(1, [0, 1], 0, alg.device))
    sent = alg.model_for(1)
    assert sent.kept == {PERSONAL + n for n in names} and sent.kept_prefix == PERSONAL
    assert all(torch.equal((sent.params | sent.buffers)[n], (scored.params | scored.buffers)[sent.own_name(n)])
               for n in sent.kept)  # the kept tensors are the client's own model, the one it is scored by


def test_heurpfedla_keeps_its_retained_layers_whole_and_sends_them_as_the_clients_own(synthetic_cfg):
    from pfedla.algorithms.base import RoundContext
    from pfedla.run import setup

    alg = setup(synthetic_cfg("algorithm=heurpfedla", "model=cnn_bn", "algorithm.k=2")).algorithm
    for i in range(alg.num_clients):  # every client's model differs from every other's, as the server knows it too
        for stacked in (alg.client_params, alg.uploaded_params):
            stacked.set_row(i, {n: torch.full_like(t, i + 1.0) for n, t in stacked.row(i).items()})
    alg.begin_round(RoundContext(1, [0, 1, 2], 0, alg.device))
    for i in (0, 2):
        sent = alg.model_for(i)
        layers = [layer for layer, members in alg.layers.items() if set(members) <= sent.kept]
        assert len(layers) == 2  # and its BatchNorm statistics, which pFedLA never mixes
        assert sent.kept == {n for layer in layers for n in alg.layers[layer]} | set(alg.buffer_names)
        assert all(torch.equal(sent.params[n], alg.client_params[n][i]) for n in sent.kept if n in sent.params)
        assert not any(torch.equal(sent.params[n], alg.client_params[n][i]) for n in alg.param_names
                       if n not in sent.kept)  # the rest is a mix of the clients' models


def test_apfl_keeps_its_local_model_on_the_client_and_the_node_mixes_it_into_the_scored_model(synthetic_cfg):
    """APFL's local model v_i is the client's own in training (under ``local/``) and in scoring: the server sends
    the global model w and alpha_i, the node fills in v_i and composes alpha_i v_i + (1 - alpha_i) w, by hand."""
    from pfedla.algorithms.apfl import ALPHA, LOCAL
    from pfedla.algorithms.base import RoundContext
    from pfedla.flower.protocol import fill_kept, to_node, unflat
    from pfedla.run import setup

    alg = setup(synthetic_cfg("algorithm=apfl", "model=cnn_bn")).algorithm
    names = {*alg.param_names, *alg.buffer_names}
    for i in range(alg.num_clients):  # each client's own model differs from the global one
        alg.client_params.set_row(i, {n: torch.full_like(t, i + 1.0) for n, t in alg.client_params.row(i).items()})
        alg.client_buffers.set_row(i, {n: torch.full_like(t, i + 2) for n, t in alg.client_buffers.row(i).items()})
    alg.alpha.set_row(1, {"alpha": torch.tensor(0.25)})
    alg.begin_round(RoundContext(1, [0, 1], 0, alg.device))
    sent = alg.model_for(1)
    assert sent.kept == {LOCAL + n for n in names} and sent.kept_prefix == LOCAL

    parts = alg.scored_parts([1])[0]
    assert parts.kept == {LOCAL + n for n in names} and parts.kept_prefix == LOCAL
    params, buffers, _ = unflat(to_node(parts))  # what travels: w and alpha_i, nothing of v_i
    assert set(params) == {*alg.param_names, ALPHA} and buffers == {}
    fill_kept(params, buffers, parts.kept, alg.own_model(1), LOCAL)  # the node's own copy of v_i
    scored = alg.compose(ClientModel(params, buffers))
    for n in alg.param_names:
        w = alg.global_model[n][0]
        assert not torch.equal(w, torch.full_like(w, 2.0))
        assert torch.allclose(scored.params[n], 0.25 * 2.0 + 0.75 * w)
    assert all(torch.equal(scored.buffers[n], torch.full_like(scored.buffers[n], 3)) for n in alg.buffer_names)
    same = alg.personalized_model(1)  # the simulation's: the very same ops on the server's copies
    assert all(torch.equal(same.params[n], scored.params[n]) for n in alg.param_names)


def test_fedrod_keeps_its_personal_head_on_the_client_and_the_node_adds_it_to_the_generic_head(synthetic_cfg):
    """FedRoD's personal head (and its log prior) is the client's own in training and scoring: the server sends the
    generic model, the node fills in the head and scores body + (generic + personal head), by hand."""
    from pfedla.algorithms.base import RoundContext
    from pfedla.algorithms.fedrod import LOG_PRIOR, PERSONAL_HEAD
    from pfedla.flower.protocol import fill_kept, to_node, unflat
    from pfedla.run import setup

    alg = setup(synthetic_cfg("algorithm=fedrod", "model=cnn_bn")).algorithm
    own = {*(PERSONAL_HEAD + n for n in alg.personal_head.names), LOG_PRIOR}  # its labels' log prior too
    alg.personal_head.set_row(1, {n: torch.full_like(t, 0.5) for n, t in alg.personal_head.row(1).items()})
    alg.begin_round(RoundContext(1, [0, 1], 0, alg.device))
    assert alg.model_for(1).kept == own

    parts = alg.scored_parts([1])[0]
    assert parts.kept == own
    params, buffers, _ = unflat(to_node(parts))  # what travels: the generic model alone
    assert set(params) == set(alg.param_names)
    fill_kept(params, buffers, parts.kept, alg.own_model(1))  # the node's own copy of the head
    scored = alg.compose(ClientModel(params, buffers))
    assert set(scored.params) == set(alg.param_names)
    for n in alg.param_names:
        generic = alg.global_model[n][0]
        expected = generic + 0.5 if n in (f"{alg.head}.weight", f"{alg.head}.bias") else generic
        assert torch.equal(scored.params[n], expected), n
    same = alg.personalized_model(1)  # the simulation's: the very same ops on the server's copies
    assert all(torch.equal(same.params[n], scored.params[n]) for n in alg.param_names)


def test_what_a_client_did_not_change_does_not_come_back_and_the_server_fills_it_from_what_it_sent():
    """Bits, not values: -0.0 is not 0.0 (a server filling in 0.0 would change the run's bits), a NaN is itself.
    The server rebuilds the trained model the plan's result holds, in its order; a tensor lost on the way fails."""
    from pfedla.flower.protocol import DeploymentError, completed, same_bits, unchanged, unflat, without

    assert same_bits(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]))
    assert not same_bits(torch.tensor(-0.0), torch.tensor(0.0)) and torch.equal(torch.tensor(-0.0), torch.tensor(0.0))
    assert not same_bits(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert same_bits(torch.arange(6.0)[::2], torch.tensor([0.0, 2.0, 4.0]))  # a strided view
    sent = ClientModel({"w": torch.ones(3), "cloud/w": torch.full((3,), 2.0), "z": torch.zeros(2)},
                       {"n": torch.tensor(4)})
    trained = ClientModel({"w": torch.tensor([1.0, 0.5, 1.0]), "cloud/w": torch.full((3,), 2.0),
                           "z": torch.tensor([0.0, -0.0]), "proto": torch.ones(2)}, {"n": torch.tensor(4)})
    assert unchanged(trained, sent) == {"cloud/w", "n"}
    params, buffers, extra = unflat(without(trained, unchanged(trained, sent), loss=torch.tensor(0.1)))
    assert set(params) == {"w", "z", "proto"} and buffers == {} and set(extra) == {"loss"}
    got = completed(params, buffers, trained, sent, 3)  # the plan's result: the trained model's names
    assert [list(t) for t in got] == [list(trained.params), list(trained.buffers)]
    assert all(same_bits(got[0][n], trained.params[n]) for n in trained.params)
    assert torch.equal(got[1]["n"], torch.tensor(4))
    del params["proto"]  # lost on the way: not in the reply, and the server never had it
    with pytest.raises(DeploymentError, match="client 3's reply lacks proto, which the server did not send either"):
        completed(params, buffers, trained, sent, 3)
