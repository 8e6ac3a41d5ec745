"""``train --init``: adapting the shipped model to a lab's labelled cells (classes by name, a new class, the parent
named in the record and by status, the run usable by infer), and its one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import PBC_64, PBC_TEST_IMAGES, assert_one_line_error

from cellmorphnet.runs import folders as runs
from cellmorphnet.runs.record import RunRecord


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab's reviewed cells: real PBC JPEGs of three types, and 'Smudge', a class the model does not have."""
    root = tmp_path_factory.mktemp("lab")
    for folder, cls in (("Neutrophils", "neutrophil"), ("lymphocyte", "lymphocyte"), ("eosinophil", "eosinophil"),
                        ("Smudge", "platelet")):  # fmt: skip
        (root / folder).mkdir()
        for p in sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, root / folder / p.name)
    return root


@pytest.mark.slow  # 11 s: the full path, on the shipped model
def test_init_adapts_the_shipped_model_to_a_lab_folder(cli, lab, tmp_path):
    r = cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--steps", "4", "--name", "ours",
            "--new-class", "Smudge")  # fmt: skip
    assert r.exit_code == 0, r.output
    said = " ".join(r.stderr.split())
    assert "without replay" in said and "New classes: Smudge" in said
    assert "Few reviewed cells of eosinophil 6, lymphocyte 6, neutrophil 6, Smudge 6" in said  # 6 of each, not 20
    assert "cellmorphnet lab calibrate ours --from DB|FOLDER --run ours" in said  # the next step to an error rate
    run = runs.resolve_run("ours", None)
    record = RunRecord.load(run)
    assert record.classes[:8] == RunRecord.load(runs.packaged_runs()["bloodmnist"]).classes
    assert record.classes[8:] == ["Smudge"]  # a new class, added at the end of the head
    assert record.parent.name == "bloodmnist" and len(record.parent.checkpoint_sha256) == 64
    assert record.adaptation.cells == 24 and record.adaptation.held_out["cells"] == 4
    assert record.adaptation.per_class == {"eosinophil": 6, "lymphocyte": 6, "neutrophil": 6, "Smudge": 6}
    assert record.adaptation.few_cells == record.adaptation.per_class
    assert RunRecord.from_dict(record.to_dict()) == record  # the typed parts round-trip through config.json
    parent = RunRecord.load(runs.packaged_runs()["bloodmnist"]).inference
    assert record.config.init and dataclasses.replace(record.inference, lab_set=None) == parent
    lab_set = record.inference.lab_set  # the lab's set-level values, infer's for every set of this run
    assert lab_set["cells"] == 24 and lab_set["side"] > 0 and len(lab_set["stain"]) == 3
    from cellmorphnet.runs import checkpoint
    from cellmorphnet.training.engine import HISTORY_KEYS

    state = checkpoint.load(run / "checkpoints" / "last.pt")  # training's checkpoint: it can be resumed from
    assert {"optimizer", "scheduler", "lr_plan", "rng"} <= set(state) and state["lr_plan"]["total_steps"] == 4
    assert tuple(json.loads((run / "history.json").read_text())) == HISTORY_KEYS  # training's history
    status = cli("status", "ours")
    assert status.exit_code == 0 and "adapted from" in status.stdout and "bloodmnist" in status.stdout
    shown = " ".join(status.stdout.split())
    assert "24 reviewed cells: eosinophil 6, lymphocyte 6, neutrophil 6, Smudge 6" in shown
    out = tmp_path / "p.csv"
    assert cli("infer", "ours", lab / "Smudge", "--out", out).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    # six images are too few for a set's own stain survey: the lab's is applied all the same
    assert all(r["colour_step"] == "stain-norm" for r in rows)
    assert {r["stain_contrast"] for r in rows} == {"" if lab_set["contrast"] is None else f"{lab_set['contrast']:.3f}"}
    assert cli("infer", "ours", lab / "Smudge", "--no-stain-norm", "--out", out).exit_code == 0
    assert {r["colour_step"] for r in csv.DictReader(out.open())} == {""}  # the switch still turns it off
    r = cli("infer", "ours", lab / "Smudge", "--json")
    assert json.loads(r.stdout)["summary"]["lab"] == "the run's own (adapted)"  # not calibrated: its record's values
    profile = json.loads(cli("lab", "show", "ours", "--json").stdout)  # the lab it adapted to, as a profile
    assert profile["run"] == "ours" and profile["values"]["stain"] == lab_set["stain"]
    assert cli("infer", "ours", lab / "Smudge", "--lab", "none", "--out", out).exit_code == 0
    assert {r["colour_step"] for r in csv.DictReader(out.open())} == {""}  # --lab none: the home preprocessing
    again = cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--name", "ours",
                "--new-class", "Smudge")  # fmt: skip
    assert_one_line_error(again, "already holds a run")


