"""The run record: what a run trained on is stored once, and eval, resume, infer and export refuse changed data."""

import json
import shutil

import pytest
import torch
from conftest import PBC_TEST_IMAGES, assert_one_line_error

QUICK = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "8", "--accum-steps", "1",
         "--limit-batches", "2", "--data-size", "28"]  # fmt: skip


def _cells(root, names=("eosinophil", "lymphocyte", "platelet"), n=10):
    for cls in names:
        (root / cls).mkdir(parents=True)
        for p in sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[:n]:
            shutil.copy(p, root / cls / p.name)
    return root


@pytest.fixture
def folder_run(cli, home, tmp_path):
    root = _cells(tmp_path / "cells")
    assert cli("prepare", f"folder:{root}", "--size", "28").exit_code == 0
    r = cli("train", "--datasets", f"folder:{root}", "--name", "f", "--epochs", "1", *QUICK)
    assert r.exit_code == 0, r
    return root


def test_eval_refuses_a_test_split_made_with_another_seed(cli, home, folder_run):
    assert cli("prepare", f"folder:{folder_run}", "--size", "28", "--seed", "1").exit_code == 0
    r = cli("eval", "f")
    assert_one_line_error(r, "The data changed since this run trained", "prepare seed 42 → 1", "--seed 42 --force",
                          "--accept-data-change")  # fmt: skip
    r = cli("eval", "f", "--accept-data-change", "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert any("seed 42 → 1" in c for c in report["data_changes_accepted"])
    saved = json.loads((home / "runs" / "f" / "eval" / "test" / "metrics.json").read_text())
    assert saved["data_changes_accepted"] == report["data_changes_accepted"]
    # restoring the data as the hint says makes eval work again, with nothing to accept
    assert cli("prepare", f"folder:{folder_run}", "--size", "28", "--seed", "42", "--force").exit_code == 0
    assert json.loads(cli("eval", "f", "--json").stdout)["data_changes_accepted"] == []


def test_a_renamed_class_folder_is_not_silently_relabelled(cli, home, folder_run):
    (folder_run / "lymphocyte").rename(folder_run / "zz-lymph")  # same class count, labels would permute
    assert cli("prepare", f"folder:{folder_run}", "--size", "28", "--force").exit_code == 0
    assert_one_line_error(cli("eval", "f"), "The data changed", "classes -lymphocyte, +zz-lymph")


def test_resume_keeps_its_data_size_and_refuses_changed_data(cli, home):
    assert cli("train", "--datasets", "sample", "--name", "s", "--epochs", "1", *QUICK).exit_code == 0
    assert cli("prepare", "sample", "--size", "64").exit_code == 0  # a larger size now exists
    r = cli("train", "--resume", "s", "--epochs", "2")
    assert r.exit_code == 0, r
    config = json.loads((home / "runs" / "s" / "config.json").read_text())
    assert config["datasets"]["sample"]["size"] == 28 and config["image_size"] == 28
    assert config["resumed"][0]["epoch"] == 1 and config["resumed"][0]["changed"] == {"epochs": 2}

    assert cli("prepare", "sample", "--size", "28", "--seed", "7", "--force").exit_code == 0
    assert_one_line_error(cli("train", "--resume", "s", "--epochs", "3"), "The data changed", "prepare seed 42 → 7")
    r = cli("train", "--resume", "s", "--epochs", "3", "--accept-data-change")
    assert r.exit_code == 0, r
    config = json.loads((home / "runs" / "s" / "config.json").read_text())
    assert "seed 42 → 7" in config["resumed"][-1]["data_changes_accepted"][0]


def test_raising_epochs_on_resume_does_not_make_the_learning_rate_jump(cli, home):
    args = ["--datasets", "sample", "--name", "lr", "--lr", "1e-3", "--warmup-epochs", "0", *QUICK]
    assert cli("train", *args, "--epochs", "3").exit_code == 0
    assert cli("train", "--resume", "lr", "--epochs", "6").exit_code == 0
    lrs = json.loads((home / "runs" / "lr" / "history.json").read_text())["lr"]
    assert len(lrs) == 6
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    # the plain cosine over 6 epochs would restart epoch 4 at half the peak rate
    assert lrs[3] < 0.5e-3


def test_config_json_that_disagrees_with_the_checkpoint_is_refused(cli, home):
    assert cli("train", "--datasets", "sample", "--name", "x", "--epochs", "1", *QUICK).exit_code == 0
    path = home / "runs" / "x" / "config.json"
    config = json.loads(path.read_text())
    config["classes"] = list(reversed(config["classes"]))
    path.write_text(json.dumps(config))
    img = sorted(PBC_TEST_IMAGES.glob("*/*.jpg"))[0]
    assert_one_line_error(cli("infer", "x", img), "does not match its best.pt", "classes")
    r = cli("infer", "x", img, "--accept-data-change")
    assert r.exit_code == 0 and "config.json differs" in r.stderr


def _as_schema_1(run):
    """Rewrite a run folder as cellmorphnet wrote it before the typed record (schema 1, checkpoint format 1)."""
    rec = json.loads((run / "config.json").read_text())
    cfg = {**rec["config"], "channels_last": True}
    resolved = {
        **{k: rec[k] for k in ("device", "precision", "image_size", "classes", "taxonomy", "mean", "std",
                               "steps_per_epoch", "inference")},
        "data_sizes": {n: d["size"] for n, d in rec["datasets"].items()},
        "datasets": {n: {k: d[k] for k in ("size", "checksum", "verified", "classes", "preprocessing", "counts")}
                     for n, d in rec["datasets"].items()},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps({"config": cfg, "resolved": resolved, "versions": rec["versions"],
                                                 "created": rec["created"]}))  # fmt: skip
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.pt"
        state = torch.load(path, weights_only=True)
        del state["record"], state["lr_plan"]
        torch.save({**state, "format": 1, "config": cfg, "resolved": resolved}, path)
    (run / "reference_images.npz").unlink()


def test_a_run_folder_from_before_the_record_still_loads(cli, home):
    assert cli("train", "--datasets", "sample", "--name", "old", "--epochs", "1", *QUICK).exit_code == 0
    _as_schema_1(home / "runs" / "old")
    assert json.loads(cli("eval", "old", "--json").stdout)["datasets"]["sample"]["metrics"]["n"] == 192
    img = sorted(PBC_TEST_IMAGES.glob("*/*.jpg"))[0]
    assert cli("infer", "old", img).exit_code == 0
    assert cli("export", "old", "--format", "onnx").exit_code == 0  # reference images from the cache
    st = json.loads(cli("status", "old", "--json").stdout)["run"]
    assert st["state"] == "finished" and st["datasets"] == ["sample"]
    r = cli("train", "--resume", "old", "--epochs", "2")
    assert r.exit_code == 0, r
    assert json.loads((home / "runs" / "old" / "config.json").read_text())["schema"] == 2


def test_a_run_from_a_newer_version_is_refused_clearly(cli, home):
    assert cli("train", "--datasets", "sample", "--name", "new", "--epochs", "1", *QUICK).exit_code == 0
    path = home / "runs" / "new" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": 99}))
    assert_one_line_error(cli("eval", "new"), "newer cellmorphnet", "schema 99")


def test_atomic_writes_get_ordinary_permissions_and_keep_existing_ones(tmp_path):
    """A run folder written atomically stays as readable as files written plainly (not owner-only, as the
    temporary file was), and a file rewritten keeps the permissions it had."""
    import os
    import stat

    from cellmorphnet._io import write_json

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    written = tmp_path / "config.json"
    write_json(written, {"a": 1})
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(written, 0o640)
    write_json(written, {"a": 2})
    assert stat.S_IMODE(written.stat().st_mode) == 0o640 and '"a": 2' in written.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_an_atomic_write_where_no_file_can_go_is_an_output_error_and_leaves_what_was_there(tmp_path):
    from cellmorphnet._io import check_writable, write_json
    from cellmorphnet.errors import OutputError

    (tmp_path / "a-file").write_text("kept")
    with pytest.raises(OutputError, match="Cannot write .*a-file/x.json"):
        write_json(tmp_path / "a-file" / "x.json", {"a": 1})
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OutputError, match="Cannot write .*a-folder"):  # a folder where the file would go
        write_json(tmp_path / "a-folder", {"a": 1})
    assert (tmp_path / "a-file").read_text() == "kept" and list((tmp_path / "a-folder").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    check_writable(tmp_path / "new" / "deeper" / "x.json", folder=False)  # folders yet to be made are fine
    check_writable(tmp_path / "new" / "deeper", folder=True)
    assert not (tmp_path / "new").exists()  # and nothing is made by checking
    with pytest.raises(OutputError, match="a-file is not a folder"):
        check_writable(tmp_path / "a-file" / "deeper" / "x", folder=True)


@pytest.mark.slow  # 6-9 s: keeps the fast tier under its 3 minutes
def test_upgrade_adds_the_stain_reference_to_an_older_run_from_its_own_data(cli, home):
    from cellmorphnet.runs import checkpoint

    r = cli("train", "--datasets", "sample", "--name", "old", "--epochs", "1", *QUICK)
    assert r.exit_code == 0, r
    run = home / "runs" / "old"
    config = json.loads((run / "config.json").read_text())
    measured = config["inference"]["stain"]
    assert measured["nucleus_density"] and measured["contrast"]
    # what a run trained before the stain steps looks like: no stain reference, in config.json nor checkpoints
    config["inference"]["stain"] = None
    (run / "config.json").write_text(json.dumps(config))
    for path in (run / "checkpoints").glob("*.pt"):
        state = checkpoint.load(path)
        state["record"]["inference"]["stain"] = None
        checkpoint.save(state, path)
    assert_one_line_error(cli("infer", "old", PBC_TEST_IMAGES / "monocyte", "--stain-norm"), "no stain reference",
                          "cellmorphnet upgrade RUN")  # fmt: skip
    weights = checkpoint.load(run / "checkpoints" / "best.pt")["model"]

    r = cli("upgrade", "old", "--json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["changed"] is True
    assert json.loads((run / "config.json").read_text())["inference"]["stain"] == measured  # as training measured it
    for path in (run / "checkpoints").glob("*.pt"):
        state = checkpoint.load(path)
        assert state["record"]["inference"]["stain"] == measured
    after = checkpoint.load(run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # the weights stay as they were
    out = cli("infer", "old", PBC_TEST_IMAGES / "monocyte", "--stain-norm", "--out", home / "p.json")
    assert out.exit_code == 0, out
    rows = json.loads((home / "p.json").read_text())["predictions"]
    assert all(p["colour_step"] == "stain-norm" for p in rows)  # the stain steps work again
    assert (run / "trust.npz").exists() and all(p["typicality"] is not None for p in rows)  # and the verdicts
    assert json.loads(cli("upgrade", "old", "--json").stdout)["changed"] is False  # twice is a no-op

    # a stored reference that the data does not give: not the data the run trained on, nothing written
    config = json.loads((run / "config.json").read_text())
    config["inference"]["stain"]["nucleus_density"] = [0.1, 0.1, 0.1]
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "config.json").read_text()
    assert_one_line_error(cli("upgrade", "old"), "is not what old was trained on")
    assert (run / "config.json").read_text() == before
    assert_one_line_error(cli("upgrade", "bloodmnist"), "ships with cellmorphnet")
