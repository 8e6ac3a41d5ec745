"""The model that ships inside the package: a complete, calibrated run that infer, status, eval and serve know by
name, right after install, with nothing written into the installed package."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from conftest import PBC_64, PBC_TEST_IMAGES, SHARED, assert_one_line_error

from cellmorphnet._io import read_json
from cellmorphnet.runs import checkpoint
from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.record import RunRecord


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_nothing_the_package_ships_holds_a_machine_path():
    """The shipped run's text files name no folder of the machine that built them (a temporary build path
    once leaked into eval/test/metrics.json)."""
    import re

    folder = runs.packaged_runs()[runs.PACKAGED]
    absolute = re.compile(r'"(/(?:tmp|home|root|work|Users|var|opt)/[^"]*|[A-Za-z]:\\\\[^"]*)"')
    for path in [*folder.rglob("*.json"), *folder.rglob("*.md")]:
        found = absolute.findall(path.read_text(encoding="utf-8"))
        assert not found, (path.name, found[:3])
    report = read_json(folder / "eval" / "test" / "metrics.json")
    assert report["run"] == runs.PACKAGED and report["checkpoint"] == "checkpoints/best.pt"


def test_the_shipped_run_is_complete_small_and_calibrated():
    folder = runs.packaged_runs()[runs.PACKAGED]
    record = RunRecord.load(folder)
    state = checkpoint.load(folder / "checkpoints" / "best.pt")
    assert record.mismatch(checkpoint.record_of(state)) == []
    assert "optimizer" not in state  # prediction only
    convs = [v for v in state["model"].values() if v.dim() == 4]
    assert convs and all(v.dtype == torch.float16 for v in convs)
    assert (folder / "checkpoints" / "best.pt").stat().st_size < 10_000_000
    assert record.config.model == "tf_efficientnet_lite0" and record.config.recipe == "default"
    assert record.calibration and record.temperature != 1.0
    assert record.inference.stain and len(record.inference.stain.nucleus_density) == 3  # for --stain-norm
    assert set(record.inference.stain.contrast) == set(record.classes)  # for the stain contrast
    metrics = read_json(folder / "eval" / "test" / "metrics.json")["datasets"]["bloodmnist"]["metrics"]
    assert metrics["accuracy"] > 0.98
    card = (folder / "MODEL_CARD.md").read_text()
    assert "CC BY 4.0" in card and "not a medical device" in card and "cellmorphnet train" in card


@pytest.mark.slow
def test_infer_status_and_eval_know_the_shipped_model(cli, home, tmp_path):
    folder = runs.packaged_runs()[runs.PACKAGED]
    before = _digest(folder)
    r = cli("status", runs.PACKAGED)
    assert r.exit_code == 0 and "finished" in r.output, r
    r = cli("status")  # no runs of your own yet: the shipped one is pointed out
    assert r.exit_code == 0 and f"ready to use: {runs.PACKAGED}" in " ".join(r.stdout.split()), r
    out = tmp_path / "monocytes.csv"
    r = cli("infer", runs.PACKAGED, PBC_TEST_IMAGES / "monocyte", "--out", out)
    assert r.exit_code == 0, r
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30 and sum(row["predicted"] == "monocyte" for row in rows) >= 26  # each image on its own
    wrong = [row for row in rows if row["verdict"] == "classified" and row["predicted"] != "monocyte"]
    assert len(wrong) <= 1, wrong  # most errors go to a person (98.6% of PBC's classified cells are right)

    r = cli("eval", runs.PACKAGED)
    assert_one_line_error(r, "bloodmnist")  # the test split is not prepared in this home yet
    assert cli("fetch", "bloodmnist", "--from", PBC_64, "--size", "64", "--allow-unverified").exit_code == 0
    assert cli("prepare", "bloodmnist", "--size", "64").exit_code == 0
    r = cli("eval", runs.PACKAGED, "--json")
    assert r.exit_code == 0, r
    written = home / "packaged" / runs.PACKAGED / "eval" / "test" / "metrics.json"
    shipped = read_json(folder / "eval" / "test" / "metrics.json")["datasets"]["bloodmnist"]["metrics"]
    assert abs(read_json(written)["datasets"]["bloodmnist"]["metrics"]["accuracy"] - shipped["accuracy"]) < 1e-9
    assert _digest(folder) == before  # nothing written into the installed package

    assert_one_line_error(cli("train", "--resume", runs.PACKAGED), "ships with cellmorphnet")
    r = cli("infer", runs.PACKAGED, PBC_TEST_IMAGES / "monocyte", "--checkpoint", "last", "--out", tmp_path / "x.csv")
    assert_one_line_error(r, "best checkpoint only", "--checkpoint best")


@pytest.mark.slow
def test_the_shipped_model_on_another_labs_white_cells(cli):
    """The other lab's 300 cells with a lab profile made from them (no labels): framed, stain-normalised, the
    stain contrast found (denser cytoplasm than PBC's, so above 1), 8 views; the figure docs/benchmarks.md
    reports, as a floor."""
    five = "basophil,eosinophil,lymphocyte,monocyte,neutrophil"
    assert cli("lab", "create", "d1", SHARED / "external" / "zheng2018-d1").exit_code == 0
    r = cli("eval", runs.PACKAGED, "--on", SHARED / "external" / "zheng2018-d1", "--classes", five, "--json",
            "--lab", "d1")  # fmt: skip
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert report["framing"] == {"cell": 300} and report["colour_step"] == {"stain-norm": 300}
    assert 1.15 < report["stain_contrast"] < 1.4, report["stain_contrast"]
    assert report["balanced_accuracy_min5"] >= 0.79, report["balanced_accuracy_min5"]


def test_a_run_of_your_own_with_the_same_name_comes_first(cli, home):
    own = home / "runs" / runs.PACKAGED
    own.mkdir(parents=True)
    (own / runs.CONFIG).write_text("{}")
    assert runs.resolve_run(runs.PACKAGED, home) == own.resolve()
    assert runs.resolve_run(runs.PACKAGED, home / "elsewhere") == runs.packaged_runs()[runs.PACKAGED]


@pytest.mark.slow  # 6-9 s: keeps the fast tier under its 3 minutes
def test_eval_of_the_shipped_model_refuses_a_bloodmnist_file_other_than_its_training_data(cli, home, tmp_path):
    """The official BloodMNIST file is another file than the PBC rebuild the model was trained on (and its test
    split shares images with this model's training split): eval refuses it and names the difference."""
    import numpy as np
    from medmnist import INFO

    record = RunRecord.load(runs.packaged_runs()[runs.PACKAGED])
    trained_on = record.datasets["bloodmnist"]
    assert trained_on.checksum != "md5:" + INFO["bloodmnist"]["MD5_64"] and not trained_on.verified
    with np.load(PBC_64) as z:  # any BloodMNIST-format file but the one it trained on (here: a tenth of it)
        other = {k: z[k][: len(z[k]) // 10] for k in z.files}
    path = tmp_path / "bloodmnist_64.npz"
    np.savez(path, **other)
    assert cli("fetch", "bloodmnist", "--from", path, "--size", "64", "--allow-unverified").exit_code == 0
    assert cli("prepare", "bloodmnist", "--size", "64").exit_code == 0
    assert_one_line_error(cli("eval", runs.PACKAGED), "The data changed since this run trained", "source checksum")
