"""Temperature scaling: fitted on validation after training, stored in the run, applied by eval, infer and export."""

import json

import pytest
import torch
from conftest import PBC_TEST_IMAGES, assert_one_line_error, in_home, train_once

from cellmorphnet.training.calibration import fit_temperature

QUICK = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "16", "--accum-steps", "1",
         "--data-size", "28"]  # fmt: skip


def test_fit_temperature_recovers_a_known_temperature():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 5) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    table = torch.eye(5)
    # a network that is three times over-confident: its logits are the true ones times 3
    assert fit_temperature(true_logits * 3, labels, table) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits / 2, labels, table) == pytest.approx(0.5, rel=0.1)


@pytest.fixture(scope="module")
def run_home(tmp_path_factory):
    home, r = train_once(tmp_path_factory, "c", "--epochs", "2", "--limit-batches", "6", *QUICK)
    assert "Calibrated the confidences" in r.stderr
    return home


@pytest.fixture
def run(run_home, home):
    return in_home(run_home, home, "c")


def test_calibration_is_stored_and_lowers_validation_nll(run):
    cal = json.loads((run / "config.json").read_text())["calibration"]
    assert cal["temperature"] > 0 and cal["val_nll_after"] <= cal["val_nll_before"] + 1e-6
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["record"]["calibration"] == cal


def test_infer_and_eval_apply_the_temperature_and_flag_low_confidence(cli, run, tmp_path):
    from cellmorphnet.inference import InferenceOptions, predict_files
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(run, "best", "cpu")
    files = sorted((PBC_TEST_IMAGES / "ig").glob("*.jpg"))[:8]
    centre = rm.record.inference.with_crop("centre")
    plain, _ = predict_files(rm, files, InferenceOptions(centre), top_k=8)
    scaled, _ = predict_files(rm, files, InferenceOptions(centre, temperature=rm.record.temperature), top_k=8)
    assert [p.predicted for p in plain] == [p.predicted for p in scaled]  # a temperature never changes the class
    assert [p.confidence for p in plain] != [p.confidence for p in scaled]
    out = tmp_path / "p.json"
    r = cli("infer", "c", *files, "--out", out, "--min-confidence", "0.99", "--crop", "centre", "--no-tta",
            "--no-colour-match")  # fmt: skip
    assert r.exit_code == 0, r
    data = json.loads(out.read_text())
    assert data["summary"]["adaptation"]["temperature"] == rm.record.temperature
    assert [p["confidence"] for p in data["predictions"]] == pytest.approx([p.confidence for p in scaled], abs=1e-6)
    assert all(p["low_confidence"] for p in data["predictions"]) and "below 0.99" in r.stderr
    report = json.loads(cli("eval", "c", "--json").stdout)
    assert report["calibration"]["temperature"] == rm.record.temperature
    assert_one_line_error(cli("infer", "c", *files, "--min-confidence", "2"), "--min-confidence")
