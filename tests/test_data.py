"""resexp.data: data sets, splits, both loading paths, determinism, sharding, bad input, errors."""

from __future__ import annotations

import logging
import math
import os
import pickle
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from resexp.config import compose, conf_dir
from resexp.data import DATASETS, DataBundle, DataInfo, Loader, build_data, describe, preprocess_image
from resexp.data.memory import MemoryLoader
from resexp.data.stream import StreamLoader, TensorDataset
from resexp.errors import ConfigError, DataError


def data_cfg(name: str, **over):
    """conf/data/<name>.yaml with dotted overrides, as the command line would give it."""
    base = OmegaConf.load(conf_dir() / "data" / f"{name}.yaml")
    base.pop("defaults")  # the schema it names: as_cfg picks it by name
    dots = [f"{k.replace('__', '.')}={'null' if v is None else v}" for k, v in over.items()]
    return OmegaConf.merge(base, OmegaConf.from_dotlist(dots))


def batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def ids_loader(n=103, *, train, bs=8, rank=0, world_size=1, size=8, augment=None, seed=0, shuffle=True):
    """A MemoryLoader whose 'labels' are the sample ids, to follow samples through the schedule."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    aug = OmegaConf.structured(
        {"crop_padding": 0, "flip": False, "random_resized_crop": False, "policy": "none", "random_erasing": 0.0}
    )
    if augment:
        aug = OmegaConf.merge(aug, augment)
    return MemoryLoader(x, torch.arange(n), batch_size=bs, train=train, image_size=size, mean=None, std=None,
                        augment_cfg=aug, seed=seed, rank=rank, world_size=world_size, shuffle=shuffle), x


# --------------------------------------------------------------------------------------- fixtures
def _pattern(label: int, k: int, h=40, w=48) -> np.ndarray:
    rng = np.random.default_rng(100 * label + k)
    a = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    a[..., label % 3] += 150
    return a


def make_folder(root: Path, classes=("cat", "dog", "owl"), per_class=8, order=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(c, i) for c in classes for i in range(per_class)]
    for c, i in (order(jobs) if order else jobs):
        (root / c).mkdir(exist_ok=True)
        Image.fromarray(_pattern(classes.index(c), i)).save(root / c / f"img_{i:02d}.jpg", quality=92)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "imgs")


def folder_cfg(root, **over):
    return data_cfg("image_folder", root=str(root), image_size=24, batch_size=5, num_workers=0, **over)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return build_data(data_cfg("digits", augment__crop_padding=2, augment__flip=True), seed=0)


# ------------------------------------------------------------------------------------------- sets
def test_registry_and_presets():
    assert {"digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist", "image_folder",
            "birds"} <= set(DATASETS.list())
    assert compose(["data=cifar10"]).data.augment.crop_padding == 4  # the preset composes into the schema
    for name in ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist"):
        info = describe(data_cfg(name))
        assert isinstance(info, DataInfo) and info.num_classes in (10, 100)
    c10 = describe(data_cfg("cifar10"))
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2023, 0.1994, 0.2010) and c10.image_size == 32
    assert describe(data_cfg("cifar100")).mean == (0.5, 0.5, 0.5)
    mn = describe(data_cfg("mnist"))
    assert (mn.in_channels, mn.image_size, mn.mean, mn.std) == (1, 28, (0.5,), (0.5,))
    assert describe(data_cfg("fashion_mnist")).class_names[0] == "T-shirt/top"


def test_digits_counts_shapes_and_stratified_split(digits):
    assert digits.info.num_classes == 10 and digits.info.in_channels == 1 and digits.info.image_size == 8
    assert digits.train.num_samples + digits.val.num_samples == 1797
    assert digits.val.num_samples == 359 and digits.test is None  # round(0.2 * 1797)
    val_y = torch.cat([y for _, y in digits.val])
    counts = torch.bincount(val_y, minlength=10)
    from sklearn.datasets import load_digits

    full = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert ((counts.float() - 0.2 * full).abs() <= 1).all()
    x, y = next(iter(digits.train))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.dtype == torch.int64 and y.shape == (64,)
    assert isinstance(digits.train, Loader) and isinstance(digits.val, Loader)
    assert len(digits.train) == -(-digits.train.num_samples // 64)
    assert len(digits.val) == -(-359 // 128)  # eval batches default to 2 x batch_size
    assert digits.split["val_split"] == 0.2 and len(digits.split["val_indices"]) == 359


def test_digits_read_from_sklearns_file_equal_load_digits_and_fall_back_to_it(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from sklearn.datasets import load_digits

    from resexp.data import offline_sets as sets

    reference = load_digits()
    images, target = sets.load_digits_arrays()  # the shipped CSV, read directly
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    moved = SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # a scikit-learn without the file
    monkeypatch.setattr(sets.importlib.util, "find_spec", lambda name: moved)
    images, target = sets.load_digits_arrays()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)


def test_digits_channels_override_and_normalisation():
    b = build_data(data_cfg("digits", channels=3, image_size=16, batch_size=32), seed=0)
    assert b.info.in_channels == 3 and b.info.mean == (0.3055,) * 3
    x, _ = next(iter(b.val))
    assert x.shape == (64, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1])
    raw = build_data(data_cfg("digits", mean=None, std=None), seed=0)
    xr, _ = next(iter(raw.val))
    assert xr.min() >= 0 and xr.max() <= 1 and raw.info.mean is None


def test_synthetic_generated_by_seed():
    cfg = data_cfg("synthetic", num_samples=300, image_size=12, channels=1, num_classes=4, batch_size=32)
    a, b, c = build_data(cfg, seed=3), build_data(cfg, seed=3), build_data(cfg, seed=4)
    assert a.info.num_classes == 4 and a.info.in_channels == 1
    assert a.train.num_samples + a.val.num_samples == 300 and a.val.num_samples == 60
    x, y = next(iter(a.train))
    assert x.shape == (32, 1, 12, 12) and int(y.max()) < 4
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    # learnable: class means are far apart compared with the noise
    imgs, labels = a.train.images.float(), a.train.labels
    means = torch.stack([imgs[labels == k].mean(0) for k in range(4)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100


def test_synthetic_generation_is_fast():
    t = time.perf_counter()
    b = build_data(data_cfg("synthetic", num_samples=10000, image_size=32), seed=0)
    assert b.train.num_samples + b.val.num_samples == 10000
    assert time.perf_counter() - t < 10.0  # vectorised: about 0.5 s on 2 idle cores


# --------------------------------------------------------------------------------- determinism
def test_same_seed_same_batches_and_epochs_differ():
    cfg = data_cfg("synthetic", num_samples=200, image_size=16, batch_size=32, augment__crop_padding=2,
                   augment__flip=True, augment__random_erasing=0.5)
    a, b = build_data(cfg, seed=7), build_data(cfg, seed=7)
    e0 = batches(a.train, 0)
    assert same(e0, batches(b.train, 0))
    e1 = batches(a.train, 1)
    assert not torch.equal(torch.cat([y for _, y in e0]), torch.cat([y for _, y in e1]))
    assert same(e0, batches(a.train, 0))  # re-iterating an epoch repeats it
    other = build_data(cfg, seed=8)
    assert not same(e0, batches(other.train, 0))


@pytest.mark.parametrize("policy", ["none", "trivialaugment"])
def test_start_batch_resumes_exactly_memory(policy):
    loader, _ = ids_loader(100, train=True, bs=8, augment={"crop_padding": 2, "flip": True, "policy": policy,
                                                           "random_erasing": 0.3})
    full = batches(loader, 2)
    assert same(batches(loader, 2, start=5), full[5:])
    assert batches(loader, 2, start=len(loader)) == []


def test_start_batch_resumes_exactly_stream(folder):
    b = build_data(folder_cfg(folder, augment__flip=True, augment__random_resized_crop=True,
                              augment__policy="randaugment"), seed=1)
    full = batches(b.train, 3)
    assert len(full) == len(b.train) == 4  # 19 train images, batch 5, last batch of 4
    assert same(batches(b.train, 3, start=2), full[2:])
    assert same(full, batches(b.train, 3))


def test_stream_workers_do_not_change_batches(folder):
    cfg = folder_cfg(folder, augment__flip=True, augment__crop_padding=3)
    zero = build_data(cfg, seed=2)
    two = build_data(data_cfg("image_folder", root=str(folder), image_size=24, batch_size=5, num_workers=2,
                              augment__flip=True, augment__crop_padding=3), seed=2)
    assert same(batches(zero.train, 1), batches(two.train, 1))
    assert same(batches(zero.val), batches(two.val))


# ------------------------------------------------------------------------------- counts, sharding
@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_sharding_two_ranks(kind):
    n, bs = 103, 8

    def make(rank, train):
        if kind == "memory":
            return ids_loader(n, train=train, bs=bs, rank=rank, world_size=2)[0]
        ds = TensorDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), lambda t: t.float())
        return StreamLoader(ds, batch_size=bs, train=train, rank=rank, world_size=2)

    tr = [make(r, True) for r in (0, 1)]
    assert len(tr[0]) == len(tr[1]) and tr[0].num_samples == tr[1].num_samples == 51
    ids = [torch.cat([y for _, y in batches(t, 4)]) for t in tr]
    assert len(ids[0]) == len(ids[1]) == 51
    assert not set(ids[0].tolist()) & set(ids[1].tolist())
    va = [make(r, False) for r in (0, 1)]
    seen = torch.cat([torch.cat([y for _, y in batches(v)]) for v in va])
    assert sorted(seen.tolist()) == list(range(n))
    assert va[0].num_samples + va[1].num_samples == n


def test_train_covers_and_drops_single_sample_batch():
    loader, _ = ids_loader(2 * 8 + 1, train=True, bs=8)
    got = batches(loader)
    assert [len(y) for _, y in got] == [8, 8] and loader.num_samples == 16 and len(loader) == 2
    loader, _ = ids_loader(2 * 8 + 3, train=True, bs=8)
    got = batches(loader)
    assert [len(y) for _, y in got] == [8, 8, 3]  # drop_last=False otherwise
    assert sorted(torch.cat([y for _, y in got]).tolist()) == list(range(19))


def test_val_every_sample_once_in_order(digits):
    loader, _ = ids_loader(50, train=False, bs=8)
    for epoch in (0, 1):
        assert torch.cat([y for _, y in batches(loader, epoch)]).tolist() == list(range(50))


# ---------------------------------------------------------------------------------- augmentation
def test_augmentation_off_at_eval(digits):
    v0, v1 = batches(digits.val, 0), batches(digits.val, 5)
    assert same(v0, v1)
    stored = digits.val.images.float() / 255
    mean, std = digits.info.mean[0], digits.info.std[0]
    got = torch.cat([x for x, _ in v0])
    assert torch.allclose(got, (stored - mean) / std, atol=1e-5)


def test_crop_and_flip_change_images_but_keep_labels():
    loader, x = ids_loader(40, train=True, bs=40, size=6, augment={"crop_padding": 2, "flip": True})
    out, ids = next(iter(loader))
    src = torch.nn.functional.pad(x.float() / 255, (2, 2, 2, 2))
    changed = 0
    for img, i in zip(out, ids, strict=True):
        s = src[i]
        candidates = [s[:, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.allclose(img, c) for c in candidates), "each output is a crop/flip of its own sample"
        changed += not torch.allclose(img, x[i].float() / 255)
    assert changed > 20


def test_flip_only_mirrors_some():
    loader, x = ids_loader(64, train=True, bs=64, augment={"flip": True})
    out, ids = next(iter(loader))
    orig = x[ids].float() / 255
    flipped = torch.tensor([not torch.allclose(o, s) for o, s in zip(out, orig, strict=True)])
    assert all(torch.allclose(o, s) or torch.allclose(o, s.flip(-1)) for o, s in zip(out, orig, strict=True))
    assert 10 < int(flipped.sum()) < 54


def test_memory_random_resized_crop_and_policies_shapes():
    for aug in ({"random_resized_crop": True}, {"policy": "randaugment"}, {"random_erasing": 1.0}):
        loader, _ = ids_loader(20, train=True, bs=10, size=16, augment=aug)
        x, y = next(iter(loader))
        assert x.shape == (10, 3, 16, 16) and x.dtype == torch.float32
    loader, _ = ids_loader(20, train=True, bs=10, size=16, augment={"random_erasing": 1.0})
    x, _ = next(iter(loader))
    assert ((x == 0).flatten(1).float().mean(1) >= 0.015).all()  # every image has an erased patch


@pytest.mark.parametrize("op, mag, ref", [
    ("Brightness", 0.5, lambda F, t: F.adjust_brightness(t, 1.5)),
    ("Color", -0.7, lambda F, t: F.adjust_saturation(t, 0.3)),
    ("Contrast", 0.6, lambda F, t: F.adjust_contrast(t, 1.6)),
    ("Sharpness", 0.9, lambda F, t: F.adjust_sharpness(t, 1.9)),
    ("Posterize", 3, lambda F, t: F.posterize(t, 3)),
    ("Solarize", 0.4, lambda F, t: F.solarize(t, 255 * 0.4)),
    ("AutoContrast", 0, lambda F, t: F.autocontrast(t)),
    ("Equalize", 0, lambda F, t: F.equalize(t)),
    ("TranslateX", -5.7, lambda F, t: F.affine(t, angle=0.0, translate=[-5, 0], scale=1.0, shear=[0.0, 0.0])),
    ("ShearY", 0.3, lambda F, t: F.affine(t, angle=0.0, translate=[0, 0], scale=1.0,
                                          shear=[0.0, math.degrees(math.atan(0.3))], center=[0, 0])),
    ("Rotate", -77.0, lambda F, t: F.rotate(t, -77.0)),
])
def test_batched_policy_ops_match_torchvision(op, mag, ref):
    import torchvision.transforms.v2.functional as F

    from resexp.data.augment import _OPS, apply_ops

    x = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = apply_ops(x, torch.full((4,), _OPS.index(op)), torch.full((4,), float(mag)))
    expected = torch.stack([ref(F, t) for t in x])
    assert (out.int() - expected.int()).abs().max() <= 1  # colour ops may round differently by 1


def test_batched_policies_vary_per_image():
    from resexp.data.augment import batched_policy

    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name in ("trivialaugment", "randaugment"):
        a = batched_policy(x, name, torch.Generator().manual_seed(1))
        assert torch.equal(a, batched_policy(x, name, torch.Generator().manual_seed(1)))
        changed = (a != x).flatten(1).any(1)
        assert a.dtype == torch.uint8 and 10 < int(changed.sum()) <= 64


def test_stream_path_for_an_in_memory_set():
    cfg = data_cfg("synthetic", num_samples=120, image_size=16, batch_size=16, loader="stream", num_workers=0,
                   augment__flip=True)
    b = build_data(cfg, seed=0)
    assert isinstance(b.train, StreamLoader)
    x, y = next(iter(b.train))
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    mem = build_data(OmegaConf.merge(cfg, {"loader": "memory"}), seed=0)
    assert torch.allclose(torch.cat([x for x, _ in mem.val]), torch.cat([x for x, _ in b.val]), atol=1e-5)


def test_unknown_policy_and_bad_choices():
    with pytest.raises(ConfigError, match="trivialaugment, randaugment"):
        build_data(data_cfg("synthetic", augment__policy="autoaugment"))
    with pytest.raises(ConfigError, match="error, skip"):
        build_data(folder_cfg("/nonexistent", on_bad_file="ignore"))
    with pytest.raises(ConfigError, match="data.on_bad_file is not a key of data name=synthetic"):
        build_data(data_cfg("synthetic", on_bad_file="skip"))
    with pytest.raises(ConfigError, match="auto, memory, stream"):
        build_data(data_cfg("synthetic", loader="disk"))
    with pytest.raises(ConfigError, match="choose one of: .*digits"):
        build_data(OmegaConf.merge(data_cfg("synthetic"), {"name": "imagenet"}))
    with pytest.raises(ConfigError, match="data.mean has 3 values"):
        describe(data_cfg("digits", mean=[0.1, 0.2, 0.3], std=[1, 1, 1]))
    with pytest.raises(DataError, match="data.num_classes=7 but data=digits has 10"):
        describe(data_cfg("digits", num_classes=7))


# ------------------------------------------------------------------------------------ image folder
@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_image_folder_batches(folder, loader):
    b = build_data(folder_cfg(folder, loader=loader, augment__crop_padding=2, augment__flip=True), seed=0)
    assert b.info.class_names == ["cat", "dog", "owl"] and b.info.in_channels == 3 and b.info.image_size == 24
    assert b.train.num_samples + b.val.num_samples == 24
    assert b.val.num_samples == 5 and b.skipped == 0  # round(0.2 * 24), stratified
    x, y = next(iter(b.train))
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in b.val]).tolist()) == [0, 0, 1, 1, 2]
    assert isinstance(b.train, StreamLoader if loader == "stream" else MemoryLoader)


def test_split_stable_recorded_and_independent_of_listing_order(tmp_path):
    a = make_folder(tmp_path / "a", per_class=10)
    b = make_folder(tmp_path / "b", per_class=10, order=lambda jobs: list(reversed(jobs)))
    sa = build_data(folder_cfg(a), seed=5).split
    assert sa == {**build_data(folder_cfg(a), seed=5).split}
    sb = build_data(folder_cfg(b), seed=5).split
    assert sa["train"] == sb["train"] and sa["val"] == sb["val"]
    assert sa["seed"] == 5 and sa["class_names"] == ["cat", "dog", "owl"]
    assert len(sa["val"]) == 6 and len(sa["train"]) == 24 and not set(sa["val"]) & set(sa["train"])
    assert all(p.count("/") == 1 and not p.startswith("/") for p in sa["val"])  # relative POSIX paths
    assert sorted(p.split("/")[0] for p in sa["val"]) == ["cat", "cat", "dog", "dog", "owl", "owl"]
    assert build_data(folder_cfg(a), seed=6).split["val"] != sa["val"]


def test_preprocess_image_matches_eval_path(folder):
    cfg = folder_cfg(folder)
    stream = build_data(cfg, seed=0)
    memory = build_data(OmegaConf.merge(cfg, {"loader": "memory"}), seed=0)
    first = stream.split["val"][0]
    xs, _ = next(iter(stream.val))
    xm, _ = next(iter(memory.val))
    with Image.open(folder / first) as im:
        p = preprocess_image(im, cfg)
    assert p.shape == (3, 24, 24) and p.dtype == torch.float32
    assert torch.equal(p, xs[0])
    assert torch.allclose(p, xm[0], atol=1e-5)
    # non-square, big and grayscale input: shorter side resized, centre crop, channels converted
    big = Image.fromarray(np.full((300, 200), 128, dtype=np.uint8), "L")
    assert preprocess_image(big, cfg).shape == (3, 24, 24)
    d = preprocess_image(Image.new("RGB", (8, 8), (255, 255, 255)), data_cfg("digits"))
    assert d.shape == (1, 8, 8) and torch.allclose(d, torch.full_like(d, (1 - 0.3055) / 0.376))


def test_preprocess_image_needs_no_data_files(tmp_path):
    img = Image.fromarray(_pattern(0, 0, 300, 400))
    for cfg in (compose(["data=birds"]).data, data_cfg("birds", root=str(tmp_path / "gone"))):
        x = preprocess_image(img, cfg)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_describe_is_cheap(folder, monkeypatch):
    import resexp.data.folder_sets as sets
    import resexp.data.images as images

    def boom(*a, **k):
        raise AssertionError("describe() must not decode images")

    monkeypatch.setattr(images, "open_image", boom)
    monkeypatch.setattr(sets, "find_bad_images_cached", boom)
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    info = describe(folder_cfg(folder))
    assert info.num_classes == 3 and info.class_names == ["cat", "dog", "owl"] and info.mean[0] == 0.485
    import sklearn.datasets

    monkeypatch.setattr(sklearn.datasets, "load_digits", boom)
    assert describe(data_cfg("digits")).num_classes == 10
    assert describe(data_cfg("cifar10", root=str(folder), download=False)).num_classes == 10


# ------------------------------------------------------------------------------------------ errors
def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.root {missing} does not exist"):
        build_data(folder_cfg(missing))
    with pytest.raises(DataError, match="does not exist"):
        describe(folder_cfg(missing))


def test_birds_needs_a_root():
    msg = ("data.root is required for data=birds: pass data.root=/path/to/birds "
           "(a folder with one sub-folder per class)")
    cfg = compose(["data=birds"]).data
    with pytest.raises(ConfigError) as e:
        build_data(cfg)
    assert str(e.value) == msg
    with pytest.raises(ConfigError, match="data.root is required for data=birds"):
        describe(cfg)


def test_birds_preset_checks_class_count(folder):
    with pytest.raises(DataError, match="data.num_classes=4 but .* has 3 classes"):
        describe(compose(["data=birds", f"data.root={folder}"]).data)


def test_root_without_class_folders(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=f"data.root {tmp_path} has no class folders"):
        build_data(folder_cfg(tmp_path))


def test_empty_class_folder_is_named(folder):
    (folder / "zebra").mkdir()
    (folder / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"class folder.* without images .*{folder / 'zebra'}"):
        build_data(folder_cfg(folder))


def test_empty_validation_split_is_an_error(tmp_path):
    root = make_folder(tmp_path / "tiny", per_class=1)
    with pytest.raises(DataError, match="validation split .* is empty"):
        build_data(folder_cfg(root))


def test_cifar10_without_files_and_no_download(tmp_path):
    with pytest.raises(DataError) as e:
        build_data(data_cfg("cifar10", root=str(tmp_path), download=False))
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg and "test_batch" in msg
    assert "data.root=" in msg and "data.download=true" in msg and "\n" not in msg


def test_cifar10_download_offline_fails_fast(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        build_data(data_cfg("cifar10", root=str(tmp_path), download=True))
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg and "cannot be downloaded" in msg
    assert "data.root=" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- torchvision formats
def _write_idx(path: Path, arr: np.ndarray):
    magic = (0x08 << 8) | arr.ndim  # unsigned bytes
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def test_mnist_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setattr(type(DATASETS.get("mnist")), "counts", {"train": 60, "t10k": 20})  # a small set
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    b = build_data(data_cfg("mnist", root=str(tmp_path), download=False, batch_size=16), seed=0)
    assert b.train.num_samples + b.val.num_samples == 60 and b.val.num_samples == 6
    assert b.test is not None and b.test.num_samples == 20
    x, y = next(iter(b.test))
    assert x.shape == (20, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    same_val = build_data(data_cfg("mnist", root=str(tmp_path), download=False, val_split=0), seed=0)
    assert same_val.val is same_val.test and same_val.train.num_samples == 60
    up = build_data(data_cfg("mnist", root=str(tmp_path), download=False, image_size=32, channels=3), seed=0)
    assert next(iter(up.train))[0].shape[1:] == (3, 32, 32)


def test_mnist_count_and_label_checks_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(type(DATASETS.get("mnist")), "counts", {"train": 60, "t10k": 20})
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 19)):  # one test image short: never a silent partial set
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    cfg = data_cfg("mnist", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds images of shape \(19, 28, 28\), expected "
                                        r"\(20, 28, 28\)"):
        build_data(cfg)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte has label 12; data=mnist has 10 classes"):
        build_data(cfg)


def test_mnist_download_moves_in_only_the_missing_files(tmp_path, monkeypatch):
    """The user's own (here: repackaged) .gz stays as it is; the downloaded rest is moved in beside it."""
    import resexp.data.torchvision_sets as sets

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    mine = raw / "train-images-idx3-ubyte.gz"
    mine.write_bytes(b"the user's copy")

    def fake_download(self, root):  # what torchvision's download leaves: <root>/MNIST/raw/*.gz (+ extracted)
        (root / self.folder).mkdir(parents=True)
        for f in self.files:
            (root / self.folder / f"{f}.gz").write_bytes(b"downloaded")
            (root / self.folder / f).write_bytes(b"extracted")

    monkeypatch.setattr(sets, "_reachable", lambda url, timeout=5.0: None)
    monkeypatch.setattr(sets.TorchvisionSet, "_fetch", fake_download)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"the user's extracted copy")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):  # the user's own file is what is read
        build_data(data_cfg("mnist", root=str(tmp_path), download=True))
    assert mine.read_bytes() == b"the user's copy"
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"the user's extracted copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]  # no download folder left behind
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte",
                                                     "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert (raw / "t10k-images-idx3-ubyte.gz").read_bytes() == b"downloaded"


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our fake files have other md5s
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        blob = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(np.arange(20) % 10)}
        with open(d / name, "wb") as f:
            pickle.dump(blob, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    b = build_data(data_cfg("cifar10", root=str(tmp_path), download=False, batch_size=16), seed=0)
    assert b.train.num_samples + b.val.num_samples == 100 and b.test.num_samples == 20
    x, _ = next(iter(b.train))
    assert x.shape == (16, 3, 32, 32)
    # the stored layout is NCHW taken from the NHWC array: channel 0 of image 0 is the first 1024 bytes
    with open(d / "test_batch", "rb") as f:
        first = pickle.load(f)["data"][0][:1024].reshape(32, 32)
    assert torch.equal(b.test.images[0, 0], torch.from_numpy(first))


# --------------------------------------------------------------------------------------- bad files
def _jpeg_bytes(seed=0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(_pattern(0, seed, 64, 64)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


BAD_FILES = {
    "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10,
    "truncated.jpg": _jpeg_bytes()[: len(_jpeg_bytes()) // 2],
    "empty.png": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_fails_at_start_with_its_path(folder, name):
    (folder / "dog" / name).write_bytes(BAD_FILES[name])
    with pytest.raises(DataError) as e:
        build_data(folder_cfg(folder))
    msg = str(e.value)
    assert str(folder / "dog" / name) in msg and "data.on_bad_file=skip" in msg and "\n" not in msg


def test_bad_files_skipped_with_one_warning(folder, caplog):
    for name, blob in BAD_FILES.items():
        (folder / "owl" / name).write_bytes(blob)
    with caplog.at_level(logging.WARNING, logger="resexp.data"):
        b = build_data(folder_cfg(folder, on_bad_file="skip"), seed=0)
    assert b.skipped == 3 and sorted(b.split["skipped"]) == sorted(f"owl/{n}" for n in BAD_FILES)
    warnings = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 1 and "3 unreadable" in warnings[0].getMessage()
    assert b.train.num_samples + b.val.num_samples == 24
    for loader in (b.train, b.val):
        for _ in batches(loader):
            pass


def test_file_broken_after_start_up_fails_with_its_path_not_a_traceback(folder):
    b = build_data(data_cfg("image_folder", root=str(folder), image_size=24, batch_size=5, num_workers=2), seed=0)
    victim = folder / b.split["train"][0]
    victim.write_bytes(b"")
    with pytest.raises(DataError) as e:
        batches(b.train)
    assert str(victim) in str(e.value) and "\n" not in str(e.value)


def test_non_image_files_are_ignored(folder):
    (folder / "cat" / "README.txt").write_text("about the cats")
    (folder / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "cat" / "._img_00.jpg").write_bytes(b"AppleDouble resource fork")
    (folder / ".hidden_class").mkdir()
    (folder / "notes.md").write_text("top-level files are not classes")
    b = build_data(folder_cfg(folder), seed=0)
    assert b.skipped == 0 and b.info.class_names == ["cat", "dog", "owl"]
    assert b.train.num_samples + b.val.num_samples == 24


def test_mixed_image_modes_are_converted(folder):
    gray = Image.fromarray(_pattern(1, 0, 30, 30)[..., 0], "L")
    gray.save(folder / "dog" / "gray.png")
    Image.fromarray(_pattern(1, 1, 30, 30)).convert("CMYK").save(folder / "dog" / "cmyk.jpg")
    rgba = Image.fromarray(_pattern(1, 2, 30, 30)).convert("RGBA")
    rgba.putalpha(Image.new("L", (30, 30), 0))
    rgba.save(folder / "dog" / "rgba.png")
    Image.fromarray(_pattern(1, 3, 30, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "dog" / "p.png")
    Image.fromarray(_pattern(1, 4, 30, 30)).convert("P").save(folder / "dog" / "p_t.gif", transparency=0)
    Image.fromarray(np.full((30, 30), 65535, dtype=np.uint16)).save(folder / "dog" / "deep16.png")
    assert Image.open(folder / "dog" / "deep16.png").mode.startswith("I")
    Image.fromarray(_pattern(1, 5, 30, 30)).save(folder / "dog" / "pic.BMP")
    for loader in ("stream", "memory"):
        b = build_data(folder_cfg(folder, loader=loader, mean=None, std=None, val_split=0.1), seed=0)
        assert b.skipped == 0 and b.train.num_samples + b.val.num_samples == 31
        for x, _ in batches(b.train) + batches(b.val):
            assert x.shape[1:] == (3, 24, 24)
    one = folder_cfg(folder, channels=1, mean=None, std=None)
    with Image.open(folder / "dog" / "deep16.png") as im:
        white = preprocess_image(im, one)
    assert white.shape == (1, 24, 24) and torch.allclose(white, torch.ones_like(white))
    with Image.open(folder / "dog" / "rgba.png") as im:  # fully transparent: composited onto white
        assert torch.allclose(preprocess_image(im, OmegaConf.merge(one, {"channels": 3})), torch.ones(3, 24, 24))
    g1 = build_data(one, seed=0)
    assert next(iter(g1.train))[0].shape[1] == 1


# ------------------------------------------------------------------------------------------- device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_path_on_cuda_matches_cpu():
    cfg = data_cfg("synthetic", num_samples=300, image_size=16, batch_size=32, augment__crop_padding=2,
                   augment__flip=True, augment__random_erasing=0.5, augment__random_resized_crop=True)
    cpu, gpu = build_data(cfg, seed=1), build_data(cfg, seed=1, device="cuda")
    for (xc, yc), (xg, yg) in zip(batches(cpu.train, 2), batches(gpu.train, 2), strict=True):
        assert xg.is_cuda and yg.is_cuda and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_image_folder_on_cuda_pinned_stream_and_device_memory(folder):
    stream = build_data(folder_cfg(folder), seed=0, device="cuda")
    x, y = next(iter(stream.train))
    assert x.device.type == "cpu" and x.is_pinned() and y.is_pinned()
    memory = build_data(folder_cfg(folder, loader="memory", augment__random_resized_crop=True), seed=0,
                        device="cuda")
    xm, ym = next(iter(memory.train))
    assert xm.is_cuda and ym.is_cuda and xm.shape == x.shape


# ------------------------------------------------------------------------------ bad-file check cache
def _settle(folder: Path) -> None:
    """Files written an hour ago: the cache leaves out files written within its clock tick."""
    old = time.time() - 3600
    for p in folder.rglob("*.jpg"):
        os.utime(p, (old, old))


def _count_decodes(monkeypatch) -> list:
    import resexp.data.images as images

    seen = []
    real = images._check

    def counting(path, channels):
        seen.append(Path(path).name)
        return real(path, channels)

    monkeypatch.setattr(images, "_check", counting)
    return seen


def test_bad_file_check_is_cached_and_a_changed_file_checked_again(folder, monkeypatch):
    _settle(folder)
    decoded = _count_decodes(monkeypatch)
    build_data(folder_cfg(folder))
    assert len(decoded) == 24
    decoded.clear()
    build_data(folder_cfg(folder), seed=1)  # a second run, a resume, a sweep job: nothing decoded again
    assert decoded == []
    changed = folder / "cat" / "img_03.jpg"
    changed.write_bytes(_jpeg_bytes(seed=7))  # a new mtime (and size): checked again
    (folder / "dog" / "new.jpg").write_bytes(_jpeg_bytes(seed=8))
    build_data(folder_cfg(folder))
    assert sorted(decoded) == ["img_03.jpg", "new.jpg"]
    decoded.clear()
    build_data(folder_cfg(folder))
    assert sorted(decoded) == ["img_03.jpg", "new.jpg"]  # written just now: not trusted to the cache yet
    victim = folder / "owl" / "img_05.jpg"
    victim.write_bytes(victim.read_bytes()[:300])  # damaged after it was cached
    with pytest.raises(DataError, match="img_05.jpg") as e:
        build_data(folder_cfg(folder))
    assert "\n" not in str(e.value)


def test_damage_that_keeps_size_and_mtime_is_caught_when_read(folder):
    _settle(folder)
    build_data(folder_cfg(folder))
    b = build_data(folder_cfg(folder))
    victim = folder / b.split["train"][0]
    st = victim.stat()
    victim.write_bytes(b"\xff\xd8" + b"\x00" * (st.st_size - 2))  # same size...
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and mtime: the cache cannot tell
    b = build_data(folder_cfg(folder))
    with pytest.raises(DataError) as e:
        batches(b.train)
    assert str(victim) in str(e.value) and "\n" not in str(e.value)


def test_bad_file_cache_lives_in_the_user_cache_folder_and_survives_damage(folder, tmp_path, monkeypatch, caplog):
    from resexp.data import scan_cache

    monkeypatch.setenv("RESEXP_CACHE", str(tmp_path / "cache"))
    _settle(folder)
    build_data(folder_cfg(folder))
    path = scan_cache.cache_file(folder, 3)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    assert not any(p.suffix == ".npz" for p in folder.rglob("*"))  # nothing written next to the data
    path.write_bytes(b"garbage")
    decoded = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="resexp.data"):
        build_data(folder_cfg(folder))
    assert len(decoded) == 24 and "ignoring the unreadable bad-file cache" in caplog.text
