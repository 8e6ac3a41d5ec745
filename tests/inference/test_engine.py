"""The inference engine: ONNX Runtime gives PyTorch's answers (probabilities, classes, verdicts, the differential) on
real crops and fields, classifies files without importing torch, and its cached model is rebuilt for a changed
checkpoint and refused when it was changed; ``--engine`` chooses, with a one-line error where it cannot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import BCCD_ZIP, EXTERNAL, PBC_TEST_IMAGES, assert_one_line_error

from cellmorphnet.errors import CheckpointError, ConfigError
from cellmorphnet.inference import engine as engines
from cellmorphnet.inference.options import inference_options
from cellmorphnet.inference.predict import predict_files
from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.load import load_run_model

SHIPPED = runs.packaged_runs()[runs.PACKAGED]


def test_the_numpy_resize_is_pytorchs():
    from cellmorphnet.data.loader import resize_batch

    rng = np.random.default_rng(0)
    for n_in, n_out in ((64, 96), (28, 96), (96, 64), (128, 96), (50, 50)):
        x = rng.integers(0, 256, (2, n_in, n_in, 3), dtype=np.uint8)
        want = resize_batch(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0, n_out).numpy()
        assert np.abs(engines.to_input(x, n_out) - want).max() < 1e-5, (n_in, n_out)  # float32 rounding


def _both(files, **kw):
    onnx_rm = engines.load_onnx_run(SHIPPED)
    torch_rm = load_run_model(SHIPPED, "best", "cpu")
    out = []
    for rm in (onnx_rm, torch_rm):
        preds, _ = predict_files(rm, files, inference_options(rm.record, **kw), workers=1)
        out.append(preds)
    return onnx_rm, out


def test_the_engines_give_the_same_answers_on_crops_and_fields(tmp_path):
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[::12] + sorted(EXTERNAL.rglob("*.png"))[::25]
    with zipfile.ZipFile(BCCD_ZIP) as z:
        name = next(m for m in z.namelist() if m.endswith("JPEGImages/BloodImage_00176.jpg"))
        (tmp_path / "field.jpg").write_bytes(z.read(name))
    files.append(tmp_path / "field.jpg")
    onnx_rm, (a, b) = _both(files)
    assert onnx_rm.checkpoint.parent.parent == SHIPPED and engines.is_engine(onnx_rm.model)
    assert str(onnx_rm.model.path).startswith(str(SHIPPED))  # the shipped model carries its engine: nothing built
    assert len(a) == len(b) >= len(files) and any(p.cell is not None for p in a)  # the field's cells too
    for p, q in zip(a, b, strict=True):
        assert (str(p.source), p.predicted, p.verdict, p.review_reason, p.cell and p.cell.box) == (
            str(q.source), q.predicted, q.verdict, q.review_reason, q.cell and q.cell.box)  # fmt: skip
        assert max(abs(x[1] - y[1]) for x, y in zip(p.top_k, q.top_k, strict=True)) <= 1e-5
        assert abs(p.typicality - q.typicality) <= 1e-5


def test_restricted_classes_and_one_view_agree_too():
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[::40]
    _, (a, b) = _both(files, classes="wbc", tta=False)
    for p, q in zip(a, b, strict=True):
        assert p.predicted == q.predicted
        assert max(abs(x[1] - y[1]) for x, y in zip(p.top_k, q.top_k, strict=True)) <= 1e-5


def test_classifying_files_on_the_onnx_engine_never_imports_torch(tmp_path, home):
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[::60]
    script = ("import sys\nfrom cellmorphnet.cli.app import app\n"
              "try:\n    app(sys.argv[1:], standalone_mode=False)\nfinally:\n"
              "    print('IMPORTED', 'torch' in sys.modules, 'timm' in sys.modules, file=sys.stderr)\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", script, "--home", str(home), "infer", "bloodmnist", *map(str, files),
                        "--out", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "IMPORTED False False" in r.stderr
    summary = json.loads((tmp_path / "o.json").read_text())["summary"]
    assert summary["engine"] == "onnx" and summary["images"] == len(files)


def test_a_cached_model_changed_after_it_was_written_is_refused(tmp_path):
    run = tmp_path / "lab-run"
    shutil.copytree(SHIPPED, run)
    rm = engines.load_onnx_run(run)  # the copied engine/ is the checkpoint's own: used as it is, nothing built
    assert rm.model.path.parent == run / "engine"
    data = bytearray(rm.model.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rm.model.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed after cellmorphnet wrote it"):
        engines.load_onnx_run(run)
    meta = rm.model.path.with_suffix(".json")
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        engines.load_onnx_run(run)


@pytest.mark.slow  # (a build: several seconds of the fast tier's three minutes)
def test_the_cached_model_is_rebuilt_for_a_new_checkpoint(tmp_path):
    run = tmp_path / "lab-run"
    shutil.copytree(SHIPPED, run)
    rm = engines.load_onnx_run(run)
    first = rm.model.path
    ckpt = run / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    state["epoch"] = int(state["epoch"]) + 1  # another checkpoint (as after more training)
    torch.save(state, ckpt)
    rebuilt = engines.load_onnx_run(run)
    assert rebuilt.model.path != first and rebuilt.model.path.is_file() and not first.exists()  # the old one gone
    x = [np.full((64, 64, 3), 180, np.uint8)]
    assert np.abs(engines.engine_class_probs(rebuilt.model, x) - engines.engine_class_probs(rm.model, x)).max() < 1e-6


def test_the_engine_is_chosen_with_one_line_errors(cli, monkeypatch, tmp_path):
    assert engines.choose("auto", "cpu") == "onnx" and engines.choose("torch", "cpu") == "torch"
    assert engines.choose("auto", "cuda") == "torch"
    with pytest.raises(ConfigError, match="needs --engine torch"):
        engines.choose("onnx", "cuda")
    with pytest.raises(ConfigError, match="Unknown engine"):
        engines.choose("tensorrt", "cpu")
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    assert engines.choose("auto", "cpu") == "torch"  # where ONNX Runtime is missing
    jpg = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[0]
    assert_one_line_error(cli("infer", "bloodmnist", str(jpg), "--engine", "onnx"), "needs ONNX Runtime",
                          "cellmorphnet[onnx]")  # fmt: skip
    r = cli("infer", "bloodmnist", str(jpg), "--out", str(tmp_path / "t.json"))
    assert r.exit_code == 0 and json.loads((tmp_path / "t.json").read_text())["summary"]["engine"] == "torch"


@pytest.mark.slow
def test_every_pbc_jpeg_and_every_cell_of_the_other_lab_the_same_on_both_engines():
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg")) + sorted(p for p in EXTERNAL.rglob("*") if p.is_file())
    _, (a, b) = _both(files)
    assert len(a) == len(b) == len(files)
    worst = max(max(abs(x[1] - y[1]) for x, y in zip(p.top_k, q.top_k, strict=True))
                for p, q in zip(a, b, strict=True))  # fmt: skip
    assert worst <= 1e-5
    assert [(p.predicted, p.verdict) for p in a] == [(q.predicted, q.verdict) for q in b]
    from cellmorphnet.inference.differential import differential

    classes = load_run_model(SHIPPED, "best", "cpu").classes
    assert differential(a, classes) == differential(b, classes)
