"""The review database (SQLite): reviews and their history, concurrent reviewers, a killed writer, the schema,
the export with hostile upload names; and the review routes of the REST API on the shipped model."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import PBC_TEST_IMAGES, assert_one_line_error
from PIL import Image

from cellmorphnet.errors import ConfigError, InvalidData, OutputError
from cellmorphnet.reviews.export import export, safe_stem
from cellmorphnet.reviews.store import ENOUGH_PER_TYPE, SCHEMA, ReviewStore

CLASSES = ["eosinophil", "lymphocyte", "neutrophil", "smudge"]


def _png(colour=(200, 100, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _add(store: ReviewStore, case: str, source: str, index: int | None = None, predicted: str = "neutrophil") -> int:
    return store.add_cell(case, source=source, image_sha256=f"sha-{source}", cell_index=index,
                          box=(1, 2, 30, 40) if index else None, edge=False, crop=_png(), crop_type="image/png",
                          run="bloodmnist", checkpoint_sha256="abc", predicted=predicted, confidence=0.9,
                          probabilities={"neutrophil": 0.9, "lymphocyte": 0.1})  # fmt: skip


def test_reviews_undo_and_history(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", CLASSES)
    a = _add(store, "slide 1", "a.jpg")
    assert _add(store, "slide 1", "a.jpg") == a  # the same cell again is kept once
    assert store.cell(a).reviewed is None
    assert store.review(a, "neutrophil", "Ana").reviewed == "neutrophil"
    assert store.review(a, "lymphocyte", "Ben").reviewed == "lymphocyte"
    assert store.undo(a).reviewed == "neutrophil"  # back to Ana's
    assert store.undo(a).reviewed is None
    with pytest.raises(InvalidData, match="no review to undo"):
        store.undo(a)
    assert [h["action"] for h in store.history(a)] == ["review", "review", "undo", "undo"]
    with pytest.raises(InvalidData, match="not a class here"):
        store.review(a, "platelet")
    with pytest.raises(InvalidData, match="no cell"):
        store.review(999, "neutrophil")
    assert store.review(a, "smudge").reviewed == "smudge"  # a lab's own class
    assert store.cases() == [{"name": "slide 1", "created": store.cases()[0]["created"], "cells": 1, "reviewed": 1}]
    store.close()
    again = ReviewStore(tmp_path / "r.sqlite", CLASSES)  # a restart keeps everything
    assert again.cell(a).reviewed == "smudge" and len(again.history(a)) == 5
    assert again.schema == SCHEMA
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_reviewers_at_once_lose_nothing(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", CLASSES)
    cells = [_add(store, "c", f"{i}.jpg") for i in range(20)]
    other = ReviewStore(tmp_path / "r.sqlite", CLASSES)  # a second connection, as a second server process would

    def reviewer(s: ReviewStore, name: str, cls: str) -> None:
        for c in cells:
            s.review(c, cls, name)

    threads = [threading.Thread(target=reviewer, args=(store, "Ana", "neutrophil")),
               threading.Thread(target=reviewer, args=(other, "Ben", "lymphocyte"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in cells:
        assert sorted(h["reviewer"] for h in store.history(c)) == ["Ana", "Ben"]


KILLED_WRITER = """
import sys, io
from cellmorphnet.reviews.store import ReviewStore
store = ReviewStore(sys.argv[1], ["neutrophil", "lymphocyte"])
ids = [store.add_cell("c", source=f"{i}.jpg", image_sha256=str(i), cell_index=None, box=None, edge=False,
                      crop=b"x" * 100_000, crop_type="image/png", run="r", checkpoint_sha256="s",
                      predicted="neutrophil", confidence=0.5, probabilities={}) for i in range(5)]
print("ready", flush=True)
i = 0
while True:
    store.review(ids[i % 5], ["neutrophil", "lymphocyte"][i % 2], "w")
    i += 1
