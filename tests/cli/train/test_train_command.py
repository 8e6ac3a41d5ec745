"""train and status through the real command line, including a training process running beside us."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from cellmorphnet.runs import checkpoint

QUICK = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "8", "--accum-steps", "1",
         "--limit-batches", "2", "--data-size", "28"]  # fmt: skip


def test_train_on_sample_writes_a_complete_run_folder(cli, home):
    r = cli("train", "--datasets", "sample", "--name", "quick", "--epochs", "2", *QUICK)
    assert r.exit_code == 0, r
    run = home / "runs" / "quick"
    assert "finished after 2/2 epochs" in r.stderr
    assert "Run folder:" in r.stderr and "cpu" in r.stderr
    for f in ("config.json", "history.json", "train.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).exists(), f
    config = json.loads((run / "config.json").read_text())
    assert config["schema"] == 2 and config["config"]["epochs"] == 2 and config["image_size"] == 28
    sample = config["datasets"]["sample"]
    assert sample["checksum"].startswith("sha256:") and sample["params"] == {"size": 28, "seed": 42}
    assert len(sample["content_digest"]) == 64 and sample["counts"] == {"train": 512, "val": 96, "test": 192}
    assert config["versions"]["torch"] == str(torch.__version__)
    with np.load(run / "reference_images.npz") as ref:
        assert ref["images"].shape == (64, 28, 28, 3) and ref["images"].dtype == np.uint8
    history = json.loads((run / "history.json").read_text())
    # the original design's monitoring snippet
    assert len(history["train_loss"]) == 2
    assert max(history["val_f1"]) <= 1.0
    assert 0.0 <= history["train_acc"][-1] <= 1.0
    for key in ("val_loss", "val_acc", "val_f1_per_class", "lr", "epoch_time", "images_per_s"):
        assert len(history[key]) == 2, key
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "lr_plan", "scaler", "rng", "epoch", "early_stopping", "record",
                "class_names"):  # fmt: skip
        assert key in state, key

    st = cli("status", "quick", "--json")
    data = json.loads(st.stdout)["run"]
    assert data["state"] == "finished" and data["epochs_done"] == 2 and data["epochs_planned"] == 2
    human = cli("status")
    assert "finished" in human.stdout and "Per-class validation F1" in human.stdout
    assert "Datasets in" in human.stdout  # the cache listing stays
    watched = cli("status", "quick", "--watch", "--interval", "0.1")  # a finished run: one frame, then done
    assert watched.exit_code == 0 and "finished" in watched.stdout


def test_help_shows_defaults_one_way(cli):
    for command in ("train", "infer", "eval", "serve", "fetch", "prepare", "export"):
        out = " ".join(cli(command, "--help").stdout.split())
        assert "(default" not in out, command  # Typer's own form, [default: X], everywhere
    out = " ".join(cli("train", "--help").stdout.split())
    assert "[default: 20]" in out and "[default: 5e-4]" in out and "--recipe" in out


def test_config_file_and_flag_precedence(cli, home, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('datasets = "sample"\nepochs = 3\nlr = 0.005\nbatch-size = 8\n')
    r = cli("train", "--config", cfg, "--epochs", "1", "--name", "cfg", "--model", "test_efficientnet",
            "--no-pretrained", "--limit-batches", "1", "--data-size", "28")  # fmt: skip
    assert r.exit_code == 0, r
    saved = json.loads((home / "runs" / "cfg" / "config.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["lr"] == 0.005 and saved["batch_size"] == 8
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    assert_one_line_error(cli("train", "--config", bad), "Unknown configuration key(s): epochz")
    assert_one_line_error(cli("train", "--epochs", "0"), "epochs must be at least 1")
    assert_one_line_error(cli("train", "--ema", "1.5"), "ema must be in [0, 1)")
    assert_one_line_error(cli("train", "--mixup", "-1"), "mixup and cutmix must not be negative")
    assert_one_line_error(cli("train", "--data-size", "0"), "data-size must be 8 to 1024")  # 0 is not 'the default'
    assert_one_line_error(cli("train", "--limit-batches", "0"), "limit-batches must be at least 1")
    r = cli("train", "--datasets", "sample", "--ema", "0.99", "--mixup", "0.2", "--cutmix", "1", "--epochs", "1",
            "--name", "mix", "--model", "test_efficientnet", "--no-pretrained", "--limit-batches", "2",
            "--data-size", "28")  # fmt: skip
    assert r.exit_code == 0, r
    saved = json.loads((home / "runs" / "mix" / "config.json").read_text())["config"]
    assert (saved["ema"], saved["mixup"], saved["cutmix"]) == (0.99, 0.2, 1.0)
    assert "trained" in checkpoint.load(home / "runs" / "mix" / "checkpoints" / "last.pt")
    assert "trained" not in checkpoint.load(home / "runs" / "mix" / "checkpoints" / "best.pt")
    assert_one_line_error(cli("train", "--datasets", "bccd"), "BCCD is not fetched")
    assert_one_line_error(cli("train", "--resume", "nope"), "No run 'nope'")
    assert_one_line_error(cli("status", "nope"), "No run 'nope'")
    for name in ("../escape", "a/b", ".hidden", "latest", " "):  # a run name is one folder under runs/
        assert_one_line_error(cli("train", "--datasets", "sample", "--name", name, "--epochs", "1"),
                              "is not one folder under the home's runs/")  # fmt: skip
    assert not (home / "escape").exists() and not (home / "runs" / "a").exists()


def _spawn_training(home, name, epochs=500):
    env = {**os.environ, "CELLMORPHNET_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    # --patience: early stopping must not end the run before the test has done with it
    args = [sys.executable, "-m", "cellmorphnet", "train", "--datasets", "sample", "--name", name,
            "--epochs", str(epochs), "--patience", str(epochs), *QUICK]  # fmt: skip
    # a foreground command's Ctrl-C: a shell starts background jobs with SIGINT ignored, and Python then leaves it
    # ignored, so a suite run in the background (nohup ... &) would otherwise never deliver it
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _status(cli, name):
    return json.loads(cli("status", name, "--json").stdout)["run"]


def _wait_for(predicate, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_status_of_a_running_then_killed_run_and_in_use_refusal(cli, home):
    proc = _spawn_training(home, "live")
    try:
        _wait_for(lambda: (home / "runs" / "live" / "history.json").exists())
        st = _status(cli, "live")
        assert st["state"] == "running", st
        assert st["epochs_done"] >= 1 and st["epochs_planned"] == 500
        assert st["eta_seconds"] is not None and st["best_val_f1"] is not None
        human = cli("status", "live")
        assert "running" in human.stdout and "time left" in human.stdout

        # a second training into the same folder is refused while the first runs
        r = cli("train", "--datasets", "sample", "--run-dir", home / "runs" / "live", "--epochs", "1", *QUICK)
        assert_one_line_error(r, "in use by another training process")

        proc.kill()
        proc.wait(timeout=30)
        st = _status(cli, "live")
        assert st["state"] == "crashed" and "gone" in st["reason"]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly_then_resumes(cli, home, signum, code):
    proc = _spawn_training(home, "sigint", epochs=500)
    try:
        _wait_for(lambda: (home / "runs" / "sigint" / "history.json").exists())
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    st = _status(cli, "sigint")
    assert st["state"] == "interrupted" and signal.Signals(signum).name in st["reason"]
    done = st["epochs_done"]
    state = checkpoint.load(home / "runs" / "sigint" / "checkpoints" / "last.pt")
    assert state["epoch"] == done
    r = cli("train", "--resume", "sigint", "--epochs", str(done + 1))
    assert r.exit_code == 0, r
    st = _status(cli, "sigint")
    assert st["epochs_done"] == done + 1 and st["epochs_planned"] == done + 1 and st["state"] == "finished"
    saved = json.loads((home / "runs" / "sigint" / "config.json").read_text())
    assert saved["config"]["epochs"] == done + 1


def test_latest_run_is_the_newest_created_even_after_an_older_one_is_resumed(home):
    from cellmorphnet.runs import folders as runs

    for name, created in (("old", "2026-01-01T00:00:00+00:00"), ("new", "2026-02-01T00:00:00+00:00")):
        (home / "runs" / name).mkdir(parents=True)
        (home / "runs" / name / "config.json").write_text(json.dumps({"created": created}))
    # a resume rewrites the old run's config.json last; it must not become the latest
    (home / "runs" / "old" / "config.json").write_text(
        json.dumps({"created": "2026-01-01T00:00:00+00:00", "resumed": "2026-03-01T00:00:00+00:00"})
    )
    assert runs.resolve_run(None, home).name == "new"
