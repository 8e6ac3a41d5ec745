"""folder:PATH on real microscope JPEGs with broken files mixed in, and the embedded sample."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import PBC_TEST_IMAGES, assert_one_line_error
from PIL import Image

from cellmorphnet.data.sources.sample import sample_path


@pytest.fixture
def user_folder(tmp_path):
    root = tmp_path / "my cells"
    for cls in ("eosinophil", "lymphocyte", "platelet"):
        (root / cls).mkdir(parents=True)
        for p in sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[:10]:
            shutil.copy(p, root / cls / p.name)
    good = sorted((PBC_TEST_IMAGES / "eosinophil").glob("*.jpg"))[0].read_bytes()
    (root / "eosinophil" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "lymphocyte" / "empty.jpg").write_bytes(b"")
    (root / "lymphocyte" / "notes.png").write_text("not an image")
    (root / "platelet" / "readme.txt").write_text("ignored: not an image suffix")
    # unusual but valid modes: 16-bit grayscale and RGBA
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7).save(root / "platelet" / "deep.png")
    Image.new("RGBA", (80, 60), (200, 100, 50, 128)).save(root / "platelet" / "alpha.png")
    return root


def test_folder_prepare_skips_unreadable_and_is_a_noop_twice(cli, home, user_folder):
    r = cli("prepare", f"folder:{user_folder}", "--size", "40", "--json")
    assert r.exit_code == 0, r
    [out] = json.loads(r.stdout)
    assert out["classes"] == ["eosinophil", "lymphocyte", "platelet"]
    per_class = np.sum([c["per_class"] for c in out["counts"].values()], axis=0).tolist()
    assert per_class == [10, 10, 12]
    assert len(out["warnings"]) == 3
    joined = " ".join(out["warnings"])
    for name in ("truncated.jpg", "empty.jpg", "notes.png"):
        assert name in joined
    for split in ("train", "val", "test"):
        assert out["counts"][split]["total"] > 0

    human = cli("prepare", f"folder:{user_folder}", "--size", "40")
    assert "unchanged" in human.stderr

    # a changed file triggers a rebuild
    os.utime(user_folder / "platelet" / "alpha.png", (1, 1))
    [again] = json.loads(cli("prepare", f"folder:{user_folder}", "--size", "40", "--json").stdout)
    assert again["unchanged"] is False

    status = json.loads(cli("status", "--json").stdout)
    assert any(d["name"] == f"folder:{user_folder}" for d in status["cache"]["datasets"])


def test_folder_errors(cli, tmp_path):
    assert_one_line_error(cli("prepare", f"folder:{tmp_path / 'missing'}"), "is not a folder")
    (tmp_path / "flat").mkdir()
    assert_one_line_error(cli("prepare", f"folder:{tmp_path / 'flat'}"), "no class sub-folders")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.jpg").write_bytes(b"nope")
    assert_one_line_error(cli("prepare", f"folder:{tmp_path / 'bad'}"), "none of the 1 image files")
    jpegs = sorted((PBC_TEST_IMAGES / "neutrophil").glob("*.jpg"))
    for folder, per_class in (("one", {"neutrophil": 6}), ("few", {"neutrophil": 2, "monocyte": 2})):
        for cls, n in per_class.items():
            (tmp_path / folder / cls).mkdir(parents=True)
            for p in jpegs[:n]:
                shutil.copy(p, tmp_path / folder / cls / p.name)
    assert_one_line_error(cli("train", "--datasets", f"folder:{tmp_path / 'one'}", "--epochs", "1"),
                          "holds one class (neutrophil): a classifier needs two at least")  # fmt: skip
    assert_one_line_error(cli("train", "--datasets", f"folder:{tmp_path / 'few'}", "--epochs", "1"),
                          "has no validation images: its 4 images are too few")  # fmt: skip


def test_folder_needs_no_fetch(cli, user_folder):
    assert_one_line_error(cli("fetch", f"folder:{user_folder}"), "needs no fetch", "cellmorphnet prepare")


def test_sample_is_small_real_and_complete(cli, home):
    path = sample_path()
    assert path.stat().st_size <= 2 * 1024 * 1024
    assert (path.parent / "ATTRIBUTION.md").read_text().count("CC BY 4.0") >= 1
    r = cli("fetch", "sample")
    assert r.exit_code == 0 and "embedded" in r.stderr
    [out] = json.loads(cli("prepare", "sample", "--size", "28", "--json").stdout)
    assert out["size"] == 28 and len(out["classes"]) == 8
    for split in ("train", "val", "test"):
        assert all(n > 0 for n in out["counts"][split]["per_class"])
    images = np.load(home / "prepared" / "sample" / "28" / "test_images.npy")
    assert images.dtype == np.uint8 and images.std() > 20


def test_sample_default_size_other_sizes_and_limit(cli, home):
    [out] = json.loads(cli("prepare", "sample", "--json").stdout)
    assert out["size"] == 64  # upscaled from the stored 28 px: EfficientNet trains far better at 64
    stored = np.load(home / "prepared" / "sample" / "64" / "val_images.npy")
    assert stored.shape == (96, 64, 64, 3)
    [out] = json.loads(cli("prepare", "sample", "--size", "16", "--json").stdout)
    assert out["size"] == 16
    assert_one_line_error(cli("prepare", "sample", "--size", "200"), "112 px or smaller")
    assert_one_line_error(cli("prepare", "sample", "--size", "0"), "--size 0 is out of range")  # not the default


def test_status_on_empty_home(cli, home):
    r = cli("status", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    names = [d["name"] for d in data["cache"]["datasets"]]
    assert names == ["bloodmnist", "bccd", "lisc", "sample"]
    assert not home.exists() or not (home / "prepared").exists()
    assert "bloodmnist" in cli("status").stdout
