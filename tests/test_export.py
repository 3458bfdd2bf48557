"""`python -m resexp.export format=onnx` on tiny real runs: onnxruntime's logits equal PyTorch's."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resexp import export
from resexp.cli import run_command
from resexp.config import compose
from resexp.errors import ConfigError, ResexpError
from resexp.inference import load_run
from resexp.train import run

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CHEAP = ["trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.report=false", "trainer.progress=false"]
# v1 ImageNet-style, v2 pre-activation, CIFAR-style (option-A zero-padding shortcuts), on the built-in digits.
# Each costs a training and an export (~8 s on a shared core, the exporter being most of it): resnet20 is
# the fast suite's, the other two run with the slow ones.
MODELS = ["resnet20", pytest.param("resnet18", marks=pytest.mark.slow),
          pytest.param("preact_resnet18", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (the command's printout, run dir): a tiny run trained and exported through main(), once."""
    import contextlib
    import io

    cache: dict[str, tuple[str, Path]] = {}

    def get(name: str) -> tuple[str, Path]:
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            run(compose([f"model={name}", *CHEAP]), run_dir=path)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert export.main([f"run={path}", "format=onnx"]) == 0
            cache[name] = buf.getvalue(), path
        return cache[name]

    return get


@pytest.fixture
def resnet20(exported, monkeypatch) -> Path:
    """The resnet20 run; further exports reuse its graph (the exporter's ~5 s is tested above): the tests
    using it are about files, metadata and errors."""
    path = exported("resnet20")[1]
    monkeypatch.setattr(export, "export_proto", lambda run: onnx.load(str(path / "best.onnx")))
    return path


def digit_images(path: Path, n: int) -> torch.Tensor:
    """n real validation digits, preprocessed as the run validated them."""
    from resexp.data import build_data

    loaded = load_run(path)
    x, _ = next(iter(build_data(loaded.data_cfg, seed=loaded.config["seed"]).val))
    return x[:n].float()


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The command as a user runs it (cli wrapper: one-line error, exit 2); (exit code, stderr)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["resexp.export", *args])
    with pytest.raises(SystemExit) as e:
        run_command(export.main)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name", MODELS)
