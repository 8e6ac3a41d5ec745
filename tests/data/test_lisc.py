"""LISC, on a generated replica of its documented layout (the real archive is not reachable here)."""

import json
import zipfile

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image

DIRS = {
    "Baso": (120, 40, 160),
    "eosi": (200, 80, 60),
    "lymp": (60, 60, 200),
    "mixt": (0, 0, 0),
    "mono": (90, 160, 90),
    "neut": (170, 170, 40),
}


def make_lisc(root, per_class=5, seed=0, missing_masks=False):
    """Write ``LISC Database/`` with 720x576 BMPs: pink background, one coloured cell per image, and its mask."""
    rng = np.random.default_rng(seed)
    base = root / "LISC Database"
    for d, colour in DIRS.items():
        (base / "Main Dataset" / d).mkdir(parents=True, exist_ok=True)
        mask_dir = base / "Ground Truth Segmentation" / d / "areaforexpert1"
        mask_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            img = np.zeros((576, 720, 3), np.uint8) + np.array([230, 190, 200], np.uint8)
            mask = np.zeros((576, 720), np.uint8)
            cx, cy, r = rng.integers(100, 620), rng.integers(100, 476), rng.integers(30, 60)
            yy, xx = np.mgrid[:576, :720]
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            img[disk] = colour
            mask[disk] = 255
            mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= (r // 2) ** 2] = 128  # nucleus
            Image.fromarray(img).save(base / "Main Dataset" / d / f"{n}.bmp")
            if not missing_masks:
                Image.fromarray(mask).save(mask_dir / f"{n}_expert.bmp")
    (base / "More Dataset without Ground Truth" / "alll").mkdir(parents=True, exist_ok=True)
    return base


def zip_folder(folder, out):
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    return out


@pytest.fixture
def lisc_zip(tmp_path):
    return zip_folder(make_lisc(tmp_path / "src"), tmp_path / "LISC Database.zip")


def test_import_and_prepare_replica(cli, home, lisc_zip):
    r = cli("fetch", "lisc", "--from", lisc_zip)
    assert r.exit_code == 0, r
    record = json.loads((home / "downloads" / "lisc" / "source.json").read_text())
    assert len(record["sha256"]) == 64 and record["counts"]["Baso"] == {"images": 5, "masks": 5}

    r = cli("prepare", "lisc", "--size", "32", "--json")
    assert r.exit_code == 0, r
    [out] = json.loads(r.stdout)
    assert out["classes"] == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]  # no mixt
    per_class = np.sum([c["per_class"] for c in out["counts"].values()], axis=0).tolist()
    assert per_class == [5, 5, 5, 5, 5]
    assert all(min(c["per_class"]) >= 0 for c in out["counts"].values())
    # Each crop is centred on its cell: the centre pixel has the class colour.
    target = home / "prepared" / "lisc" / "32"
    classes = ["Baso", "eosi", "lymp", "mono", "neut"]
    for split in ("train", "val", "test"):
        images = np.load(target / f"{split}_images.npy")
        labels = np.load(target / f"{split}_labels.npy")
        for im, lab in zip(images, labels, strict=False):
            assert np.abs(im[16, 16].astype(int) - DIRS[classes[lab]]).max() < 30


def test_mixt_on_request_and_seeded_splits(cli, home, lisc_zip):
    cli("fetch", "lisc", "--from", lisc_zip)
    [a] = json.loads(cli("prepare", "lisc", "--include-mixt", "--json").stdout)
    assert "mixt" in a["classes"]
    [b] = json.loads(cli("prepare", "lisc", "--json", "--seed", "1").stdout)
    [c] = json.loads(cli("prepare", "lisc", "--json", "--seed", "1").stdout)
    assert c["unchanged"] is True and b["unchanged"] is False


def test_missing_masks_is_a_clear_error(cli, tmp_path):
    bad = zip_folder(make_lisc(tmp_path / "bad", per_class=1, missing_masks=True), tmp_path / "bad.zip")
    assert_one_line_error(cli("fetch", "lisc", "--from", bad), "holds no masks")


def test_a_different_archive_later_is_refused(cli, home, lisc_zip, tmp_path):
    assert cli("fetch", "lisc", "--from", lisc_zip).exit_code == 0
    other = zip_folder(make_lisc(tmp_path / "other", per_class=2, seed=5), tmp_path / "other.zip")
    assert_one_line_error(cli("fetch", "lisc", "--from", other, "--force"), "first imported")
    r = cli("fetch", "lisc", "--from", other, "--force", "--allow-unverified")
    assert r.exit_code == 0 and "UNVERIFIED" in r.stderr


def test_lisc_hint_names_homepage(cli):
    assert_one_line_error(cli("prepare", "lisc"), "LISC is not fetched", "--from")
