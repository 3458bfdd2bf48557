"""data=shards and `python -m resexp.pack`: the packed data equals its source, the schedule (order,
resume, ranks) is the streaming path's, an interrupted pack resumes, and damaged shards fail in one line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resexp.data import build_data
from resexp.data import packing as packing_mod
from resexp.errors import ConfigError, DataError
from resexp.pack import main as pack_main

ROOT = Path(__file__).resolve().parents[1]
SYN = {"name": "synthetic", "num_samples": 120, "image_size": 16, "num_classes": 4, "batch_size": 8,
       "val_split": 0.25, "mean": [0.5], "std": [0.25]}


def shards_cfg(root, **over):
    cfg = {**SYN, "name": "shards", "root": str(root), "num_workers": 0}
    cfg.pop("num_samples")
    cfg.pop("num_classes")
    return {**cfg, **over}


def batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.fixture(scope="module")
def packed_once(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "packed"
    assert pack_main(["data=synthetic", "data.num_samples=120", "data.image_size=16", "data.num_classes=4",
                      f"out={out}", "shard_size=16KB", "workers=2", "seed=0"]) == 0
    return out


@pytest.fixture
def packed(packed_once, tmp_path) -> Path:
    """A copy of the packed synthetic set that the test may damage."""
    return Path(shutil.copytree(packed_once, tmp_path / "packed"))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_pack_writes_webdataset_shards_with_manifest(packed):
    import tarfile

    m = _manifest(packed)
    entries = m["splits"]["train"]["shards"]
    assert len(entries) > 2 and m["splits"]["train"]["count"] == 120 and sum(e["nsamples"] for e in entries) == 120
    assert m["class_names"] == ["class_0", "class_1", "class_2", "class_3"] and m["channels"] == 3
    assert sum(m["splits"]["train"]["class_counts"]) == 120
    with tarfile.open(packed / entries[0]["url"]) as t:  # plain tar, WebDataset layout: <key>.png, <key>.cls
        names = t.getnames()
        assert names[:4] == ["000000000.png", "000000000.cls", "000000001.png", "000000001.cls"]
        assert Image.open(t.extractfile(names[0])).size == (16, 16)
    assert not (packed / ".pack").exists()


def test_shards_equal_their_source_and_keep_its_split(packed):
    """Same seed: the same validation images, the same batches (up to float rounding of the normalisation)."""
    mem = build_data({**SYN}, seed=0)  # the seed the fixture packed synthetic with
    sh = build_data(shards_cfg(packed), seed=0)
    assert sh.split["val_indices"] == mem.split["val_indices"]
    for a, b in ((mem.train, sh.train), (mem.val, sh.val)):
        assert len(a) == len(b) and a.num_samples == b.num_samples
        for (xa, ya), (xb, yb) in zip(batches(a, 1), batches(b, 1), strict=True):
            assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-5)


def test_shards_resume_mid_epoch_bit_exact_and_workers_agree(packed):
    cfg = shards_cfg(packed, augment={"crop_padding": 2, "flip": True, "random_erasing": 0.5})
    b = build_data(cfg, seed=5)
    full = batches(b.train, epoch=2)
    resumed = batches(b.train, epoch=2, start=4)
    assert len(resumed) == len(full) - 4
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(full[4:], resumed, strict=True))
    assert not torch.equal(full[0][0], batches(b.train, epoch=3)[0][0])  # the order is f(seed, epoch)
    w = build_data({**cfg, "num_workers": 1}, seed=5)  # a worker process opens its own shard files
    again = batches(w.train, epoch=2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full, again, strict=True))
    w.train.close()


def test_shards_two_ranks_disjoint_and_eval_once(packed):
    seen_train, seen_val = [], []
    for rank in (0, 1):
        b = build_data(shards_cfg(packed), seed=0, rank=rank, world_size=2)
        for loader, seen in ((b.train, seen_train), (b.val, seen_val)):
            loader.set_epoch(1)
            ds = loader.dataset
            seen.append([int(ds.indices[i]) for batch in loader.sampler for i, _ in batch])
    assert len(seen_train[0]) == len(seen_train[1]) and not set(seen_train[0]) & set(seen_train[1])
    b = build_data(shards_cfg(packed), seed=0)
    assert sorted(seen_val[0] + seen_val[1]) == sorted(b.val.dataset.indices.tolist())


def test_pack_image_folder_bytes_as_they_are_and_bad_files_once(tmp_path, caplog):
    from test_data import data_cfg, folder_cfg, make_folder

    folder = make_folder(tmp_path / "imgs")
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 5)
    with pytest.raises(DataError, match="broken.jpg.*on_bad_file=skip"):
        pack_main([f"src={folder}", f"out={tmp_path / 'a'}"])
    assert not (tmp_path / "a" / "manifest.json").exists()
    out = tmp_path / "b"
    assert pack_main([f"src={folder}", f"out={out}", "on_bad_file=skip", "shard_size=20KB"]) == 0
    m = _manifest(out)
    assert m["skipped"] == ["dog/broken.jpg"] and m["splits"]["train"]["count"] == 24
    assert len(m["splits"]["train"]["shards"]) > 1
    # the same split and the same decoded pixels as the folder itself (the files' own bytes are packed)
    ref = build_data(folder_cfg(folder, on_bad_file="skip"), seed=1)
    sh = build_data(data_cfg("shards", root=str(out), image_size=24, batch_size=5, num_workers=0), seed=1)
    assert sh.skipped == 1
    for a, b in ((ref.train, sh.train), (ref.val, sh.val)):
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
                   for (x1, y1), (x2, y2) in zip(batches(a), batches(b), strict=True))


def test_pack_cifar_code_path_equals_in_memory_test_split(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files, other md5s
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    out = tmp_path / "packed"
    assert pack_main(["data=cifar10", f"data.root={tmp_path}", "data.download=false", f"out={out}"]) == 0
    assert sorted(_manifest(out)["splits"]) == ["test", "train"]
    common = {"image_size": 32, "batch_size": 16, "val_split": 0, "mean": [0.5], "std": [0.5]}
    mem = build_data({"name": "cifar10", "root": str(tmp_path), "download": False, **common}, seed=0)
    sh = build_data({"name": "shards", "root": str(out), "num_workers": 0, **common}, seed=0)
    assert sh.val is sh.test and sh.test.num_samples == 10
    (xa, ya), (xb, yb) = next(iter(mem.test)), next(iter(sh.test))
    assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)


def test_interrupted_pack_resumes_and_never_lists_a_partial_shard(tmp_path, monkeypatch):
    out = tmp_path / "packed"
    args = ["data=synthetic", "data.num_samples=120", "data.image_size=16", "data.num_classes=4", f"out={out}",
            "shard_size=16KB", "workers=1"]
    real = packing_mod._write_shard
    calls = []

    def dies_at_the_third(out_, src, split, k, lo, hi):
        calls.append(k)
        if len(calls) == 3:
            (out_ / ".pack" / f"{split}-{k:06d}.tar.partial").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        return real(out_, src, split, k, lo, hi)

    monkeypatch.setattr(packing_mod, "_write_shard", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        pack_main(args)
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished pack.*again") as e:
        build_data(shards_cfg(out), seed=0)
    assert "\n" not in str(e.value)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert 2 <= len(kept) < len(_manifest_of_plan(out))  # shards 0 and 1 (and maybe the one started)
    monkeypatch.setattr(packing_mod, "_write_shard", real)
    assert pack_main(args) == 0
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())  # finished shards kept
    fresh = tmp_path / "fresh"
    assert pack_main([*args[:-2], f"out={fresh}", "shard_size=16KB", "workers=2"]) == 0
    assert _manifest(out)["splits"] == _manifest(fresh)["splits"]  # the same shards, byte for byte


def _manifest_of_plan(out: Path) -> list:
    return json.loads((out / ".pack" / "plan.json").read_text())["shards"]


def _first(out: Path, k=0) -> tuple[Path, Path]:
    e = _manifest(out)["splits"]["train"]["shards"][k]
    return out / e["url"], out / e["index"]


def _truncate(out):
    tar, _ = _first(out)
    tar.write_bytes(tar.read_bytes()[:-1500])
    return tar.name, "truncated"


def _empty(out):
    tar, _ = _first(out)
    tar.write_bytes(b"")
    return tar.name, "empty"


def _missing(out):
    tar, _ = _first(out, 1)
    tar.unlink()
    return tar.name, "missing"


def _stray(out):
    tar, _ = _first(out)
    stray = out / "train-000999.tar"
    stray.write_bytes(tar.read_bytes())
    return stray.name, "not in"


def _swapped_index(out):
    (_, i0), (_, i1) = _first(out, 0), _first(out, 1)
    a, b = i0.read_bytes(), i1.read_bytes()
    i0.write_bytes(b)
    i1.write_bytes(a)
    return i0.name, "not the one packed"


def _rewritten_index(out):
    """An index rewritten to point elsewhere, and the manifest's hash of it updated to match."""
    tar, idx = _first(out)
    rows = np.load(idx)
    rows[:, 0] = rows[::-1, 0].copy()
    from resexp.data.shard_format import index_bytes

    blob = index_bytes(rows)
    idx.write_bytes(blob)
    m = _manifest(out)
    import hashlib

    m["splits"]["train"]["shards"][0]["index_sha256"] = hashlib.sha256(blob).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    return tar.name, "no sample"


