"""The sets torchvision publishes (CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST): files under data.root
(default $RESEXP_DATA or ~/.cache/resexp/data), downloaded through torchvision when allowed, loaded
into memory (ArraySource)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import DictConfig

from resexp.data import idx
from resexp.data.common import check_num_classes, is_missing
from resexp.data.sources import fit_images, set_info, split_arrays
from resexp.data.types import ArraySource, DataInfo
from resexp.errors import DataError

CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()
assert len(CIFAR100_CLASSES) == 100


def default_root() -> Path:
    """Where downloadable sets live when data.root is not given: $RESEXP_DATA, else ~/.cache/resexp/data."""
    return Path(os.environ.get("RESEXP_DATA") or "~/.cache/resexp/data").expanduser()


def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to the URL's host opens within `timeout` s (DNS included), else why not."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    result: list[str | None] = ["timed out"]

    def probe():
        try:
            socket.create_connection((u.hostname, port), timeout=timeout).close()
            result[0] = None
        except OSError as e:
            result[0] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return result[0] if not t.is_alive() else f"no answer from {u.hostname} within {timeout:.0f} s"


@dataclass
class TorchvisionSet:
    name: str
    folder: str  # under root
    files: tuple[str, ...]  # what must be inside `folder`
    urls: tuple[str, ...]  # download sources (any one is enough)
    channels: int
    classes: tuple[str, ...]
    size_note: str

    @property
    def native_channels(self) -> int:
        return self.channels

    def _tv(self):
        import torchvision.datasets as tvd

        return {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
                "fashion_mnist": tvd.FashionMNIST}[self.name]

    def describe(self, cfg: DictConfig) -> DataInfo:
        check_num_classes(cfg, len(self.classes), f"data={self.name}", list(self.classes))
        return set_info(cfg, len(self.classes), cfg.channels or self.channels, list(self.classes))

    def root(self, cfg: DictConfig) -> Path:
        return Path(cfg.root).expanduser() if not is_missing(cfg, "root") else default_root()

    def _present(self, root: Path) -> bool:
        return all((root / self.folder / f).is_file() for f in self.files)

    def _read(self, root: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(train images uint8 NCHW, labels), (test images, labels)] through torchvision's reader."""
        try:
            sets = [self._tv()(str(root), train=train, download=False) for train in (True, False)]
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"data={self.name}: cannot read the files in {root / self.folder} ({type(e).__name__}: {e}); "
                "they may be corrupt: delete that folder and run again with data.download=true"
            ) from None
        out = []
        for ds in sets:
            data = torch.as_tensor(ds.data)
            x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
            out.append((x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)))
        return out

    def _expected(self, root: Path) -> str:
        return f"{root / self.folder}/ with {', '.join(self.files)}"

    def _download(self, root: Path) -> None:
        why = None
        for url in self.urls:
            why = _reachable(url)
            if why is None:
                break
        if why is not None:
            raise DataError(
                f"data={self.name}: the files are not under {root} and cannot be downloaded from {self.urls[0]} "
                f"({why}; no network?). Expected {self._expected(root)}: copy them there by hand, or point "
                f"data.root= at a folder that has them (data.download=true fetches {self.size_note} when online)"
            )
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60)
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._fetch(root)
        except Exception as e:  # noqa: BLE001 - any failure here is "the download did not work"
            raise DataError(
                f"data={self.name}: downloading into {root} failed ({type(e).__name__}: {e}). Expected "
                f"{self._expected(root)}: copy them there by hand, or retry (data.download=true)"
            ) from None
        finally:
            socket.setdefaulttimeout(old)

    def _fetch(self, root: Path) -> None:
        for train in (True, False):
            self._tv()(str(root), train=train, download=True)

    def arrays(self, cfg: DictConfig, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The official train and test splits at the set's own size and channels (fetched if allowed)."""
        self.describe(cfg)
        root = self.root(cfg)
        if not self._present(root):
            if not cfg.download:
                raise DataError(
                    f"data={self.name}: files not found: expected {self._expected(root)}. Pass data.root= a "
                    f"folder that holds {self.folder}/, or data.download=true to fetch it ({self.size_note})"
                )
            self._download(root)
        train, test = self._read(root)
        return {"train": train, "test": test}

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        parts = self.arrays(cfg, seed)
        (x_tr, y_tr), (x_te, y_te) = parts["train"], parts["test"]
        x_tr, test = fit_images(x_tr, cfg, info.in_channels), (fit_images(x_te, cfg, info.in_channels), y_te)
        if cfg.val_split > 0:
            train, val, split = split_arrays(x_tr, y_tr, cfg, seed, f"{self.name} official train split")
        else:
            train, val, split = (x_tr, y_tr), test, None
        return ArraySource(info, train, val, test, split)


class IdxSet(TorchvisionSet):
    """MNIST and Fashion-MNIST: each of the four IDX files as distributed (`.gz`) or extracted, read and
    checked by resexp (resexp/data/idx.py); torchvision only downloads them."""

    counts = {"train": 60_000, "t10k": 10_000}
    image_shape = (28, 28)

    def _present(self, root: Path) -> bool:
        return all(idx.find(root / self.folder, f) for f in self.files)

    def _expected(self, root: Path) -> str:
        return f"{root / self.folder}/ with {', '.join(self.files)} (each may be .gz)"

    def _fetch(self, root: Path) -> None:
        """Download next to the user's files and move in only the missing ones: a partial or repackaged
        copy (other archive checksums) is never overwritten."""
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            super()._fetch(Path(tmp))
            dest = root / self.folder
            dest.mkdir(parents=True, exist_ok=True)
            for f in self.files:
                if not idx.find(dest, f):
                    os.replace(Path(tmp, self.folder, f"{f}.gz"), dest / f"{f}.gz")

    def _read(self, root: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for split, n in self.counts.items():
            x = idx.read(idx.find(root / self.folder, f"{split}-images-idx3-ubyte"), n, self.image_shape)
            label_file = idx.find(root / self.folder, f"{split}-labels-idx1-ubyte")
            y = idx.read(label_file, n, ())
            if y.max(initial=0) >= len(self.classes):
                raise DataError(f"{label_file} has label {y.max()}; data={self.name} has {len(self.classes)} "
                                "classes: is it the right file?")
            out.append((torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
        return out


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
TORCHVISION_SETS = [
    TorchvisionSet(
        "cifar10", "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
         "batches.meta"),
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",), 3,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), "163 MB",
    ),
    TorchvisionSet(
        "cifar100", "cifar-100-python", ("train", "test", "meta"),
        ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",), 3, tuple(CIFAR100_CLASSES), "161 MB",
    ),
    IdxSet(
        "mnist", "MNIST/raw", _MNIST_FILES,
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), 1,
        tuple(str(i) for i in range(10)), "12 MB",
    ),
    IdxSet(
        "fashion_mnist", "FashionMNIST/raw", _MNIST_FILES,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), 1,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"), "31 MB",
    ),
]