"""


def test_the_database_survives_a_killed_server(tmp_path):
    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)  # mid-write, no chance to close anything
    proc.wait()
    store = ReviewStore(db, ["neutrophil", "lymphocyte"])
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = store._db.execute("SELECT COUNT(*) FROM reviews").fetchone()[0]
    assert rows > 10  # every committed review is there, and nothing half-written
    assert len(store.cells()) == 5 and all(c.reviewed in ("neutrophil", "lymphocyte") for c in store.cells())


def test_a_newer_database_is_refused_and_an_older_one_migrated(tmp_path):
    db = tmp_path / "r.sqlite"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA + 1}")
    con.close()
    with pytest.raises(ConfigError, match="newer cellmorphnet"):
        ReviewStore(db, CLASSES)
    fresh = tmp_path / "empty.sqlite"
    sqlite3.connect(fresh).close()  # version 0: an empty file is migrated to the current schema
    assert ReviewStore(fresh, CLASSES).schema == SCHEMA


def test_a_file_that_is_no_review_database_is_refused_and_left_as_it_was(cli, tmp_path):
    (tmp_path / "cells.npz").write_bytes(b"PK\x03\x04 not sqlite")
    with pytest.raises(InvalidData, match="Cannot use .* as a review database: file is not a database"):
        ReviewStore(tmp_path / "cells.npz", CLASSES)
    assert (tmp_path / "cells.npz").read_bytes() == b"PK\x03\x04 not sqlite"
    other = tmp_path / "lims.db"  # another program's SQLite: not a place to add our tables
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE samples (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(InvalidData, match="another program's SQLite database"):
        ReviewStore(other, CLASSES)
    con = sqlite3.connect(other)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["samples"]
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="a-file is not a folder"):
        ReviewStore(tmp_path / "a-file" / "r.sqlite", CLASSES)
    assert_one_line_error(cli("reviews", "list", tmp_path / "cells.npz"), "file is not a database")


def test_export_writes_safe_names_and_refuses_to_overwrite(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", CLASSES)
    hostile = ["../../etc/passwd.jpg", "=HYPERLINK(1).png", "-rf.jpg", ".hidden.png", "a/b\\c.tif", "con:0.jpg"]
    ids = [_add(store, "c", name, index=i + 1) for i, name in enumerate(hostile)]
    _add(store, "c", "unreviewed.jpg")
    for i, cell in enumerate(ids):
        store.review(cell, CLASSES[i % 3], "Ana")
    out = tmp_path / "export"
    result = export(store, out)
    assert result["cells"] == len(hostile)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    for p in files:
        if p.name != "cells.csv":
            assert not p.name.startswith((".", "-")) and p.parent.name in CLASSES, p
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == len(hostile) and all((out / r["file"]).is_file() for r in rows)
    assert rows[1]["source"] == "'=HYPERLINK(1).png"  # as text, never a formula
    assert {r["reviewed"] for r in rows} == set(CLASSES[:3]) and rows[0]["reviewer"] == "Ana"
    with pytest.raises(InvalidData, match="already exists"):
        export(store, out)
    assert safe_stem("../../x y.jpg") == "x_y" and safe_stem("...") == "cell"


def test_reviews_export_command(cli, tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", CLASSES)
    store.review(_add(store, "c", "a.jpg"), "eosinophil")
    store.close()
    r = cli("reviews", "export", tmp_path / "r.sqlite", "--out", tmp_path / "ds")
    assert r.exit_code == 0 and "Exported 1 reviewed cells" in r.stderr, r.output
    assert (tmp_path / "ds" / "eosinophil").is_dir()
    assert_one_line_error(cli("reviews", "export", tmp_path / "r.sqlite", "--out", tmp_path / "ds"), "already exists")
    (tmp_path / "a-file").write_text("")
    assert_one_line_error(cli("reviews", "export", tmp_path / "r.sqlite", "--out", tmp_path / "a-file" / "ds"),
                          "a-file is not a folder")  # fmt: skip
    assert cli("reviews", "list", tmp_path / "r.sqlite").exit_code == 0


# --- the REST API, on the shipped model (the ``service`` fixture: conftest) --------------------------------

def test_review_routes(service, tmp_path):
    from fastapi.testclient import TestClient

    from cellmorphnet.serve.app import create_app

    store = ReviewStore(tmp_path / "r.sqlite", [*service.classes, "smudge"])
    client = TestClient(create_app(service, reviews=store))
    jpgs = [sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))[0] for c in ("neutrophil", "lymphocyte", "eosinophil")]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in jpgs]
    files.append(("files", ("broken.jpg", b"not an image", "image/jpeg")))
    body = client.post("/v1/cases/slide%201/cells", files=files).json()
    assert body["case"] == "slide 1" and len(body["added"]) == 3 and body["skipped"][0]["file"] == "broken.jpg"
    cells = body["cells"]
    assert [c["source"] for c in cells] == [p.name for p in jpgs]
    assert abs(sum(cells[0]["probabilities"].values()) - 1) < 1e-3 and cells[0]["checkpoint_sha256"]
    crop = client.get(f"/v1/cells/{cells[0]['id']}/crop")
    assert crop.status_code == 200 and crop.content == jpgs[0].read_bytes()
    r = client.post(f"/v1/cells/{cells[0]['id']}/review", json={"class": "smudge", "reviewer": "Ana"})
    assert r.status_code == 200 and r.json()["reviewed"] == "smudge"
    assert client.post(f"/v1/cells/{cells[0]['id']}/review", json={"class": "blast"}).status_code == 422
    assert client.post("/v1/cells/9999/review", json={"class": "smudge"}).status_code == 404
    assert client.post(f"/v1/cells/{cells[1]['id']}/undo").status_code == 409  # nothing to undo
    listed = client.get("/v1/cases").json()
    assert listed["cases"][0]["reviewed"] == 1 and listed["enough_per_type"] == ENOUGH_PER_TYPE  # the page's green
    z = client.get("/v1/cases/slide%201/export")
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert "cells.csv" in names and any(n.startswith("smudge/") for n in names)
    assert client.get("/v1/cases/nope").status_code == 404
    # a foreign page cannot review for a visitor (the Origin check covers every POST)
    assert client.post(f"/v1/cells/{cells[1]['id']}/review", json={"class": "smudge"},
                       headers={"Origin": "https://evil.example"}).status_code == 403  # fmt: skip
    assert Path(store.path).is_file()
    assert client.get(f"/v1/cells/{cells[0]['id']}/field").status_code == 404  # a single-cell image has no field
    from conftest import BCCD_ZIP

    with zipfile.ZipFile(BCCD_ZIP) as z:
        name = next(m for m in z.namelist() if m.endswith("JPEGImages/BloodImage_00176.jpg"))
        field = z.read(name)
    found = client.post("/v1/cases/slide%202/cells", files=[("files", ("00176.jpg", field, "image/jpeg"))]).json()
    boxed = found["cells"][0]
    assert boxed["box"] and store.field(boxed["image_sha256"]) == (field, "image/jpeg")  # kept once, as sent
    view = client.get(f"/v1/cells/{boxed['id']}/field")
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(view.content)) as img, Image.open(io.BytesIO(field)) as original:
        assert img.size == original.size  # 640x480: drawn on, not shrunk
        x0, y0, x1, _ = boxed["box"]
        assert img.convert("RGB").getpixel((x0, (y0 + boxed["box"][3]) // 2)) == (220, 0, 90)  # the box's edge