def _flipped_bytes(out):
    tar, _ = _first(out)
    blob = bytearray(tar.read_bytes())
    blob[700] ^= 0xFF
    st = tar.stat()
    tar.write_bytes(bytes(blob))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    return tar.name, "SHA-256"


@pytest.mark.parametrize("damage", [_truncate, _empty, _missing, _stray, _swapped_index, _rewritten_index,
                                    _flipped_bytes], ids=lambda f: f.__name__.strip("_"))
def test_damaged_shards_fail_in_one_line(packed, damage):
    name, what = damage(packed)
    with pytest.raises(DataError) as e:
        b = build_data(shards_cfg(packed), seed=0)
        for loader in (b.train, b.val):
            batches(loader)
    msg = str(e.value)
    assert name in msg and what in msg and "\n" not in msg


@pytest.mark.slow
def test_pack_command_line_errors_in_one_line(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        pack_main(["data=digits", f"out={tmp_path / 'busy'}"])
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="shard_size"):
        pack_main(["data=digits", f"out={tmp_path / 'x'}", "shard_size=lots"])
    with pytest.raises(ConfigError, match="src=<image folder> or data=<name>"):
        pack_main([f"out={tmp_path / 'x'}"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run([sys.executable, "-m", "resexp.pack", f"out={tmp_path / 'y'}", f"src={tmp_path / 'nope'}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


# ------------------------------------------------------------------------------ data.decode=device
def _jpeg_folder(root: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg",
                                                                                           quality=90)
    return root


def _cfg(root, name="image_folder", **over):
    return {"name": name, "root": str(root), "image_size": 32, "batch_size": 5, "num_workers": 0, "val_split": 0.2,
            "mean": [0.5], "std": [0.25], "augment": {"crop_padding": 2, "flip": True}, **over}


def test_device_decode_is_the_memory_pipeline(tmp_path):
    """decode=device (here on the CPU): the in-memory path's batches, bit for bit, from a folder and from
    shards, when the JPEGs need no resize; resized ones differ by rounding only (torch vs PIL resize)."""
    folder = _jpeg_folder(tmp_path / "imgs", 32)
    packed = tmp_path / "packed"
    assert pack_main([f"src={folder}", f"out={packed}", "shard_size=8KB"]) == 0
    ref = build_data(_cfg(folder, loader="memory"), seed=0)
    for cfg in (_cfg(folder, decode="device"), _cfg(packed, "shards", decode="device")):
        dev = build_data(cfg, seed=0)
        for a, b in ((ref.train, dev.train), (ref.val, dev.val)):
            assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
                       for (x1, y1), (x2, y2) in zip(batches(a, 1), batches(b, 1), strict=True))
        resumed = batches(dev.train, 1, start=2)
        assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(batches(ref.train, 1)[2:], resumed, strict=True))
    big = _jpeg_folder(tmp_path / "big", 60)
    ref = build_data(_cfg(big, loader="memory", augment={}), seed=0)
    dev = build_data(_cfg(big, decode="device", augment={}), seed=0)
    for (x1, _), (x2, _) in zip(batches(ref.val), batches(dev.val), strict=True):
        diff = (x1 - x2).abs() * 0.25 * 255  # in 8-bit levels
        assert diff.mean() < 1.0 and diff.max() <= 8


def test_device_decode_only_where_there_is_something_to_decode(tmp_path):
    folder = _jpeg_folder(tmp_path / "imgs", 32)
    with pytest.raises(ConfigError, match="data.decode=device.*data.loader=memory") as e:
        build_data(_cfg(folder, decode="device", loader="memory"), seed=0)
    assert "\n" not in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_decode_on_cuda_matches_cpu(tmp_path):
    folder = _jpeg_folder(tmp_path / "imgs", 32)
    cpu = build_data(_cfg(folder, decode="device"), seed=0, device="cpu")
    gpu = build_data(_cfg(folder, decode="device"), seed=0, device="cuda")
    for (x1, y1), (x2, y2) in zip(batches(cpu.train, 1), batches(gpu.train, 1), strict=True):
        assert torch.equal(y1, y2.cpu()) and (x1 - x2.cpu()).abs().max() * 0.25 * 255 <= 2  # nvJPEG's IDCT


def test_shards_read_by_webdataset(packed_once):
    """The shards are WebDataset shards: its reader (sequential, no index) sees every sample and label."""
    wds = pytest.importorskip("webdataset")
    m = _manifest(packed_once)
    urls = [str(packed_once / e["url"]) for e in m["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "cls"))
    assert [k for k, _, _ in samples] == [f"{i:09d}" for i in range(120)]
    labels = [int(c) for _, _, c in samples]
    assert np.bincount(labels).tolist() == m["splits"]["train"]["class_counts"]
    assert samples[0][1].size == (16, 16)


@pytest.mark.slow
def test_training_from_shards_resumes_mid_epoch_bit_exact(tmp_path, monkeypatch):
    """A run over shards killed mid-epoch and resumed ends with the same last.pt as one never stopped."""
    from test_resume import Killed, assert_equal, at_micro_batch, last

    from resexp.config import compose
    from resexp.train import run

    packed = tmp_path / "packed"
    assert pack_main(["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.num_classes=4",
                      f"out={packed}", "shard_size=8KB"]) == 0
    job = ["data=shards", f"data.root={packed}", "data.image_size=8", "data.batch_size=4", "data.num_workers=0",
           "data.augment.crop_padding=1", "data.augment.flip=true", "model.stages.depths=[1,1,1]",
           "trainer.epochs=2", "trainer.checkpoint_every_n_steps=4", "trainer.progress=false", "trainer.report=false"]
    run(compose(job), run_dir=tmp_path / "straight")
    at_micro_batch(monkeypatch, 13 + 7, lambda trainer: (_ for _ in ()).throw(Killed()))  # epoch 2, batch 7
    with pytest.raises(Killed):
        run(compose(job), run_dir=tmp_path / "run")
    saved = last(tmp_path / "run")
    assert (saved["epoch"], saved["batch"]) == (1, 3)  # step 16's checkpoint, inside epoch 2 (0-based 1)
    monkeypatch.undo()
    run(compose([*job, "trainer.resume=auto"]), run_dir=tmp_path / "run")
    a, b = last(tmp_path / "straight"), last(tmp_path / "run")
    for entry in ("model", "optimizer", "epoch", "batch", "global_step"):
        assert_equal(a[entry], b[entry], entry)


def test_torchvision_decode_follows_the_same_schedule(tmp_path):
    """data.decode=torchvision (the default: decode_jpeg + tensor transforms in the workers) against
    data.decode=pil: the same samples in the same order, pixels within rounding, and a bit-exact
    mid-epoch resume."""
    folder = _jpeg_folder(tmp_path / "imgs", 40)
    packed = tmp_path / "packed"
    assert pack_main([f"src={folder}", f"out={packed}", "shard_size=8KB"]) == 0
    pil = build_data(_cfg(folder, decode="pil", augment={}), seed=0)
    for cfg in (_cfg(folder, decode="torchvision", augment={}), _cfg(packed, "shards", decode="torchvision",
                                                                     augment={})):
        tv = build_data(cfg, seed=0)
        for (x1, y1), (x2, y2) in zip(batches(pil.val), batches(tv.val), strict=True):
            assert torch.equal(y1, y2) and ((x1 - x2).abs() * 0.25 * 255).max() <= 2
    tv = build_data(_cfg(packed, "shards", decode="torchvision", augment={"random_resized_crop": True,
                                                                         "flip": True}), seed=0)
    full, resumed = batches(tv.train, 1), batches(tv.train, 1, start=3)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(full[3:], resumed, strict=True))


def test_preprocess_image_follows_data_decode(tmp_path):
    from resexp.data import preprocess_image

    folder = _jpeg_folder(tmp_path / "imgs", 40)
    for decode in ("torchvision", "device"):
        cfg = _cfg(folder, decode=decode, augment={}, val_split=0.5)
        b = build_data(cfg, seed=0)
        x, _ = next(iter(b.val))
        with Image.open(folder / b.split["val"][0]) as im:  # the first eval image
            one = preprocess_image(im, cfg)
        assert torch.equal(one, x[0]) if decode == "torchvision" else torch.allclose(one, x[0], atol=1e-5)
