"""Several datasets in one run: the shared class list, per-dataset validation, and eval in local label spaces."""

import json

import pytest
from conftest import BCCD_ZIP


@pytest.mark.slow
def test_sample_and_bccd_train_together_and_report_each_in_its_own_labels(cli, home):
    assert cli("fetch", "bccd", "--from", BCCD_ZIP).exit_code == 0
    assert cli("prepare", "bccd", "--size", "28").exit_code == 0
    r = cli("train", "--datasets", "sample,bccd", "--name", "multi", "--epochs", "1", "--data-size", "28",
            "--model", "test_efficientnet", "--no-pretrained", "--batch-size", "32", "--accum-steps", "1",
            "--limit-batches", "6")  # fmt: skip
    assert r.exit_code == 0, r
    config = json.loads((home / "runs" / "multi" / "config.json").read_text())
    assert config["classes"] == ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                 "neutrophil", "platelet", "rbc"]  # fmt: skip
    wbc = config["taxonomy"]["targets"]["bccd"][1]
    assert sorted(config["classes"][i] for i in wbc) == ["basophil", "eosinophil", "ig", "lymphocyte", "monocyte",
                                                          "neutrophil"]  # fmt: skip
    history = json.loads((home / "runs" / "multi" / "history.json").read_text())
    per_dataset = history["val_per_dataset"][0]
    assert set(per_dataset) == {"sample", "bccd"} and per_dataset["bccd"]["n"] == 1137
    assert history["val_f1"][0] == (per_dataset["sample"]["f1"] + per_dataset["bccd"]["f1"]) / 2
    assert "bccd/WBC" in history["val_f1_per_class"][0]

    report = json.loads(cli("eval", "multi", "--json").stdout)
    bccd = report["datasets"]["bccd"]["metrics"]
    assert bccd["classes"] == ["RBC", "WBC", "Platelets"] and len(bccd["confusion_matrix"]) == 3
    assert bccd["n"] == 945
    only = json.loads(cli("eval", "multi", "--datasets", "bccd", "--json").stdout)
    assert list(only["datasets"]) == ["bccd"]
