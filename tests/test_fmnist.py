"""Real Fashion-MNIST (Debian's dataset-fashion-mnist, unpacked by `make data`). CI installs it."""

import json
import os
from pathlib import Path

import pytest

from pfedla.datasets.sources import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES
from pfedla.run import run
from tests.conftest import compose_config

ROOT = Path(os.environ.get("PFEDLA_DATA_ROOT", "data"))
AVAILABLE = DEBIAN_FASHION_MNIST.is_dir() or all((ROOT / "FashionMNIST/raw" / f).exists() for f in FASHION_MNIST_FILES)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _need_data():
    if not AVAILABLE:
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing in CI: .ci/run must install dataset-fashion-mnist (make data)")
        pytest.skip("Fashion-MNIST not available: `make data` (Debian's dataset-fashion-mnist) or run online")


def test_pfedla_learns_on_a_small_fraction_of_real_fashion_mnist(tmp_path):
    cfg = compose_config([
        "+experiment=noniid_dirichlet", f"dataset.root={ROOT}", "dataset.fraction=0.1", "federation.num_clients=5",
        "federation.rounds=3", "trainer.accelerator=cpu", "trainer.progress_bar=false", "logger=none",
    ])
    summary = run(cfg, tmp_path)
    partition = json.loads((tmp_path / "partition.json").read_text())
    sizes = (sum(partition[f"{split}_sizes"]) for split in ("train", "val", "test"))
    assert sum(sizes) == 7000  # stratified 10% of 70k
    assert partition["num_classes"] == 10
    assert summary["final"]["test/acc_mean"] > 0.4, summary["final"]  # chance: 0.1 (measured 0.53)
