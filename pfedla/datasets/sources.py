"""Datasets as pooled tensors: (images float32 [n, C, H, W] normalised once, labels int64 [n]).

Train and test splits of the torchvision datasets are pooled: the federated split is made by the
partition, and every client's share is split into train/test afterwards.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfedla.errors import ConfigError, DatasetMissingError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# name -> (torchvision class name, folder torchvision keeps it in under root)
TORCHVISION_DATASETS = {
    "fmnist": ("FashionMNIST", "FashionMNIST"),
    "mnist": ("MNIST", "MNIST"),
    "emnist": ("EMNIST", "EMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}
DATASET_NAMES = (*TORCHVISION_DATASETS, "synthetic")


@dataclass
class PooledData:
    images: torch.Tensor  # float32 [n, C, H, W], per-channel standardised
    labels: torch.Tensor  # int64 [n]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def load_pooled(cfg, seed: int) -> PooledData:
    """Load ``cfg`` (the ``dataset`` config node) as one pooled, normalised tensor pair."""
    if cfg.name == "synthetic":
        return synthetic(cfg.num_classes, cfg.samples_per_class, cfg.image_size, cfg.noise, seed)
    if cfg.name not in TORCHVISION_DATASETS:
        raise ConfigError(
            f"dataset={cfg.name} is not a known dataset; valid: {', '.join(DATASET_NAMES)} "
            "(e.g. dataset=fmnist)"
        )
    images, labels = _load_torchvision(cfg)
    return PooledData(standardise(images), labels, int(labels.max()) + 1)


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean / unit variance over the whole pool, computed once."""
    images = images.float()
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (images - mean) / std


def synthetic(num_classes: int, samples_per_class: int, image_size: int, noise: float, seed: int) -> PooledData:
    """Each class is a fixed random image (prototype); samples are prototype + Gaussian noise."""
    gen = torch.Generator().manual_seed(10_007 + seed)
    prototypes = torch.randn(num_classes, 1, image_size, image_size, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    images = prototypes[labels] + noise * torch.randn(len(labels), 1, image_size, image_size, generator=gen)
    return PooledData(standardise(images), labels, num_classes)


def prepare_fashion_mnist_from_debian(root: str | Path) -> bool:
    """Decompress Debian's ``dataset-fashion-mnist`` files into torchvision's raw folder.

    torchvision only checks that the raw files exist (their md5 differs from torchvision's list, so
    its download path cannot be reused). Returns True when the raw files are in place.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in FASHION_MNIST_FILES):
        return True
    if not all((DEBIAN_FASHION_MNIST / f"{name}.gz").exists() for name in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if target.exists():
            continue
        partial = target.with_suffix(".partial")
        with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.rename(target)  # atomic: a half-written file never looks complete
    return True


def _load_torchvision(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls_name, folder = TORCHVISION_DATASETS[cfg.name]
    root = Path(cfg.root)
    if cfg.name == "fmnist":
        prepare_fashion_mnist_from_debian(root)
    cls = getattr(tvd, cls_name)
    extra = {"split": cfg.split} if cfg.name == "emnist" else {}
    parts = []
    try:
        for train in (True, False):
            parts.append(cls(str(root), train=train, download=cfg.download, **extra))
    except Exception as err:  # torchvision raises RuntimeError (missing) or URLError/OSError (offline)
        raise DatasetMissingError(_missing_message(cfg, root / folder, err)) from err
    images = [_as_nchw_uint8(ds.data, cfg.name) for ds in parts]
    labels = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64) for ds in parts]
    return torch.cat(images), torch.cat(labels)


def _as_nchw_uint8(data, name: str) -> torch.Tensor:
    data = torch.as_tensor(np.asarray(data))
    if data.ndim == 3:  # MNIST family: [n, H, W]
        data = data.unsqueeze(1)
        if name == "emnist":  # EMNIST images are stored transposed
            data = data.transpose(2, 3)
        return data.contiguous()
    return data.permute(0, 3, 1, 2).contiguous()  # CIFAR: [n, H, W, C]


def _missing_message(cfg, path: Path, err: Exception) -> str:
    fixes = [f"run online with dataset.download=true so torchvision downloads it into {cfg.root}"]
    if cfg.name == "fmnist":
        fixes.insert(
            0,
            "install Debian's package (`sudo apt-get install dataset-fashion-mnist`, or `make data`), "
            f"which pfedla unpacks from {DEBIAN_FASHION_MNIST} into {path}/raw",
        )
    return (
        f"dataset={cfg.name}: no data at {path} (dataset.root={cfg.root}) and it could not be fetched "
        f"({type(err).__name__}: {str(err)[:200]}). Fix: " + "; or ".join(fixes) + "."
    )
