"""infer and Grad-CAM on a tiny trained run and the real PBC test JPEGs."""

import csv
import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import PBC_TEST_IMAGES, assert_one_line_error, png_claiming
from PIL import Image


@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "images"
    good = []
    for cls in ("eosinophil", "platelet"):
        (root / cls).mkdir(parents=True)
        for p in sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[:4]:
            shutil.copy(p, root / cls / p.name)
            good.append(root / cls / p.name)
    nested = root / "deeper" / "still"
    nested.mkdir(parents=True)
    raw = sorted((PBC_TEST_IMAGES / "neutrophil").glob("*.jpg"))[0].read_bytes()
    (nested / "cut.jpg").write_bytes(raw[: len(raw) // 3])
    (nested / "zero.jpg").write_bytes(b"")
    (nested / "text.png").write_text("hello, I am not a PNG")
    arr16 = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    Image.fromarray(arr16).save(nested / "deep16.png")
    Image.new("RGBA", (120, 100), (180, 60, 140, 200)).save(nested / "alpha.png")
    Image.new("P", (90, 90)).save(nested / "palette.bmp")
    Image.new("L", (90, 90), 128).save(nested / "gray.tif")
    good += [nested / "deep16.png", nested / "alpha.png", nested / "palette.bmp", nested / "gray.tif"]
    ramp = np.linspace(-0.5, 3.0, 96 * 96, dtype=np.float32).reshape(96, 96)  # ImageJ's 32-bit float TIFF
    Image.fromarray(ramp, mode="F").save(nested / "float.tif")
    good.append(nested / "float.tif")
    ramp[:10] = np.nan
    Image.fromarray(ramp, mode="F").save(nested / "nan.tif")
    (nested / "bomb.png").write_bytes(png_claiming(100_000, 100_000))  # a decompression bomb's header
    # formats Pillow opens but no microscope writes, named like images: refused, their decoders never run
    Image.new("RGB", (32, 32), (200, 100, 150)).save(nested / "icon.png", format="ICO")
    (nested / "figure.tif").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    Image.new("RGB", (90, 90), (200, 120, 160)).save(nested / "cell.webp")
    good.append(nested / "cell.webp")
    bad = {"cut.jpg", "zero.jpg", "text.png", "bomb.png", "icon.png", "figure.tif", "nan.tif"}
    return root, good, bad


def test_infer_over_messy_folder(cli, trained, messy_folder, tmp_path):
    root, good, bad = messy_folder
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "preds.csv"
    sorted_dir = tmp_path / "sorted"
    r = cli("infer", "t", root, "--out", out, "--top-k", "3", "--sort-into", sorted_dir, "--gradcam", tmp_path / "cams")
    assert r.exit_code == 3, r  # some files skipped, the rest classified
    assert f"Skipped {len(bad)} of" in r.stderr
    rows = list(csv.DictReader(out.open()))
    by_name = {os.path.basename(row["path"]): row for row in rows}
    assert len(rows) == len(good) + len(bad)
    for p in good:
        row = by_name[p.name]
        assert row["status"] == "ok" and row["predicted"] and 0 < float(row["confidence"]) <= 1
        assert row["top3"] and float(row["top1_probability"]) >= float(row["top2_probability"])
    for name in bad:
        assert by_name[name]["status"] == "skipped" and by_name[name]["error"]
    assert "0 bytes" in by_name["zero.jpg"]["error"]
    assert "too large" in by_name["bomb.png"]["error"]
    assert "NaN or infinite" in by_name["nan.tif"]["error"]
    for name in ("icon.png", "figure.tif"):
        assert "not an image in a supported format (JPEG, PNG, TIFF, BMP or WebP)" in by_name[name]["error"]
    # --sort-into copies and leaves the sources untouched
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert after == before
    copied = [p for p in sorted_dir.rglob("*") if p.is_file()]
    assert len(copied) == len(good)
    # Grad-CAM: one overlay per classified image
    cams = sorted((tmp_path / "cams").glob("*.png"))
    assert len(cams) == len(good)


def test_infer_csv_shows_formula_like_names_as_text(cli, trained, tmp_path, monkeypatch):
    """A file name a spreadsheet would run as a formula (OWASP: CSV injection) is written as text."""
    folder = tmp_path / "cells"
    folder.mkdir()
    names = ["=HYPERLINK(1).jpg", "+1.jpg", "-2.jpg", "@SUM(3).jpg", "plain.jpg"]
    for name, src in zip(names, sorted((PBC_TEST_IMAGES / "monocyte").glob("*.jpg")), strict=False):
        shutil.copy(src, folder / name)
    monkeypatch.chdir(folder)  # relative paths: the CSV's path column starts with the file name
    r = cli("infer", "t", "--out", tmp_path / "p.csv", "--", *names)  # "--": "-2.jpg" is a name, not an option
    assert r.exit_code == 0, r
    rows = list(csv.DictReader((tmp_path / "p.csv").open(newline="")))
    assert [row["path"] for row in rows] == ["'=HYPERLINK(1).jpg", "'+1.jpg", "'-2.jpg", "'@SUM(3).jpg", "plain.jpg"]
    assert all(not v.startswith(("=", "+", "-", "@")) for row in rows for v in row.values())


def test_sort_into_never_follows_a_link_out_of_the_folder_and_names_what_is_in_the_way(cli, trained, tmp_path):
    classes = json.loads((trained / "config.json").read_text())["classes"]
    files = sorted((PBC_TEST_IMAGES / "monocyte").glob("*.jpg"))[:3]
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "sorted"
    for c in classes:  # a dangling link where each copy would go, pointing out of the folder
        (target / c).mkdir(parents=True)
        for f in files:
            (target / c / f.name).symlink_to(outside / f"{c}-{f.name}")
    r = cli("infer", "t", *files, "--sort-into", target)
    assert r.exit_code == 0, r
    assert list(outside.iterdir()) == []  # nothing written through a link
    copies = [p for p in target.rglob("*.jpg") if not p.is_symlink()]
    assert len(copies) == 3 and all(p.stem.endswith("-1") for p in copies)
    assert all(p.read_bytes() == (PBC_TEST_IMAGES / "monocyte" / p.name.replace("-1.", ".")).read_bytes()
               for p in copies)  # fmt: skip

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for c in classes:  # a plain file where each class folder should be
        (blocked / c).write_text("in the way")
    r = cli("infer", "t", *files, "--sort-into", blocked)
    assert_one_line_error(r, "--sort-into:", "is in the way", "a file where a folder of copies should be")
    assert all((blocked / c).read_text() == "in the way" for c in classes)  # nothing touched
    linked = tmp_path / "linked"
    linked.mkdir()
    for c in classes:  # a class folder that is a link out of DIR
        (linked / c).symlink_to(outside, target_is_directory=True)
    assert_one_line_error(cli("infer", "t", *files, "--sort-into", linked), "is in the way", "a link")
    assert list(outside.iterdir()) == []


def test_a_very_large_image_prints_no_raw_warning(cli, trained, tmp_path, monkeypatch):

    from PIL import Image as PILImage

    Image.open(sorted((PBC_TEST_IMAGES / "monocyte").glob("*.jpg"))[0]).resize((180, 150)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20_000)  # Pillow warns above this, refuses above twice it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = cli("infer", "t", tmp_path / "big.jpg")
    assert r.exit_code == 0, r
    assert not [w for w in seen if "decompression bomb" in str(w.message)], [str(w.message) for w in seen]


def test_infer_json_and_errors(cli, trained, tmp_path):
    img = sorted((PBC_TEST_IMAGES / "platelet").glob("*.jpg"))[0]
    out = tmp_path / "one.json"
    r = cli("infer", "t", img, "--out", out)
    assert r.exit_code == 0, r
    data = json.loads(out.read_text())
    assert data["summary"]["predicted"] == 1 and data["predictions"][0]["status"] == "ok"
    assert data["summary"]["policy"]["centre_crop_px"] == 200
    assert_one_line_error(cli("infer", "t", tmp_path / "nothing-here"), "nothing-here: does not exist")
    os.mkfifo(tmp_path / "pipe.jpg")  # given directly: said for what it is, not "does not exist"
    assert_one_line_error(cli("infer", "t", tmp_path / "pipe.jpg"), "pipe.jpg: a named pipe, not a file")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert_one_line_error(cli("infer", "t", tmp_path / "loop.jpg"), "loop.jpg: a link that loops back on itself")
    r = cli("infer", "t", tmp_path / "loop.jpg", tmp_path / "nothing-here")
    assert_one_line_error(r, "None of the 2 paths can be read", "(a link that loops back on itself)",
                          "(does not exist)")  # fmt: skip
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    r = cli("infer", "t", tmp_path / "junk")
    assert_one_line_error(r, "None of the 1 files could be read")
    assert "a.jpg" in r.stderr
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("infer", "t", tmp_path / "empty"), "No image files found")
    assert_one_line_error(cli("infer", "t", img, "--workers", "0"), "--workers must be at least 1")
    # where the results cannot go is said before the images are classified, so no work is lost
    (tmp_path / "a-file").write_text("")
    for bad, said in ((["--out", tmp_path / "x.txt"], "--out must end in .csv or .json"),
                      (["--out", tmp_path / "a-file" / "x.csv"], "a-file is not a folder"),
                      (["--out", tmp_path / "empty"], "empty is a folder; give a file name"),
                      (["--gradcam", tmp_path / "a-file" / "cams"], "a-file is not a folder"),
                      (["--sort-into", tmp_path / "a-file"], "a-file is a file, not a folder"),
                      (["--overlays", tmp_path / "a-file" / "o"], "a-file is not a folder")):  # fmt: skip
        r = cli("infer", "t", img, *bad)
        assert_one_line_error(r, said)
        assert "Classifying" not in r.stderr


def test_gradcam_shape_and_not_constant():
    from cellmorphnet.inference.gradcam import gradcam, overlay
    from cellmorphnet.model.network import create_model

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=8, pretrained=True).eval()
    first = sorted((PBC_TEST_IMAGES / "eosinophil").glob("*.jpg"))[0]
    img = np.asarray(Image.open(first).convert("RGB").resize((64, 64)))
    x = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    cam, idx = gradcam(model, x.repeat(2, 1, 1, 1))
    assert cam.shape == (2, 64, 64) and idx.shape == (2,)
    assert cam.min() >= 0 and cam.max() <= 1 and cam.std() > 0.01
    over = overlay(img, cam[0])
    assert over.shape == (256, 256, 3) and over.dtype == np.uint8


def test_inference_policy_reproduces_the_training_arrays_exactly():
    """The PBC JPEGs through infer's preprocessing give the very arrays BloodMNIST stores for them."""
    import csv as csv_module

    from conftest import PBC_28, PBC_64, SHARED

    from cellmorphnet.inference import preprocess
    from cellmorphnet.runs.record import InferencePolicy
    from cellmorphnet.vision.imaging import load_rgb

    index = {}
    with open(SHARED / "bloodmnist-pbc" / "bloodmnist_pbc_index.csv") as f:
        for row in csv_module.DictReader(f):
            if row["split"] == "test":
                index[row["source_path"].rsplit("/", 1)[-1]] = int(row["index"])
    files = sorted(PBC_TEST_IMAGES.glob("*/*.jpg"))
    with np.load(PBC_28) as d28, np.load(PBC_64) as d64:
        for size, arrays in ((28, d28["test_images"]), (64, d64["test_images"])):
            for path in files:
                policy = InferencePolicy("pbc", 200, 200 / 360, [size], "bicubic", size, [0.5] * 3, [0.5] * 3)
                got = preprocess(load_rgb(path), policy)
                assert np.array_equal(got, arrays[index[path.name]]), (size, path.name)
