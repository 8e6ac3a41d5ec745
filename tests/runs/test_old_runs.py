"""A run folder written by v0.2.0 (tests/fixtures/v0.2.0, how it was made is in its README) still works: its
record and checkpoints load, and status, eval, infer, export, upgrade and train --resume take it."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import PBC_TEST_IMAGES

from cellmorphnet.runs.record import RunRecord

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "v0.2.0" / "runs" / "v0.2.0"


@pytest.fixture
def old_run(home) -> Path:
    run = home / "runs" / "v0.2.0"
    shutil.copytree(OLD, run)
    return run


def test_a_v020_record_loads_and_status_reads_the_run(cli, old_run):
    record = RunRecord.load(old_run)
    assert record.classes and record.inference is not None
    r = cli("status", "v0.2.0", "--json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["run"]["name"] == "v0.2.0"


@pytest.mark.slow
def test_a_v020_run_is_evaluated_used_exported_upgraded_and_resumed(cli, old_run, tmp_path):
    before = json.loads((old_run / "config.json").read_text())
    assert cli("fetch", "sample").exit_code == 0
    assert cli("prepare", "sample", "--size", "28").exit_code == 0
    r = cli("eval", "v0.2.0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["run"] == str(old_run), r
    out = tmp_path / "p.json"
    assert cli("infer", "v0.2.0", PBC_TEST_IMAGES / "monocyte", "--out", out).exit_code == 0
    assert len(json.loads(out.read_text())["predictions"]) == 30
    r = cli("export", "v0.2.0", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 0 and (tmp_path / "m.onnx").stat().st_size > 0, r
    assert cli("upgrade", "v0.2.0").exit_code == 0
    r = cli("train", "--resume", "v0.2.0", "--epochs", "2")
    assert r.exit_code == 0 and "finished after 2/2 epochs" in r.output, r
    after = json.loads((old_run / "config.json").read_text())
    assert after["classes"] == before["classes"]