def test_onnx_logits_equal_pytorch_on_real_digits_with_another_batch_size(exported, name):
    printout, path = exported(name)
    assert "max relative logit difference" in printout
    x = digit_images(path, 5)  # 5: neither the export's example batch (2) nor the verification's (64)
    assert len(x) != export.EXAMPLE_BATCH
    session = ort.InferenceSession(str(path / "best.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("input", "logits") and not isinstance(inp.shape[0], int)  # dynamic batch
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = load_run(path).model(x).numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"{name}: max relative logit difference {rel:.2e}")
    assert got.shape == (5, 10) and rel <= 1e-4
    assert session.run(None, {"input": x[:1].numpy()})[0].shape == (1, 10)  # batch 1 too


@pytest.mark.parametrize("name", MODELS)
def test_card_and_metadata_hold_the_runs_preprocessing(exported, name):
    _, path = exported(name)
    loaded = load_run(path)
    card = json.loads((path / "best.onnx.json").read_text())
    assert card["format"] == export.CARD_FORMAT and card["weights"] == "best.onnx"
    assert card["normalisation"] == {"mean": loaded.facts.mean, "std": loaded.facts.std}
    assert card["normalisation"]["mean"] == list(loaded.data_cfg.mean)
    assert (card["image_size"], card["in_channels"]) == (loaded.data_cfg.image_size, 1) == (8, 1)
    assert card["class_names"] == loaded.class_names and card["tta_flip"] is False
    assert card["onnx"]["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert card["onnx"]["output"]["name"] == "logits" and card["onnx"]["opset"] == export.OPSET
    assert card["verified"]["max_relative_difference"] <= 1e-4
    props = ort.InferenceSession(str(path / "best.onnx"), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    assert json.loads(props["mean"]) == loaded.facts.mean and json.loads(props["std"]) == loaded.facts.std
    assert props["image_size"] == "8" and props["output"] == "logits" and json.loads(props["class_names"]) \
        == loaded.class_names
    assert json.loads(props["card"])["model"] == card["model"]
    assert {o.domain: o.version for o in onnx.load(str(path / "best.onnx")).opset_import}[""] == export.OPSET


def test_tta_flip_is_stated_in_the_card(resnet20):
    loaded = load_run(resnet20)
    loaded = dataclasses.replace(loaded, config={**loaded.config, "trainer": {**loaded.config["trainer"],
                                                                              "tta_flip": True}})
    card = export.onnx_card(loaded, Path("best.onnx"))
    assert card["tta_flip"] is True and "plain model" in card["tta_note"]


def test_images_option_out_option_and_the_users_files_untouched(resnet20, tmp_path, capsys):
    from PIL import Image

    path = resnet20
    folder = tmp_path / "digits"
    folder.mkdir()
    x = digit_images(path, 3) * 0.3760 + 0.3055  # back to [0, 1] pixels
    for i, img in enumerate(x):
        Image.fromarray(img[0].mul(255).round().clamp(0, 255).byte().numpy(), "L").save(folder / f"{i}.png")
    mine = {tmp_path / "notes.txt": "keep", tmp_path / "taken.onnx": "not an onnx file",
            tmp_path / "clash.onnx.json": "{}"}
    for p, text in mine.items():
        p.write_text(text)
    before = sorted(p.name for p in path.rglob("*"))
    assert export.main([f"run={path}", f"out={tmp_path / 'm.onnx'}", f"images={folder}"]) == 0
    assert "on 3 images" in capsys.readouterr().out
    assert export.main([f"run={path}", f"out={tmp_path / 'm.onnx'}", "verify=false"]) == 0  # ours: replaced
    assert sorted(p.name for p in path.rglob("*")) == before  # nothing written into the run
    for taken in ("taken.onnx", "clash.onnx"):  # the file, or its card, belongs to the user
        with pytest.raises(ConfigError, match="not written by resexp.export"):
            export.main([f"run={path}", f"out={tmp_path / taken}", "verify=false"])
    assert all(p.read_text() == text for p, text in mine.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["digits", "m.onnx", "m.onnx.json", *(p.name for p in mine)])  # no temporary files left


def test_a_verification_failure_writes_nothing(resnet20, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(ResexpError, match=r"disagrees with PyTorch: max relative logit difference .* nothing"):
        export.main([f"run={resnet20}", f"out={tmp_path / 'm.onnx'}"])
    assert list(tmp_path.iterdir()) == []


def test_errors_are_one_line(resnet20, tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, f"run={tmp_path / 'nope'}")
    assert code == 2 and err == f"error: export: run directory not found: {tmp_path / 'nope'}\n"
    code, err = run_cli(monkeypatch, capsys, f"run={resnet20}", "format=tflite")
    assert code == 2 and err == "error: export: unknown format=tflite; valid formats: onnx\n"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    code, err = run_cli(monkeypatch, capsys, f"run={resnet20}")
    assert code == 2 and "onnxruntime" in err and "pip install 'resexp[export]'" in err and err.count("\n") == 1


def test_an_architecture_that_cannot_export_is_named(exported, tmp_path, monkeypatch, capsys):
    resnet20 = exported("resnet20")[1]  # the real export_proto, around a failing torch.onnx.export

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::weird\n(long exporter report)")

    monkeypatch.setattr(torch.onnx, "export", fail)
    code, err = run_cli(monkeypatch, capsys, f"run={resnet20}", f"out={tmp_path / 'm.onnx'}")
    assert code == 2 and err == ("error: export: model resnet20 (arch=resnet) cannot be exported to ONNX: "
                                 "RuntimeError: Unsupported operator aten::weird\n")
    assert list(tmp_path.iterdir()) == []
