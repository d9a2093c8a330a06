"""Datasets as pooled tensors: (images float32 [n, C, H, W] normalised once, labels int64 [n]).

``dataset.test_images`` says what becomes of a dataset's own test set (pfedla/datasets/federated.py):
``pooled`` (``Source.load``): train and test images are pooled, the partition deals them all, and every
client's share is split into train/val/test afterwards. ``held_out`` and ``unused`` (``Source.load_parts``):
the train images alone are partitioned, standardised by their own statistics; ``held_out`` adds the test
images after them (``PooledData.test_start``), to be dealt to the clients as their test splits, while
``unused`` never reads them (a hyperparameter search: nothing it loads can be a final run's test image).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfedla.errors import ConfigError, DatasetMissingError, check
from pfedla.targets import build

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class PooledData:
    images: torch.Tensor  # float32 [n, C, H, W], per-channel standardised
    labels: torch.Tensor  # int64 [n]
    num_classes: int
    test_start: int | None = None  # load_parts: where the dataset's own test images begin (None: not loaded)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


class Source:
    """A dataset: ``load(seed)`` gives the whole pool. Each option of ``conf/dataset/`` names one subclass in
    ``_target_``; its constructor takes that yaml's keys (``dataset.fraction`` is the federation's: pfedla.targets)."""

    name: str

    def load(self, seed: int) -> PooledData:
        raise NotImplementedError

    def load_parts(self, seed: int, with_test: bool) -> PooledData:
        """The dataset's own train images, standardised by their statistics alone, and (``with_test``) its own
        test images after them from ``test_start``, standardised the same way; without ``with_test`` the test
        images are never read. A dataset with no test set of its own cannot hold one out."""
        raise ConfigError(
            f"dataset={self.name} ({type(self).__name__}) has no test set of its own to hold out; "
            "use dataset.test_images=pooled (each client's share split into train/val/test)"
        )


FRAMEWORK_KEYS = frozenset({"fraction", "test_images"})  # read by pfedla/datasets/federated.py
TEST_IMAGES = ("pooled", "held_out", "unused")  # the seeded subset, taken by pfedla/datasets/federated.py


def build_source(cfg) -> Source:
    """The dataset ``cfg`` (the ``dataset`` node) names, checked but not loaded."""
    return build(cfg, "dataset", Source, "pfedla.datasets.sources.FashionMNIST", FRAMEWORK_KEYS)


def load_pooled(cfg, seed: int) -> PooledData:
    """Load ``cfg`` (the ``dataset`` config node) as one pooled, normalised tensor pair."""
    return build_source(cfg).load(seed)


def standardise(images: torch.Tensor, by: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel zero mean / unit variance, by the statistics of ``by`` (default: ``images``), computed once."""
    images = images.float()
    by = images if by is None else by.float()
    mean = by.mean(dim=(0, 2, 3), keepdim=True)
    std = by.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (images - mean) / std


def train_then_test(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None,
                    num_classes: int) -> PooledData:
    """``Source.load_parts``' result: train images, then test images (if any), both standardised by train's
    statistics."""
    images, labels = train
    if test is None:
        return PooledData(standardise(images), labels, num_classes, test_start=None)
    return PooledData(standardise(torch.cat([images, test[0]]), by=images), torch.cat([labels, test[1]]),
                      num_classes, test_start=len(labels))


