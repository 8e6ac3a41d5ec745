"""Every command that prints a result has ``--json``, and what it prints parses: each one is run here, in one home,
on the tiny run, and a command added with ``--json`` but left out of this test fails it."""

import io
import json
import shutil

import pytest
import typer
from conftest import PBC_TEST_IMAGES, TINY_RUN
from PIL import Image

from cellmorphnet.cli.app import app
from cellmorphnet.reviews.store import ReviewStore

TYPES = ("neutrophil", "lymphocyte", "eosinophil", "monocyte")


def commands_with_json() -> set[tuple[str, ...]]:
    """The command paths (``("lab", "create")``) whose options include ``--json``, read from the app itself."""
    found: set[tuple[str, ...]] = set()

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        if any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.add(path)

    walk(typer.main.get_command(app), ())
    return found


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 160)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_every_command_with_json_prints_json_that_parses(cli, trained, home, tmp_path):
    parsed: dict[tuple[str, ...], object] = {}

    def run(command: tuple[str, ...], *args) -> dict:
        r = cli(*command, *args, "--json")
        assert r.exit_code == 0, (command, r)
        parsed[command] = json.loads(r.stdout)  # nothing but JSON on stdout
        return parsed[command]

    cells, labelled = tmp_path / "cells", tmp_path / "labelled"
    cells.mkdir()
    for c in TYPES:
        files = sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))
        (labelled / c).mkdir(parents=True)
        for p in files[:5]:
            shutil.copy(p, labelled / c / p.name)
        for p in files[5:9]:  # a lab profile wants at least 16 cells
            shutil.copy(p, cells / p.name)

    run(("fetch",), "sample")
    run(("prepare",), "sample")
    run(("train",), "--datasets", "sample", "--name", "t2", *TINY_RUN)
    assert run(("status",), "t")["run"]["name"] == "t"
    run(("eval",), "t")
    assert len(run(("infer",), "t", cells)["predictions"]) == 4 * len(TYPES)
    run(("export",), "t", "--format", "onnx", "--out", tmp_path / "t.onnx")
    run(("upgrade",), "t")

    run(("lab", "create"), "clinic", cells, "--run", "t")
    run(("lab", "list"))
    run(("lab", "show"), "clinic")
    run(("lab", "export"), "clinic", tmp_path / "clinic.json")
    run(("lab", "import"), tmp_path / "clinic.json", "--name", "clinic-copy")
    run(("lab", "calibrate"), "clinic", "--from", labelled, "--alpha", "0.2", "--run", "t")
    assert cli("lab", "promote", "t2").exit_code == 0
    run(("lab", "promote"), "t")
    assert run(("lab", "served"))
    run(("lab", "rollback"))

    token = run(("users", "add"), "ann", "--role", "admin")
    assert token
    run(("users", "token"), "ann")
    run(("users", "list"))
    run(("users", "remove"), "ann")

    db = tmp_path / "reviews.sqlite"
    with ReviewStore(db, ["neutrophil", "lymphocyte"]) as store:
        for n, predicted in enumerate(("neutrophil", "lymphocyte")):
            cell = store.add_cell("case-1", source=f"c{n}.png", image_sha256=f"s{n}", cell_index=None, box=None,
                                  edge=False, crop=_png(), crop_type="image/png", run="t", checkpoint_sha256="abc",
                                  predicted=predicted, confidence=0.9, probabilities={predicted: 0.9},
                                  verdict="classified")  # fmt: skip
            store.review(cell, "neutrophil", "ann")
    run(("reviews", "list"), db)
    run(("reviews", "export"), db, "--out", tmp_path / "export")
    run(("reviews", "stats"), db)
    run(("reviews", "report"), "case-1", "--db", db, "--out", tmp_path / "case-1.html")

    assert set(parsed) == commands_with_json(), "a command with --json that this test does not run (or the reverse)"


def test_the_commands_with_json_are_the_ones_that_print_a_result():
    """serve runs until stopped and prints no result; every other command has --json."""
    found = commands_with_json()
    assert ("serve",) not in found and {("infer",), ("eval",), ("lab", "create"), ("users", "list")} <= found
    assert len(found) == 25, sorted(found)
