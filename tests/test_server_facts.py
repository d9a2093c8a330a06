"""A deployed server runs on its clients' facts alone (pfedla/datasets/federated.py ``client_facts``,
pfedla/flower/protocol.py): no image, the partition to the count, and the handshake's checks. No Flower here;
tests/test_protocol.py runs every method on such a server, tests/test_flower.py a real deployment."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from pfedla.datasets.federated import build_federated_data, client_facts, federation_from_facts
from pfedla.flower.protocol import DeploymentError, check_same_partition, node_of_clients, server_federation
from pfedla.run import setup
from pfedla.unseen import hold_out
from tests.conftest import SYNTHETIC, compose_config

ROTATED = [*SYNTHETIC, "federation.num_clients=6", "partition.feature=rotation", "partition.groups=2"]


def test_facts_from_two_nodes_give_the_federation_to_the_count_without_an_image():
    data = build_federated_data(compose_config(ROTATED))
    seen, _ = hold_out(data, 1 / 3, 0)  # ids and groups that are not 0..N-1 / all equal
    nodes = [json.loads(json.dumps(client_facts(seen, [2, 3]))), client_facts(seen, [0, 1])]  # as over the wire
    facts = federation_from_facts(nodes, seen.num_clients)
    assert facts.summary() == seen.summary() and facts.class_counts() == seen.class_counts()
    assert facts.ids == seen.ids != list(range(seen.num_clients)) and facts.groups == seen.groups
    assert facts.input_shape == seen.input_shape and facts.fingerprint == seen.fingerprint
    for split in ("train", "val", "test"):
        xs, ys = facts.split(split)
        assert all(x.is_meta for x in xs)
        assert [torch.bincount(y, minlength=facts.num_classes).tolist() for y in ys] == \
               [torch.bincount(y, minlength=seen.num_classes).tolist() for y in seen.split(split)[1]]
    assert facts.to("cpu") is facts


def test_a_server_set_up_on_facts_holds_what_one_set_up_on_the_data_holds():
    cfg = compose_config([*SYNTHETIC, "algorithm=pfedla_similarity"])  # its alpha comes from label counts
    on_data = setup(cfg)
    answers = {7: {"clients": [0, 1], "fingerprint": on_data.data.fingerprint,
                   "facts": json.dumps(client_facts(on_data.data, [0, 1]))},
               9: {"clients": [2, 3], "fingerprint": on_data.data.fingerprint,
                   "facts": json.dumps(client_facts(on_data.data, [2, 3]))}}
    assert node_of_clients(answers) == {0: 7, 1: 7, 2: 9, 3: 9}
    on_facts = setup(cfg, server_federation(answers, 4))
    a, b = on_facts.algorithm.state_dict(), on_data.algorithm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert on_facts.partition_summary() == on_data.partition_summary()


def test_the_handshake_refuses_a_node_that_runs_another_federation_naming_the_keys():
    server = compose_config(SYNTHETIC)
    same = json.dumps(OmegaConf.to_container(compose_config([*SYNTHETIC, "federation.rounds=9"]), resolve=True))
    other = json.dumps(OmegaConf.to_container(compose_config([*SYNTHETIC, "seed=7", "client.lr=0.5"]), resolve=True))
    answers = {1: {"clients": [0, 1], "fingerprint": "aaa", "config": same}}
    assert node_of_clients(answers, server) == {0: 1, 1: 1}  # a key that does not define the federation may differ
    answers[2] = {"clients": [2, 3], "fingerprint": "aaa", "config": other}
    with pytest.raises(DeploymentError, match=r"SuperNode 2 runs another federation than the server's \(seed: 0 -> 7; "
                                              r"client.lr: 0.05 -> 0.5"):
        node_of_clients(answers, server)


def test_the_handshake_refuses_nodes_on_different_partitions_and_a_client_held_twice(tmp_path):
    with pytest.raises(DeploymentError, match=r"different partitions \(partition aaa on SuperNode 1, 3; "
                                              r"partition bbb on SuperNode 2\)"):
        node_of_clients({1: {"clients": [0], "fingerprint": "aaa"}, 2: {"clients": [1], "fingerprint": "bbb"},
                         3: {"clients": [2], "fingerprint": "aaa"}})
    with pytest.raises(DeploymentError, match="client 1 is held by SuperNodes 1 and 2"):
        node_of_clients({1: {"clients": [0, 1], "fingerprint": "aaa"}, 2: {"clients": [1], "fingerprint": "aaa"}})
    with pytest.raises(DeploymentError, match="no partition.json"):
        check_same_partition(tmp_path, "aaa")
    (tmp_path / "partition.json").write_text(json.dumps({"fingerprint": "aaa"}))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.ckpt").write_bytes(b"")
    for resume in (tmp_path, tmp_path / "checkpoints/last.ckpt"):  # a run dir or its checkpoint
        check_same_partition(resume, "aaa")
        with pytest.raises(DeploymentError, match=f"hold partition bbb, but the run resumed from {tmp_path} "
                                                  "trained on partition aaa"):
            check_same_partition(resume, "bbb")