@dataclass
class Synthetic(Source):
    """Each class is a fixed random image (prototype); samples are prototype + Gaussian noise. No files."""

    name: str = "synthetic"
    num_classes: int = 10
    samples_per_class: int = 100
    image_size: int = 16
    noise: float = 1.0
    test_samples_per_class: int = 0  # a test set of its own (drawn after, and apart from, the train images)

    def __post_init__(self):
        check(self.test_samples_per_class >= 0, "dataset.test_samples_per_class", self.test_samples_per_class,
              "must be >= 0", "20")

    def load(self, seed: int) -> PooledData:
        images, labels = self._train(seed)
        if self.test_samples_per_class:
            test_images, test_labels = self._test(seed)
            images, labels = torch.cat([images, test_images]), torch.cat([labels, test_labels])
        return PooledData(standardise(images), labels, self.num_classes)

    def load_parts(self, seed: int, with_test: bool) -> PooledData:
        if with_test and not self.test_samples_per_class:  # unused: with no test set, nothing to leave out
            raise ConfigError("dataset=synthetic has no test set of its own to hold out (dataset.test_samples_per_"
                              "class=0); set dataset.test_samples_per_class=20, or use dataset.test_images=pooled")
        return train_then_test(self._train(seed), self._test(seed) if with_test else None, self.num_classes)

    def _prototypes(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(self.num_classes, 1, self.image_size, self.image_size, generator=gen)

    def _train(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(10_007 + seed)
        return self._samples(self._prototypes(gen), self.samples_per_class, gen)

    def _test(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same classes' prototypes, fresh noise from a generator of its own."""
        prototypes = self._prototypes(torch.Generator().manual_seed(10_007 + seed))
        return self._samples(prototypes, self.test_samples_per_class, torch.Generator().manual_seed(20_011 + seed))

    def _samples(self, prototypes: torch.Tensor, per_class: int, gen: torch.Generator):
        labels = torch.arange(self.num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), 1, self.image_size, self.image_size, generator=gen)
        return prototypes[labels] + self.noise * noise, labels


@dataclass
class Torchvision(Source):
    """A torchvision dataset, train and test pooled, found under ``root`` (downloaded there if ``download``)."""

    name: str
    root: str
    download: bool = False
    torchvision_class = ""  # the torchvision.datasets class
    folder = ""  # the folder torchvision keeps it in under root

    def load(self, seed: int) -> PooledData:
        images, labels = self._load((True, False))
        return PooledData(standardise(images), labels, int(labels.max()) + 1)

    def load_parts(self, seed: int, with_test: bool) -> PooledData:
        train = self._load((True,))
        test = self._load((False,)) if with_test else None  # unused: the test file is never opened
        return train_then_test(train, test, int(train[1].max()) + 1)

    def prepare(self, root: Path) -> None:
        """Put the files in place before torchvision looks for them (nothing for most datasets)."""

    def arguments(self) -> dict:
        """Extra keyword arguments of the torchvision class."""
        return {}

    def as_nchw_uint8(self, data) -> torch.Tensor:
        data = torch.as_tensor(np.asarray(data))
        if data.ndim == 3:  # MNIST family: [n, H, W]
            return data.unsqueeze(1).contiguous()
        return data.permute(0, 3, 1, 2).contiguous()  # CIFAR: [n, H, W, C]

    def missing_fixes(self, path: Path) -> list[str]:
        return [f"run online with dataset.download=true so torchvision downloads it into {self.root}"]

    def _load(self, trains: tuple[bool, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.datasets as tvd

        root = Path(self.root)
        self.prepare(root)
        cls = getattr(tvd, self.torchvision_class)
        parts = []
        try:
            for train in trains:
                parts.append(cls(str(root), train=train, download=self.download, **self.arguments()))
        except Exception as err:  # torchvision raises RuntimeError (missing) or URLError/OSError (offline)
            path = root / self.folder
            raise DatasetMissingError(
                f"dataset={self.name}: no data at {path} (dataset.root={self.root}) and it could not be fetched "
                f"({type(err).__name__}: {str(err)[:200]}). Fix: " + "; or ".join(self.missing_fixes(path)) + "."
            ) from err
        images = [self.as_nchw_uint8(ds.data) for ds in parts]
        labels = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64) for ds in parts]
        return torch.cat(images), torch.cat(labels)


@dataclass
class FashionMNIST(Torchvision):
    """Fashion-MNIST; without internet, from Debian's ``dataset-fashion-mnist`` package (``make data``)."""

    torchvision_class = folder = "FashionMNIST"

    def prepare(self, root: Path) -> None:
        prepare_fashion_mnist_from_debian(root)

    def missing_fixes(self, path: Path) -> list[str]:
        return [
            "install Debian's package (`sudo apt-get install dataset-fashion-mnist`, or `make data`), "
            f"which pfedla unpacks from {DEBIAN_FASHION_MNIST} into {path}/raw",
            *super().missing_fixes(path),
        ]


@dataclass
class MNIST(Torchvision):
    torchvision_class = folder = "MNIST"


@dataclass
class EMNIST(Torchvision):
    """EMNIST in one of torchvision's splits (balanced, byclass, letters, digits, ...)."""

    split: str = "balanced"
    torchvision_class = folder = "EMNIST"

    def arguments(self) -> dict:
        return {"split": self.split}

    def as_nchw_uint8(self, data) -> torch.Tensor:
        return super().as_nchw_uint8(data).transpose(2, 3).contiguous()  # EMNIST images are stored transposed


@dataclass
class CIFAR10(Torchvision):
    torchvision_class, folder = "CIFAR10", "cifar-10-batches-py"


@dataclass
class CIFAR100(Torchvision):
    torchvision_class, folder = "CIFAR100", "cifar-100-python"


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
