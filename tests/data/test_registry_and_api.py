"""The source registry (a new dataset is one new class), the data layer's import direction, and the public API."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import PBC_TEST_IMAGES, ROOT

from cellmorphnet.data import registry, store
from cellmorphnet.data.source import Built, DatasetInfo, Source, SourceState
from cellmorphnet.errors import ConfigError


def test_a_new_source_is_one_class_and_every_command_knows_it(cli, home):
    @registry.register
    class Toy(Source):
        info = DatasetInfo(name="toy", title="Toy cells", classes=("a", "b"), licence="CC0", homepage="",
                           citation="", default_size=16)  # fmt: skip

        def source_state(self, name, *, home, size):
            return SourceState("toy:1", verified=True, origin="test")

        def build(self, name, *, home, size, seed, progress=None):
            rng = np.random.default_rng(seed)
            labels = np.arange(20) % 2
            images = rng.integers(0, 255, (20, size, size, 3), dtype=np.uint8)
            parts = store.stratified_split(labels, seed)
            return Built({s: store.Split(images[i], labels[i]) for s, i in parts.items()}, ["a", "b"],
                         {"source": "toy"}, "seeded")  # fmt: skip

    try:
        r = cli("prepare", "toy", "--json")
        assert r.exit_code == 0, r
        assert json.loads(r.stdout)[0]["size"] == 16
        st = json.loads(cli("status", "--json").stdout)
        toy = next(d for d in st["cache"]["datasets"] if d["name"] == "toy")
        assert toy["title"] == "Toy cells" and "16" in toy["prepared"]
        r = cli("fetch", "toy")
        assert "needs no fetch" in r.output
    finally:
        registry._SOURCES.pop("toy")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_imports_flow_one_way():
    pkg = ROOT / "cellmorphnet"
    # sources use the shared base module, never prepare, fetch or cache (no import cycle)
    for path in (pkg / "data" / "sources").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("cellmorphnet.data.prepare", "cellmorphnet.data.fetch",
                                                          "cellmorphnet.data.cache"))}  # fmt: skip
        assert not bad, (path.name, bad)
    # the training loop never imports evaluation or inference (only fine-tuning frames a lab's cells as infer does,
    # and the calibration reads the calibration error from the metrics); nothing in the library imports the CLI
    for path in (pkg / "training").glob("*.py"):
        banned = ("cellmorphnet.inference",) if path.name == "calibration.py" else (
            "cellmorphnet.evaluation", "cellmorphnet.inference")  # fmt: skip
        if path.name not in ("finetune.py", "lab_cells.py", "lab_conformal.py"):  # fine-tuning, its cells, its rule
            assert not {m for m in _imports(path) if m.startswith(banned)}, path
    for path in pkg.rglob("*.py"):
        if "cli" not in path.parts and path.name != "__main__.py":
            assert not {m for m in _imports(path) if m.startswith("cellmorphnet.cli")}, path
        # HTTP stays in the web app: the library (service included) never imports it or the web frameworks
        http = ("app", "connections", "desk_routes", "model_routes", "review_routes", "security", "uploads")
        if not (path.parent.name == "serve" and path.stem in http) and "cli" not in path.parts:
            web = ("cellmorphnet.serve.app", "fastapi", "starlette", "uvicorn")
            assert not {m for m in _imports(path) if m.startswith(web)}, path


def test_public_api_trains_predicts_and_evaluates(home):
    import cellmorphnet as cmn

    summary = cmn.train(["sample"], name="api", home=home, model="test_efficientnet", pretrained=False, epochs=1,
                        batch_size=16, accum_steps=1, limit_batches=2, data_size=28)  # fmt: skip
    assert summary["state"] == "finished"
    run = cmn.load_run("api", home=home, device="cpu")
    assert run.classes[0] == "basophil" and run.record.image_size == 28
    folder = PBC_TEST_IMAGES / "monocyte"
    preds = cmn.predict(run, [folder, folder / "missing.jpg"])
    assert len(preds) == 31 and preds[-1].error == "does not exist"
    assert all(p.predicted in run.classes for p in preds[:-1])
    report = cmn.evaluate("api", home=home, device="cpu")
    assert report["datasets"]["sample"]["metrics"]["n"] == 192 and report["data_changes_accepted"] == []
    resumed = cmn.train(resume="api", home=home, epochs=2)  # as train --resume: one more epoch, its own settings
    assert resumed["state"] == "finished" and resumed["epochs_done"] == 2
    with pytest.raises(ConfigError, match="keeps its own settings"):
        cmn.train(resume="api", home=home, lr=0.1)


def test_the_public_api_is_listed_for_tab_completion_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, cellmorphnet as c; names = dir(c); "
            "print(all(n in names for n in ('train', 'load_run', 'predict', 'evaluate', '__version__')), "
            "sorted(c.__all__) == sorted(['train', 'load_run', 'predict', 'evaluate', '__version__']), "
            "'torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"], out