def test_init_errors_are_one_line(cli, lab, tmp_path):
    assert_one_line_error(cli("train", "--init", "no-such-run", "--datasets", f"folder:{lab}"), "no-such-run")
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", "bloodmnist"), "folder:DIR")
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{tmp_path}/none"),
                          "is not a folder")  # fmt: skip
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--model", "resnet18"),
                          "keeps its architecture")  # fmt: skip
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--replay",
                              "--new-class", "Smudge"), "not prepared here")  # fmt: skip
    assert_one_line_error(cli("train", "--datasets", "sample", "--steps", "3"), "go with --init")
    # a folder that names none of the model's classes is a misspelling until --new-class says it is meant
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}"),
                          "'Smudge' is not one of the model's classes", "--new-class Smudge")  # fmt: skip
    typo = tmp_path / "typo"
    shutil.copytree(lab / "lymphocyte", typo / "lymphocyte")
    shutil.copytree(lab / "Neutrophils", typo / "neutrofil")
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{typo}"),
                          "'neutrofil' is not one of", "Did you mean 'neutrophil'?")  # fmt: skip
    (typo / "neutrofil").rename(typo / "neutrophil")
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{typo}", "--new-class", "blast"),
                          "--new-class blast: no class folder of that name")  # fmt: skip
    (typo / "monocyte").mkdir()  # an empty class folder: a class with no cells
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{typo}"),
                          "monocyte holds no images")  # fmt: skip


@pytest.mark.slow
def test_init_replays_the_parents_training_data_where_it_is_prepared(cli, lab):
    assert cli("fetch", "bloodmnist", "--from", PBC_64, "--allow-unverified").exit_code == 0
    assert cli("prepare", "bloodmnist", "--size", "64").exit_code == 0
    r = cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--steps", "6", "--name", "replayed",
            "--json", "--new-class", "Smudge")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["adaptation"]["replay"]["datasets"] == ["bloodmnist"]
    assert summary["adaptation"]["replay"]["images"] >= 8 * 100
    assert "parent's validation images" in summary["calibration"]["fitted_on"]


def test_held_out_cells_are_a_fraction_of_each_class_from_four_cells_on():
    from cellmorphnet.training.finetune import split_held_out

    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    train, held = split_held_out(labels, 0.2, seed=1)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 0, 1]  # 2 of 10, none of 3, 1 of 5
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(labels)))
    train, held = split_held_out(labels, 0.0, seed=1)
    assert len(held) == 0 and len(train) == len(labels)  # 0: every cell trains


@pytest.mark.slow  # 8 s
def test_too_few_cells_to_hold_out_keep_the_parents_temperature(cli, lab, tmp_path):
    few = tmp_path / "few"
    for folder in ("Neutrophils", "lymphocyte"):
        (few / folder).mkdir(parents=True)
        for p in sorted((lab / folder).iterdir())[:3]:
            shutil.copy(p, few / folder / p.name)
    r = cli("train", "--init", "bloodmnist", "--datasets", f"folder:{few}", "--steps", "2", "--no-replay",
            "--name", "few", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["adaptation"]["held_out"] == {}
    parent = RunRecord.load(runs.packaged_runs()["bloodmnist"])
    assert summary["calibration"]["temperature"] == round(parent.temperature, 4)
    assert "parent's temperature" in summary["calibration"]["fitted_on"]


@pytest.mark.slow  # the full path twice over (adapt, then the calibration cells read with every view)
def test_init_with_calibrate_sets_cells_aside_and_fits_the_profiles_conformal_rule(cli, lab):
    r = cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--steps", "4", "--name", "cal",
            "--new-class", "Smudge", "--calibrate", "5")  # fmt: skip
    assert r.exit_code == 0, r.output
    said = " ".join(r.stderr.split())
    assert "calibrated on 20 cells set aside from training" in said and "lab calibrate" not in said
    record = RunRecord.load(runs.resolve_run("cal", None))
    assert record.adaptation.cells == 4  # 6 of each type, 5 set aside: the run never learned from those 20
    profile = json.loads(cli("lab", "show", "cal", "--json").stdout)
    assert profile["values"]["conformal"] == {"alpha": 0.05, "qhat": profile["values"]["conformal"]["qhat"],
                                              "cells": 20}  # fmt: skip
    assert "set aside from training" in profile["calibrated"]["source"]
    r = cli("infer", "cal", lab / "lymphocyte", "--json")  # the run's own calibrated profile, without --lab
    assert r.exit_code == 0, r
    answer = json.loads(r.stdout)
    assert answer["summary"]["lab"] == "cal"  # its calibrated profile, not the record's own values
    reasons = {p["review_reason"] for p in answer["predictions"] if p["verdict"] == "review"}
    assert all(why.startswith("prediction set") for why in reasons), reasons
    assert_one_line_error(cli("train", "--init", "bloodmnist", "--datasets", f"folder:{lab}", "--name", "cal2",
                              "--new-class", "Smudge", "--calibrate", "6"), "sets aside 0 cells")  # fmt: skip
    assert_one_line_error(cli("train", "--datasets", "sample", "--calibrate", "5"), "go with --init")
