"""The data sets: each one describes itself cheaply and loads into an ArraySource or a FileSource.

Registered in resexp.data.DATASETS under the names the conf/data/*.yaml files use in `name:`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import DictConfig

from resexp.data import idx
from resexp.data.common import (
    check_num_classes,
    convert_channels,
    generator,
    is_missing,
    norm_stats,
    resize_uint8,
    stratified_split,
)
from resexp.data.images import class_folders, find_bad_images, list_images, open_image, report_bad
from resexp.data.types import ArraySource, DataInfo, FileSource
from resexp.errors import ConfigError, DataError

log = logging.getLogger("resexp.data")

RESIZE_AT_LOAD_LIMIT = 2 << 30  # bytes: larger resized sets are kept at their own size, resized per batch


def _info(cfg: DictConfig, num_classes: int, channels: int, names: list[str]) -> DataInfo:
    mean, std = norm_stats(cfg, channels)
    return DataInfo(num_classes=num_classes, in_channels=channels, image_size=int(cfg.image_size),
                    class_names=list(names), mean=mean, std=std)


def _fit(x: torch.Tensor, cfg: DictConfig, channels: int) -> torch.Tensor:
    """uint8 NCHW -> the configured channels, and resized to image_size when that stays small."""
    x = convert_channels(x, channels)
    s = cfg.image_size
    if x.shape[0] * channels * s * s <= RESIZE_AT_LOAD_LIMIT:
        x = resize_uint8(x, s)
    return x


def _need_val_split(cfg: DictConfig, name: str) -> None:
    if cfg.val_split <= 0:
        raise ConfigError(
            f"data.val_split={cfg.val_split} leaves no validation data for data={name} (it has no separate "
            "test split): pass e.g. data.val_split=0.2"
        )


def _check_val(n_val: int, n: int, cfg: DictConfig, what: str) -> None:
    if n_val == 0:
        raise DataError(
            f"the validation split of {what} is empty ({n} samples, data.val_split={cfg.val_split}, and every "
            "class keeps at least one training sample): raise data.val_split or add data"
        )


def _split_arrays(x, y, cfg: DictConfig, seed: int, what: str):
    tr, va = stratified_split(y, cfg.val_split, seed)
    _check_val(len(va), len(y), cfg, what)
    split = {"seed": seed, "val_split": float(cfg.val_split), "source": what, "val_indices": va.tolist()}
    return (x[tr], y[tr]), (x[va], y[va]), split


# ------------------------------------------------------------------------------------------ digits
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797x8x8 float, targets 1797 int) as sklearn.datasets.load_digits gives them, read from
    the CSV file scikit-learn ships, found without importing sklearn.datasets (2 s of the default job's
    start-up); load_digits itself if the file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


class Digits:
    """scikit-learn's 1,797 8x8 digits (shipped with the package: offline), upscaled once at load."""

    name = "digits"
    native_channels = 1

    def describe(self, cfg: DictConfig) -> DataInfo:
        check_num_classes(cfg, 10, "data=digits")
        return _info(cfg, 10, cfg.channels or self.native_channels, [str(i) for i in range(10)])

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        _need_val_split(cfg, self.name)
        images, target = load_digits_arrays()
        x = torch.from_numpy(images).mul(255.0 / 16.0).round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1)
        y = torch.from_numpy(target).to(torch.int64)
        x = _fit(x, cfg, info.in_channels)
        train, val, split = _split_arrays(x, y, cfg, seed, "sklearn.datasets.load_digits")
        return ArraySource(info, train, val, None, split)


