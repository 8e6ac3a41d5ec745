"""eval on a tiny trained run (the run is trained once a session: conftest's ``trained``), and the metrics it
reports, on hand-checked numbers."""

import json
import warnings

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image

from cellmorphnet.evaluation.metrics import classification_metrics, expected_calibration_error, success_criteria

# --- metrics on hand-checked numbers -------------------------------------------------------------


def test_metrics_on_a_hand_checked_confusion_matrix():
    # 3 classes; true/pred pairs chosen so the confusion matrix is [[2,1,0],[0,3,0],[1,0,1]]
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 2])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), pred] = 0.8
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    # precision a = 2/3, recall a = 2/3; b: 3/4, 1; c: 1, 1/2
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    f1 = [2 / 3, 2 * 0.75 * 1 / 1.75, 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert m["per_class"]["b"]["support"] == 3
    assert 0.0 <= m["macro_auc_ovr"] <= 1.0
    # every prediction has confidence 0.8/1.0 = 0.8 and 6 of 8 are right: ECE = |0.75 - 0.8|
    assert m["ece"] == pytest.approx(0.05)


def test_a_set_of_one_class_scores_without_warnings():
    # a lab's folder of neutrophils only, two of them called monocytes: balanced accuracy is that class's recall
    labels = np.array([2, 2, 2, 2])
    probs = np.full((4, 3), 0.1)
    probs[np.arange(4), [2, 2, 1, 1]] = 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warned of 'a single label' on eval --on such a folder
        m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["balanced_accuracy"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[0, 0, 0], [0, 0, 0], [0, 2, 2]]


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.5, 0.5]] * 4)
    ece, _ = expected_calibration_error(probs, np.array([0, 1, 0, 1]))
    assert ece == pytest.approx(0.0)


def test_success_criteria():
    rows = success_criteria(0.91, {"a": 0.95, "b": 0.78}, 0.88)
    verdict = {r["criterion"].split(" (")[0]: r["pass"] for r in rows}
    assert verdict["validation macro-F1 > 85%"] and verdict["validation macro-F1 ≥ 90%"]
    assert not verdict["validation macro-F1 ≥ 93%"]
    assert verdict["every class F1 > 75%"] and not verdict["every class F1 ≥ 80%"]
    assert not rows[-1]["pass"] and rows[-1]["value"] == pytest.approx(0.03)


# --- a trained run for the command tests ------------------------------------------------------------


def test_eval_writes_metrics_and_plots(cli, trained):
    r = cli("eval", "t", "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    entry = report["datasets"]["sample"]
    assert entry["metrics"]["n"] == 192 and len(entry["metrics"]["confusion_matrix"]) == 8
    assert "generalisation_gap" in entry and len(entry["criteria"]) == 6
    out = trained / "eval" / "test"
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"
    for name in ("sample_test_confusion.png", "sample_test_per_class_f1.png", "sample_test_reliability.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 200
    human = cli("eval", "--split", "val")
    assert human.exit_code == 0 and "Success criteria" in human.stdout
    assert "PASS" in human.stdout or "FAIL" in human.stdout
    assert_one_line_error(cli("eval", "t", "--split", "train"), "--split must be test or val")


def test_eval_averages_the_eight_views_like_infer_unless_told_not_to(cli, trained, home):
    from cellmorphnet.data import store
    from cellmorphnet.inference import class_probs
    from cellmorphnet.runs.load import load_run_model, predict_split

    with_tta = json.loads(cli("eval", "t", "--json").stdout)
    without = json.loads(cli("eval", "t", "--no-tta", "--json").stdout)
    assert with_tta["tta"] is True and without["tta"] is False
    # the 8-view probabilities of eval are those infer computes from the same arrays
    rm = load_run_model(trained, "best", "cpu")
    split = store.load_split("sample", rm.record.datasets["sample"].size, "test", home)
    probs = predict_split(rm, "test", home, tta=True)["sample"]["probs"]
    direct = class_probs(rm.model, list(split.images[:32]), rm.record.inference, device="cpu",
                         channels_last=rm.channels_last, tta=True, temperature=rm.record.temperature)  # fmt: skip
    assert np.abs(probs[:32] - direct).max() < 1e-5
    assert np.abs(probs - predict_split(rm, "test", home)["sample"]["probs"]).max() > 1e-4  # the views differ
