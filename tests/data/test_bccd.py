"""BCCD: import the real GitHub archive, verify it by content, and prepare cell crops."""

import json
import zipfile
from collections import Counter

import numpy as np
import pytest
from conftest import BCCD_ZIP, assert_one_line_error

from cellmorphnet.data.sources.bccd import parse_annotation


def test_import_and_prepare_real_archive(cli, home):
    r = cli("fetch", "bccd", "--from", BCCD_ZIP)
    assert r.exit_code == 0, r
    assert "imported, verified" in r.stderr

    r = cli("prepare", "bccd", "--size", "48", "--json")
    assert r.exit_code == 0, r
    [out] = json.loads(r.stdout)
    assert out["classes"] == ["RBC", "WBC", "Platelets"]
    totals = np.sum([c["per_class"] for c in out["counts"].values()], axis=0).tolist()
    assert totals == [4153, 372, 361]
    assert any("skipped 2 zero-size box" in w and "BloodImage_00338" in w for w in out["warnings"])

    # Every crop of a source image is in that image's ImageSets/Main split: recount independently.
    root = home / "downloads" / "bccd" / "unpacked"
    expected = {}
    for split in ("train", "val", "test"):
        names = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        c = Counter()
        for n in names:
            _, _, objs = parse_annotation(root / "Annotations" / f"{n}.xml")
            c.update(o[0] for o in objs if o[3] > o[1] and o[4] > o[2])
        expected[split] = [c["RBC"], c["WBC"], c["Platelets"]]
    assert {s: v["per_class"] for s, v in out["counts"].items()} == expected

    images = np.load(home / "prepared" / "bccd" / "48" / "train_images.npy")
    assert images.shape[1:] == (48, 48, 3)
    assert images.std() > 10  # real image content, not blank crops


@pytest.fixture
def bccd_variant(tmp_path):
    """Write a copy of the real archive with one change: ``make(drop=..., add=...)``."""

    def make(name, drop=None, add=None):
        out = tmp_path / name
        with zipfile.ZipFile(BCCD_ZIP) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if drop and info.filename.endswith(drop):
                    continue
                dst.writestr(info, src.read(info))
            for member, data in (add or {}).items():
                dst.writestr(member, data)
        return out

    return make


def test_zip_with_parent_member_is_refused(cli, home, bccd_variant):
    assert cli("fetch", "bccd", "--from", BCCD_ZIP).exit_code == 0
    before = sorted(p.name for p in (home / "downloads" / "bccd" / "unpacked" / "JPEGImages").iterdir())
    evil = bccd_variant("evil.zip", add={"../escaped.txt": b"owned"})
    r = cli("fetch", "bccd", "--from", evil)
    assert_one_line_error(r, "../escaped.txt", "outside the target folder")
    assert not (home / "downloads" / "escaped.txt").exists()
    assert not (home / "downloads" / "bccd" / "escaped.txt").exists()
    # what was already in the cache is untouched
    assert sorted(p.name for p in (home / "downloads" / "bccd" / "unpacked" / "JPEGImages").iterdir()) == before
    assert json.loads((home / "downloads" / "bccd" / "source.json").read_text())["verified"] is True


def test_absolute_member_is_refused(cli, bccd_variant):
    r = cli("fetch", "bccd", "--from", bccd_variant("abs.zip", add={"/tmp/abs-escape.txt": b"x"}))
    assert_one_line_error(r, "outside the target folder")


def test_changed_content_is_refused_then_accepted_unverified(cli, home, bccd_variant):
    changed = bccd_variant("changed.zip", drop="BloodImage_00001.xml")
    r = cli("fetch", "bccd", "--from", changed)
    assert_one_line_error(r, "363 annotations", "--allow-unverified")
    assert not (home / "downloads" / "bccd" / "unpacked").exists()
    r = cli("fetch", "bccd", "--from", changed, "--allow-unverified")
    assert r.exit_code == 0 and "UNVERIFIED" in r.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert next(d for d in status["cache"]["datasets"] if d["name"] == "bccd")["verified"] is False


def test_import_unpacked_folder(cli, home, tmp_path):
    with zipfile.ZipFile(BCCD_ZIP) as zf:
        zf.extractall(tmp_path / "x")
    folder = next((tmp_path / "x").iterdir())
    r = cli("fetch", "bccd", "--from", folder)
    assert r.exit_code == 0 and "verified" in r.stderr, r
    assert (folder / "BCCD" / "Annotations").is_dir()  # the user's folder is left as it was


def test_prepare_before_fetch_says_what_to_run(cli):
    assert_one_line_error(cli("prepare", "bccd"), "BCCD is not fetched", "cellmorphnet fetch bccd")