# --------------------------------------------------------------------------------------- synthetic
class Synthetic:
    """Learnable generated images: per class a random low-frequency template, per sample noise and
    a brightness/contrast jitter. Any size, channels, classes; a pure function of the seed."""

    name = "synthetic"
    native_channels = 3

    def describe(self, cfg: DictConfig) -> DataInfo:
        k = cfg.num_classes or 10
        return _info(cfg, k, cfg.channels or self.native_channels, [f"class_{i}" for i in range(k)])

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        _need_val_split(cfg, self.name)
        n, k, c, s = int(cfg.num_samples), info.num_classes, info.in_channels, int(cfg.image_size)
        if n < 2 * k:
            raise ConfigError(f"data.num_samples={n} is too few for {k} classes: give at least {2 * k}")
        g = generator(seed, "synthetic")
        low = torch.randn(k, c, 4, 4, generator=g)
        templates = torch.nn.functional.interpolate(low, size=(s, s), mode="bicubic", align_corners=False)
        templates = templates / templates.flatten(1).std(1).view(k, 1, 1, 1) * 45.0
        y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        x = torch.empty(n, c, s, s, dtype=torch.uint8)
        chunk = 8192
        for i in range(0, n, chunk):
            yi = y[i : i + chunk]
            m = len(yi)
            contrast = torch.empty(m, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
            bright = torch.empty(m, 1, 1, 1).uniform_(-20, 20, generator=g)
            noise = torch.randn(m, c, s, s, generator=g).mul_(35.0)
            img = templates[yi].mul_(contrast).add_(bright).add_(noise).add_(128.0)
            x[i : i + chunk] = img.round_().clamp_(0, 255).to(torch.uint8)
        train, val, split = _split_arrays(x, y, cfg, seed, f"synthetic(seed={seed})")
        return ArraySource(info, train, val, None, split)


# ------------------------------------------------------------------------------------- torchvision
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
        return _info(cfg, len(self.classes), cfg.channels or self.channels, list(self.classes))

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

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        root = self.root(cfg)
        if not self._present(root):
            if not cfg.download:
                raise DataError(
                    f"data={self.name}: files not found: expected {self._expected(root)}. Pass data.root= a "
                    f"folder that holds {self.folder}/, or data.download=true to fetch it ({self.size_note})"
                )
            self._download(root)
        (x_tr, y_tr), (x_te, y_te) = self._read(root)
        x_tr, test = _fit(x_tr, cfg, info.in_channels), (_fit(x_te, cfg, info.in_channels), y_te)
        if cfg.val_split > 0:
            train, val, split = _split_arrays(x_tr, y_tr, cfg, seed, f"{self.name} official train split")
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


# ------------------------------------------------------------------------------------ image folder
class ImageFolder:
    """Any root/<class>/<image> tree (see resexp/data/images.py for the rules), streamed from disk."""

    name = "image_folder"
    native_channels = 3

    def root(self, cfg: DictConfig) -> Path:
        if is_missing(cfg, "root"):
            raise ConfigError(
                f"data.root is required for data={self.name}: pass data.root=/path/to/{self._example} "
                "(a folder with one sub-folder per class)"
            )
        return Path(str(cfg.root)).expanduser()

    _example = "images"

    def describe(self, cfg: DictConfig) -> DataInfo:
        root = self.root(cfg)
        names = class_folders(root, self.name)
        check_num_classes(cfg, len(names), f"data.root {root}", names)
        return _info(cfg, len(names), cfg.channels or self.native_channels, names)

    def load(self, cfg: DictConfig, seed: int) -> FileSource:
        root = self.root(cfg)
        _need_val_split(cfg, self.name)
        names, files = list_images(root, self.name)
        check_num_classes(cfg, len(names), f"data.root {root}", names)
        info = _info(cfg, len(names), cfg.channels or self.native_channels, names)
        bad = find_bad_images([root / p for p, _ in files], info.in_channels)
        report_bad(bad, root, cfg.on_bad_file)
        skipped = []
        if bad:
            bad_rel = {Path(p).relative_to(root).as_posix() for p, _ in bad}
            skipped = sorted(bad_rel)
            files = [(p, lab) for p, lab in files if p not in bad_rel]
            left = {lab for _, lab in files}
            gone = [str(root / n) for i, n in enumerate(names) if i not in left]
            if gone:
                raise DataError(
                    f"class folder(s) with no readable image left after skipping bad files: {', '.join(gone)}; "
                    "fix the files or remove the folder(s)"
                )
        labels = torch.tensor([lab for _, lab in files], dtype=torch.int64)
        tr, va = stratified_split(labels, cfg.val_split, seed)
        _check_val(len(va), len(labels), cfg, f"data.root {root}")
        # a class with too few images keeps them all for training: its accuracy goes unmeasured
        unvalidated = sorted(set(range(len(names))) - set(labels[va].tolist()))
        if unvalidated:
            log.warning(f"class(es) {', '.join(names[i] for i in unvalidated)} under data.root {root} have no "
                        f"validation image (data.val_split={cfg.val_split}): add images or raise data.val_split")
        train = [(root / files[i][0], files[i][1]) for i in tr.tolist()]
        val = [(root / files[i][0], files[i][1]) for i in va.tolist()]
        split = {
            "seed": seed,
            "val_split": float(cfg.val_split),
            "root": str(root),
            "class_names": names,
            "train": [files[i][0] for i in tr.tolist()],
            "val": [files[i][0] for i in va.tolist()],
            "skipped": skipped,
        }
        return FileSource(info, root, train, val, split, len(skipped))


class Birds(ImageFolder):
    """The seeds' bird photos (R4/R5): an image folder preset with 4 classes."""

    name = "birds"
    _example = "birds"


def decode_files(source: FileSource, cfg: DictConfig, device: torch.device) -> ArraySource:
    """An image folder decoded once (eval geometry: resize + centre crop) into uint8 tensors."""
    from resexp.data.augment import eval_uint8

    c, s = source.info.in_channels, source.info.image_size
    n = len(source.train) + len(source.val)
    need = n * c * s * s
    free = _free_bytes(device)
    if need > free // 2:
        raise ConfigError(
            f"data.loader=memory: {n} images at {c}x{s}x{s} need {need / 2**30:.2f} GiB, more than half of the "
            f"{free / 2**30:.2f} GiB free on {device}: use data.loader=stream (or auto)"
        )

    def one(item):
        return eval_uint8(open_image(item[0], c, (s, s)), s)

    out = []
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        for items in (source.train, source.val):
            x = torch.stack(list(pool.map(one, items, chunksize=16))) if items else torch.zeros(0, c, s, s,
                                                                                                 dtype=torch.uint8)
            y = torch.tensor([lab for _, lab in items], dtype=torch.int64)
            out.append((x, y))
    return ArraySource(source.info, out[0], out[1], None, source.split, source.skipped)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
