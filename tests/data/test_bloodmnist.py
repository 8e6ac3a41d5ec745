"""BloodMNIST import and prepare on the real rebuilt PBC file."""

import json
import shutil
import zipfile

import numpy as np
from conftest import PBC_28, assert_one_line_error

from cellmorphnet.data.sources import bloodmnist


def test_refuse_then_accept_unverified_and_prepare(cli, home):
    expected = bloodmnist.bloodmnist_file(28)[2]
    r = cli("fetch", "bloodmnist", "--from", PBC_28)
    assert_one_line_error(r, "MD5", expected, "--allow-unverified")
    assert r.exit_code == 1
    assert not (home / "downloads" / "bloodmnist" / "bloodmnist.npz").exists()
    assert not list((home / "downloads" / "bloodmnist").glob("*.import"))

    r = cli("fetch", "bloodmnist", "--from", PBC_28, "--allow-unverified")
    assert r.exit_code == 0, r
    assert "UNVERIFIED" in r.stderr

    r = cli("prepare", "bloodmnist", "--json")
    assert r.exit_code == 0, r
    [out] = json.loads(r.stdout)
    assert out["size"] == 28 and out["verified"] is False
    assert {s: c["total"] for s, c in out["counts"].items()} == {"train": 11959, "val": 1712, "test": 3421}
    assert out["classes"][3] == "ig" and len(out["classes"]) == 8

    target = home / "prepared" / "bloodmnist" / "28"
    images = np.load(target / "train_images.npy", mmap_mode="r")
    assert images.shape == (11959, 28, 28, 3) and images.dtype == np.uint8
    with np.load(PBC_28) as src:
        assert np.array_equal(images[:50], src["train_images"][:50])

    # unchanged input: a no-op that leaves the arrays alone
    mtime = (target / "train_images.npy").stat().st_mtime_ns
    r = cli("prepare", "bloodmnist")
    assert "unchanged" in r.stderr
    assert (target / "train_images.npy").stat().st_mtime_ns == mtime

    status = cli("status", "--json")
    entry = next(d for d in json.loads(status.stdout)["cache"]["datasets"] if d["name"] == "bloodmnist")
    assert entry["verified"] is False and entry["prepared"]["28"]["verified"] is False
    assert "(unverified)" in cli("status").stdout


def test_size_mismatch_and_unknown_size(cli):
    r = cli("fetch", "bloodmnist", "--from", PBC_28, "--size", "64", "--allow-unverified")
    assert_one_line_error(r, "28 px")
    r = cli("fetch", "bloodmnist", "--size", "100")
    assert_one_line_error(r, "no size 100")


def _import(cli, path):
    r = cli("fetch", "bloodmnist", "--from", path, "--allow-unverified", "--force")
    return r


def test_truncated_npz_is_refused_without_damaging_cache(cli, home, tmp_path):
    assert _import(cli, PBC_28).exit_code == 0
    assert cli("prepare", "bloodmnist").exit_code == 0
    manifest = (home / "prepared" / "bloodmnist" / "28" / "manifest.json").read_text()

    broken = tmp_path / "bloodmnist.npz"
    data = PBC_28.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    r = _import(cli, broken)
    assert_one_line_error(r, "not a readable npz")
    # the earlier import and its prepared arrays are untouched
    assert (home / "downloads" / "bloodmnist" / "bloodmnist.npz").stat().st_size == len(data)
    assert (home / "prepared" / "bloodmnist" / "28" / "manifest.json").read_text() == manifest
    assert cli("prepare", "bloodmnist").exit_code == 0


def _write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)


def _good_arrays(n=10, size=28):
    rng = np.random.default_rng(0)
    out = {}
    for s in ("train", "val", "test"):
        out[f"{s}_images"] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        out[f"{s}_labels"] = rng.integers(0, 8, (n, 1), dtype=np.uint8)
    return out


def test_malformed_npz_names_the_fault(cli, tmp_path):
    cases = {
        "missing key": ({"drop": "val_labels"}, "lacks the arrays val_labels"),
        "bad label": ({"set": ("test_labels", np.full((10, 1), 9, np.uint8))}, "range from 9 to 9"),
        "bad dtype": ({"set": ("train_images", np.zeros((10, 28, 28, 3), np.float32))}, "dtype float32"),
        "bad shape": ({"set": ("val_images", np.zeros((10, 28, 28), np.uint8))}, "expected (N, 28, 28, 3)"),
        "length": ({"set": ("train_labels", np.zeros((7, 1), np.uint8))}, "expected (10, 1)"),
    }
    for case, (change, message) in cases.items():
        arrays = _good_arrays()
        if "drop" in change:
            arrays.pop(change["drop"])
        else:
            key, value = change["set"]
            arrays[key] = value
        path = tmp_path / f"{case.replace(' ', '_')}.npz"
        _write_npz(path, **arrays)
        assert _import(cli, path).exit_code == 0, case
        r = cli("prepare", "bloodmnist")
        assert_one_line_error(r, message)


def test_npz_that_is_not_a_zip(cli, tmp_path):
    p = tmp_path / "x.npz"
    p.write_text("hello")
    assert_one_line_error(_import(cli, p), "not a readable npz")
    with zipfile.ZipFile(tmp_path / "y.npz", "w") as zf:
        zf.writestr("other.npy", b"")
    assert_one_line_error(_import(cli, tmp_path / "y.npz"), "no 'train_images'")


def test_import_from_a_medmnist_folder(cli, home, tmp_path):
    folder = tmp_path / "medmnist"
    folder.mkdir()
    shutil.copy(PBC_28, folder / "bloodmnist.npz")
    r = cli("fetch", "bloodmnist", "--from", folder, "--size", "28", "--allow-unverified")
    assert r.exit_code == 0, r
    r = cli("fetch", "bloodmnist", "--from", folder, "--size", "64", "--allow-unverified")
    assert_one_line_error(r, "holds no bloodmnist_64.npz")
