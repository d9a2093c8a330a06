"""``python -m pfedla.datasets.fetch --root data``: make Fashion-MNIST available offline if possible.

Unpacks Debian's ``dataset-fashion-mnist`` into ``<root>/FashionMNIST/raw``; without it, says that
torchvision will download the files on first use (which needs internet).
"""

from __future__ import annotations

import argparse

from pfedla.datasets.sources import DEBIAN_FASHION_MNIST, prepare_fashion_mnist_from_debian


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    args = parser.parse_args(argv)
    if prepare_fashion_mnist_from_debian(args.root):
        print(f"Fashion-MNIST ready in {args.root}/FashionMNIST/raw")
    else:
        print(
            f"{DEBIAN_FASHION_MNIST} not found: torchvision will download Fashion-MNIST into {args.root} "
            "on first use (needs internet), or install Debian's dataset-fashion-mnist."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
