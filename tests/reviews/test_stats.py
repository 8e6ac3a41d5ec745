"""Issue 37, the lab's own accuracy: ``reviews stats`` (confirmed shares, Cohen's kappa, the confusion, the error
rate of answers given without a person, two reviewers' agreement), and a schema-1 database (before verdicts) read
as it is and migrated with its reviews kept."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from PIL import Image

from cellmorphnet.reviews import store as store_module
from cellmorphnet.reviews.stats import cohen_kappa, review_stats, wilson
from cellmorphnet.reviews.store import ReviewStore

CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 150)).save(buf, format="PNG")
    return buf.getvalue()


def _add(store, case, n, predicted, verdict):
    return store.add_cell(case, source=f"{case}-{n}.png", image_sha256=f"{case}-{n}", cell_index=None, box=None,
                          edge=False, crop=_png(), crop_type="image/png", run="r", checkpoint_sha256="abc",
                          predicted=predicted, confidence=0.9, probabilities={predicted: 0.9}, verdict=verdict,
                          review_reason=None if verdict == "classified" else "uncertain")  # fmt: skip


def test_kappa_and_wilson_against_hand_worked_values():
    # 10 items: 7 agree; raters say A 5/5 and 6/4: p_o 0.7, p_e 0.5*0.6 + 0.5*0.4 = 0.5, kappa 0.4
    a = list("AAAAABBBBB")
    b = list("AAAABBBBAA")
    assert sum(x == y for x, y in zip(a, b, strict=True)) == 7
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0 and cohen_kappa([], []) is None
    lo, hi = wilson(7, 10)
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)


def test_reviews_stats_of_a_lab(tmp_path, cli):
    db = tmp_path / "r.sqlite"
    store = ReviewStore(db, CLASSES)
    ids = [_add(store, "slide-1", i, "neutrophil", "classified") for i in range(8)]
    ids += [_add(store, "slide-2", i, "lymphocyte", "review") for i in range(4)]
    for i in ids[:7]:
        store.review(i, "neutrophil", reviewer="ann")  # 7 classified confirmed
    store.review(ids[7], "eosinophil", reviewer="ann")  # one classified changed
    for i in ids[8:10]:
        store.review(i, "lymphocyte", reviewer="ann")
    store.review(ids[10], "neutrophil", reviewer="ann")  # a review cell changed; ids[11] not reviewed
    for i in ids[:4]:
        store.review(i, "neutrophil", reviewer="bob")  # a second reviewer on four cells: agrees on all
    s = review_stats(store)
    assert s["cells"] == 12 and s["reviewed"] == 11
    assert s["confirmed"]["confirmed"] == 9 and s["confirmed"]["share"] == pytest.approx(9 / 11, abs=1e-4)
    assert s["per_type"]["neutrophil"]["reviewed"] == 8 and s["per_case"]["slide-2"]["reviewed"] == 3
    assert s["by_verdict"]["classified"] == {"reviewed": 8, "changed": 1, "error_rate": 0.125,
                                             "ci95": [round(x, 4) for x in wilson(1, 8)]}  # fmt: skip
    assert s["by_verdict"]["review"]["changed"] == 1
    assert s["confusion"]["neutrophil"] == {"neutrophil": 7, "eosinophil": 1}
    assert s["reviewers"]["pair"] == {"reviewers": ["ann", "bob"], "cells": 4, "agreement": 1.0, "kappa": 1.0}
    assert review_stats(store, "slide-2")["reviewed"] == 3
    store.close()
    r = cli("reviews", "stats", db, "--json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["by_verdict"]["classified"]["error_rate"] == 0.125
    r = cli("reviews", "stats", db)
    said = " ".join(r.stderr.split())
    assert "11 of 12 cells reviewed" in said and "1 of 8 changed (12.5%" in said and "ann and bob" in said


def test_a_database_from_before_verdicts_is_read_as_it_is_and_migrated_keeping_its_reviews(tmp_path, monkeypatch):
    db = tmp_path / "old.sqlite"
    monkeypatch.setattr(store_module, "SCHEMA", 1)  # as version 0.2 wrote it
    ReviewStore(db, CLASSES).close()
    monkeypatch.undo()
    con = sqlite3.connect(db)  # a cell and its review as version 0.2 stored them (no verdict columns)
    con.execute("INSERT INTO cases (name, created) VALUES ('s', '2026-12-01')")
    con.execute("INSERT INTO cells (case_id, source, image_sha256, crop, crop_type, run, checkpoint_sha256, "
                "predicted, confidence, probabilities, created) VALUES (1, 'a.png', 'x', ?, 'image/png', 'r', 'abc', "
                "'neutrophil', 0.9, '{}', '2026-12-01')", (_png(),))  # fmt: skip
    con.execute("INSERT INTO reviews (cell_id, class, reviewer, created) VALUES (1, 'lymphocyte', 'ann', '2026-12-02')")
    con.commit()
    con.close()
    cell = 1
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1
    read = ReviewStore(db, [], read_only=True)  # read without being changed
    assert read.cells()[0].verdict is None and read.cells()[0].reviewed == "lymphocyte"
    assert review_stats(read)["by_verdict"]["unknown"]["changed"] == 1
    assert read.field("x") is None  # no fields table before schema 3: nothing kept, nothing raised
    read.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1
    new = ReviewStore(db, CLASSES)  # migrated on open for writing
    assert new.schema == store_module.SCHEMA and new.cells()[0].reviewed == "lymphocyte"
    assert new.history(cell)[0]["reviewer"] == "ann"
    new.close()


def test_the_stats_route_answers_what_the_command_prints(service, tmp_path):
    from fastapi.testclient import TestClient

    from cellmorphnet.serve.app import create_app

    store = ReviewStore(tmp_path / "r.sqlite", CLASSES)
    _add(store, "s", 1, "neutrophil", "classified")
    store.review(1, "neutrophil", reviewer="ann")
    client = TestClient(create_app(service, reviews=store))
    body = client.get("/v1/reviews/stats").json()
    assert body == review_stats(store) and body["by_verdict"]["classified"]["changed"] == 0
    assert client.get("/v1/reviews/stats", params={"case": "x" * 300}).status_code == 422
    store.close()


def test_a_case_report_is_one_html_file_with_the_differential_and_its_version(tmp_path, cli):
    db = tmp_path / "r.sqlite"
    store = ReviewStore(db, CLASSES)
    ids = [_add(store, "slide <1>", i, "neutrophil", "classified") for i in range(3)]
    ids.append(_add(store, "slide <1>", 9, "lymphocyte", "review"))
    store.review(ids[0], "eosinophil", reviewer="ann")
    store.close()
    out = tmp_path / "case.html"
    r = cli("reviews", "report", "slide <1>", "--db", db, "--out", out, "--json")
    assert r.exit_code == 0, r
    summary = json.loads(r.stdout)
    assert summary["white_cells"] == 3 and summary["awaiting_review"] == 1  # the review cell waits, not counted
    assert {t["class"]: t["count"] for t in summary["types"]}["eosinophil"] == 1
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page  # self-contained, no code
    assert "slide &lt;1&gt;" in page and "Research use only" in page and "1 decisions" in page
    assert "95% interval" in page and "per 100 white cells" not in page.split("nucleated red cells")[0]
    store = ReviewStore(db, CLASSES)
    store.review(ids[3], "lymphocyte", reviewer="bob")
    store.close()
    assert cli("reviews", "report", "slide <1>", "--db", db, "--out", tmp_path / "again.html").exit_code == 0
    again = (tmp_path / "again.html").read_text()
    assert "2 decisions" in again  # the reviews changed: the report says so
    from conftest import assert_one_line_error

    assert_one_line_error(cli("reviews", "report", "nobody", "--db", db, "--out", tmp_path / "x.html"), "no case")
    assert_one_line_error(cli("reviews", "report", "slide <1>", "--db", db, "--out", tmp_path / "x.pdf"), ".html")


def test_the_reports_figures_are_infers_differential_and_the_stats_on_the_same_cells(service, tmp_path):
    """Real JPEGs added to a case through the API: before any review the report's differential is infer's on the
    same files (classified cells only, what awaits review apart); after three reviews its figures are the stats'."""
    from conftest import PBC_TEST_IMAGES
    from fastapi.testclient import TestClient

    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.inference.pipeline import infer_files
    from cellmorphnet.reviews.report import case_summary
    from cellmorphnet.serve.app import create_app

    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[::10]
    store = ReviewStore(tmp_path / "r.sqlite", service.classes)
    client = TestClient(create_app(service, reviews=store))
    body = client.post("/v1/cases/slide%20R/cells", files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                                                            for p in files]).json()  # fmt: skip
    assert len(body["added"]) == len(files)
    want = infer_files(service.rm, files, inference_options(service.rm.record)).summary["differential"]
    got = case_summary(store, "slide R")
    assert got["white_cells"] == want["white_cells"] and got["awaiting_review"] == want["awaiting_review"]
    assert [(t["class"], t["count"], t["percent"], t["ci95"]) for t in got["types"]] == [
        (t["class"], t["count"], t["percent"], t["ci95"]) for t in want["types"]]  # fmt: skip
    assert got["nucleated_red_cells"] == want["nucleated_red_cells"]
    cells = body["cells"]
    for cell, cls in zip(cells[:3], ("neutrophil", cells[1]["predicted"], "lymphocyte"), strict=True):
        client.post(f"/v1/cells/{cell['id']}/review", json={"class": cls, "reviewer": "ann"})
    stats = review_stats(store, "slide R")
    summary = case_summary(store, "slide R")
    assert summary["reviewed"] == stats["reviewed"] == 3
    assert summary["changed_by_reviewers"] == stats["reviewed"] - stats["confirmed"]["confirmed"]
    store.close()
