"""Every input bounded in time and memory, and every file we did not write treated as data (issue 34).

Each test names the request or file that showed the problem, so it can be rerun by hand; each failed before the fix.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import time
import zipfile

import numpy as np
import pytest
from conftest import BCCD_ZIP, PBC_TEST_IMAGES, assert_one_line_error
from fastapi.testclient import TestClient
from PIL import Image

from cellmorphnet.inference import find_cells
from cellmorphnet.inference.images import Upload
from cellmorphnet.reviews.store import ReviewStore, check_name
from cellmorphnet.serve.app import create_app
from cellmorphnet.serve.service import Limits
from cellmorphnet.serve.uploads import BodyLimit
from cellmorphnet.vision import fields

JPEG = sorted((PBC_TEST_IMAGES / "neutrophil").glob("*.jpg"))[0]


def _png(img: Image.Image | np.ndarray) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(buf, format="PNG")
    return buf.getvalue()


def _noise(w: int = 640, h: int = 480) -> np.ndarray:
    """`infer bloodmnist DIR` on this image ran for 25 minutes (the photo of noise of issue 34, point 1)."""
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def _bccd(n: str = "00000") -> bytes:
    with zipfile.ZipFile(BCCD_ZIP) as z:
        return z.read(next(m for m in z.namelist() if m.endswith(f"JPEGImages/BloodImage_{n}.jpg")))


# --- 1 and 5: what a field may cost ---------------------------------------------------------------------------------
def test_a_photo_of_noise_is_no_field_and_costs_seconds():
    start = time.monotonic()
    items, info, refused = find_cells([Upload("noise.png", _png(_noise()))], "auto", workers=1)
    assert time.monotonic() - start < 5  # was: still running after 25 minutes
    assert not refused and info[items[0]].kind == "crop"  # no red cells to measure: taken as one image
    assert fields.rbc_diameter(Image.fromarray(_noise())) is None  # its "red cells" would be 4 px across


def test_the_merge_of_many_pieces_is_quadratic_not_cubic():
    rng = np.random.default_rng(1)
    pieces = [[float(x), float(y), x + 3.0, y + 3.0, 1.0] for x, y in rng.integers(0, 3000, (800, 2))]
    start = time.monotonic()
    fields._merge(pieces, 16, 64)
    assert time.monotonic() - start < 2  # the old triple loop took minutes on 800 pieces


def test_a_field_with_more_cells_than_the_budget_is_refused_with_the_reason(tmp_path, cli):
    folder = tmp_path / "fields"
    folder.mkdir()
    for n in ("00010", "00000"):  # two white cells, then one, each at its own red cells' scale
        (folder / f"{n}.jpg").write_bytes(_bccd(n))
    img = Image.open(folder / "00010.jpg").convert("RGB")
    with pytest.raises(fields.TooManyCells, match="the limit is 1"):
        fields.find_white_cells(img, fields.rbc_diameter(img), max_cells=1)
    out = tmp_path / "p.json"
    r = cli("infer", "bloodmnist", folder, "--max-cells", "1", "--out", out)
    assert r.exit_code == 3, r  # the one refused, listed with the reason; the other classified
    rows = {p["path"].split("/")[-1]: p for p in json.loads(out.read_text())["predictions"]}
    assert "--max-cells" in rows["00010.jpg"]["error"] and rows["00000.jpg"]["status"] == "ok"
    assert_one_line_error(cli("infer", "bloodmnist", folder, "--max-cells", "0"), "--max-cells")


def test_a_large_field_is_decoded_twice_not_once_per_cell(monkeypatch):
    """A 3500x3500 field with 41 cells was decoded 125 times (once per found cell per reading)."""
    from cellmorphnet.inference import images
    from cellmorphnet.vision import imaging

    tile = Image.open(io.BytesIO(_bccd("00000"))).convert("RGB")
    big = Image.new("RGB", (2560, 1920))
    for i in range(4):
        for j in range(4):
            big.paste(tile, (640 * i, 480 * j))  # 16 fields' worth of cells, 4.9 megapixels
    upload = Upload("big.png", _png(big))
    decoded = []
    real = imaging.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda *a, **k: decoded.append(1) or real(*a, **k))
    items, info, _ = find_cells([upload], "auto", workers=1)
    assert info[upload].kind == "field" and info[upload].cells >= 10
    assert len(decoded) == 2  # the scale, then the cells: cut once, kept
    for cell in items:
        cell.image  # noqa: B018 - every reading of every cell: no further decoding
    assert len(decoded) == 2


def test_crops_at_the_border_copy_only_the_crop():
    from cellmorphnet.vision.cellfinder import padded_crop

    img = Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3))
    out = np.asarray(padded_crop(img, (-10, -5, 30, 35)))
    ref = np.pad(np.asarray(img), ((40, 40), (40, 40), (0, 0)), mode="edge")[35:75, 30:70]
    assert np.array_equal(out, ref)  # the border repeated outwards, as before


# --- 6: nothing counted that is not a cell ---------------------------------------------------------------------------
def test_blank_tiny_and_empty_images_are_no_cells_and_never_counted(client):
    files = [("files", (name, _png(img), "image/png")) for name, img in (
        ("blank.png", Image.new("RGB", (300, 300), "white")), ("one.png", Image.new("RGB", (1, 1))),
        ("eight.png", Image.new("RGB", (8, 8))), ("canvas.png", Image.new("RGB", (1200, 900), (230, 225, 230))))]
    files.append(("files", (JPEG.name, JPEG.read_bytes(), "image/jpeg")))
    body = client.post("/v1/predict", files=files).json()
    found = {r["file"]: r["cell_found"] for r in body["results"]}
    assert found == {"blank.png": False, "one.png": False, "eight.png": False, "canvas.png": False, JPEG.name: True}
    d = body["differential"]
    assert d["no_cell_found"] == 4 and d["white_cells"] == 1 and d["nucleated_red_cells"] == 0


# --- 2 and 7: every query, path and body bounded; no 500 --------------------------------------------------------------
@pytest.mark.parametrize("query", ["rbc=4000", "rbc=1e-9", "rbc=inf", "rbc=nan", "rbc=1e12", "x1=1000000",
                                   "x0=1000000", "y1=481"])
def test_gradcam_boxes_and_scales_are_checked_before_any_pixel_work(client, query):
    """`POST /v1/gradcam?x0=..&rbc=4000` took the server from 0.93 to 4.88 GB; the others answered 500."""
    box = {"x0": "10", "y0": "10", "x1": "200", "y1": "200", "rbc": "94"}
    key, value = query.split("=")
    box[key] = value
    url = "/v1/gradcam?" + "&".join(f"{k}={v}" for k, v in box.items())
    start = time.monotonic()
    r = client.post(url, files=[("file", ("f.jpg", _bccd(), "image/jpeg"))])
    assert r.status_code == (400 if key == "x0" else 422), r.text  # (x0 past x1: not a box at all)
    assert time.monotonic() - start < 3


def test_a_reviewer_name_with_a_lone_surrogate_and_a_huge_cell_id_are_422(service, tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", service.classes)
    c = TestClient(create_app(service, reviews=store))
    cell = c.post("/v1/cases/a/cells", files=[("files", (JPEG.name, JPEG.read_bytes(), "image/jpeg"))]).json()
    cid = cell["cells"][0]["id"]
    body = '{"class": "neutrophil", "reviewer": "a\\ud800b"}'
    r = c.post(f"/v1/cells/{cid}/review", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    for path in (f"/v1/cells/{2**63}/review", f"/v1/cells/{2**63}/history", "/v1/cells/0/crop"):
        assert c.request("POST" if "review" in path else "GET", path, json={"class": "neutrophil"}).status_code == 422
    assert c.get(f"/v1/cells/{2**63 - 1}/history").status_code == 404


@pytest.mark.parametrize("name", ["a\x7fb", "a\x85b", "abc\u202edcba", "a\u200fb", "a\ud800b"])
def test_names_are_printable_text(name):
    from cellmorphnet.errors import InvalidData

    with pytest.raises(InvalidData, match="printable"):
        check_name(name, "reviewer name", required=False)
    assert check_name("Ana María Ødegård", "reviewer name", required=False) == "Ana María Ødegård"


def test_a_case_name_with_a_slash_is_refused_with_a_message_not_a_404(service, tmp_path):
    c = TestClient(create_app(service, reviews=ReviewStore(tmp_path / "r.sqlite", service.classes)))
    r = c.post("/v1/cases/2026%2F12%2F06/cells", files=[("files", (JPEG.name, JPEG.read_bytes(), "image/jpeg"))])
    assert r.status_code == 422 and "cannot hold '/'" in r.json()["detail"]
    assert c.get("/v1/cases/2026%2F12%2F06").status_code == 404


def test_json_bodies_have_a_size_limit(service, tmp_path):
    """A 300 MB body to /v1/cells/1/review raised peak memory by 0.9 GB."""
    c = TestClient(create_app(service, reviews=ReviewStore(tmp_path / "r.sqlite", service.classes)))
    big = b'{"class": "neutrophil", "reviewer": "' + b"x" * 200_000 + b'"}'
    r = c.post("/v1/cells/1/review", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "65,536 bytes" in r.json()["detail"]
    chunks = (b"x" * 10_000 for _ in range(20))  # no Content-Length: counted as it arrives
    r = c.post("/v1/cells/1/review", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_slow_json_body_is_cut_off():
    """A slow JSON body stayed open with no deadline (99 of 150 still open after 45 s)."""
    reached = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        reached.append(True)

    sent = []

    async def run():
        async def receive():
            await asyncio.sleep(0.2)  # a byte now and then: 5 B/s
            return {"type": "http.request", "body": b"x", "more_body": True}

        async def send(message):
            sent.append(message)

        limits = Limits(body_timeout_s=0.5, min_upload_rate=1000)
        scope = {"type": "http", "method": "POST", "path": "/v1/cells/1/review",
                 "headers": [(b"content-type", b"application/json")]}
        await asyncio.wait_for(BodyLimit(app, limits)(scope, receive, send), 5)

    asyncio.run(run())
    assert not reached and sent[0]["status"] == 408


def test_readyz_says_saturated_while_every_decoder_is_busy(service):
    c = TestClient(create_app(service))
    assert c.get("/readyz").json() == {"status": "ready"}
    service._in_flight += service.limits.max_concurrent_sets  # as while that many large requests decode
    try:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "saturated"}
        assert c.get("/healthz").status_code == 200  # the process is alive all the same
    finally:
        service._in_flight -= service.limits.max_concurrent_sets


def test_a_request_past_its_time_limit_is_answered_503_and_its_worker_freed(service):
    from cellmorphnet.errors import TimeLimit

    fields_ = [("f.jpg", _bccd(n)) for n in ("00000", "00001", "00002")]
    limits = service.limits
    service.limits = Limits(request_timeout_s=0.01, light_request_pixels=0)
    try:
        with pytest.raises(TimeLimit, match="request-timeout"):
            service.predict(fields_)
        c = TestClient(create_app(service))
        r = c.post("/v1/predict", files=[("files", (n, d, "image/jpeg")) for n, d in fields_])
        assert r.status_code == 503 and "request-timeout" in r.json()["detail"]
    finally:
        service.limits = limits
    time.sleep(0.5)
    assert service._in_flight == 0  # nothing left holding a decoder
    assert service.predict(fields_[:1])[0].cell is not None  # and the next request is served


# --- 3 and 8: a database is input ------------------------------------------------------------------------------------
def _store_with_a_review(path, cls: str) -> ReviewStore:
    store = ReviewStore(path, ["neutrophil"])
    cid = store.add_cell("a", source="x.png", image_sha256="0" * 64, cell_index=None, box=None, edge=False,
                         crop=_png(Image.new("RGB", (4, 4))), crop_type="image/png", run="r", checkpoint_sha256="0",
                         predicted="neutrophil", confidence=0.9, probabilities={"neutrophil": 0.9})  # fmt: skip
    store.review(cid, "neutrophil")
    store.close()
    con = sqlite3.connect(path)  # then someone edits the file by hand
    con.execute("UPDATE reviews SET class = ?", (cls,))
    con.commit()
    con.close()
    return cid


@pytest.mark.parametrize("cls", ["../../pwned", "/tmp/pwned-abs", "a\nb"])
def test_an_export_never_writes_outside_its_folder(cli, tmp_path, cls):
    db = tmp_path / "r.sqlite"
    _store_with_a_review(db, cls)
    before = set(tmp_path.rglob("*"))
    r = cli("reviews", "export", db, "--out", tmp_path / "deep" / "out")
    assert r.exit_code == 1 and "No reviewed cells" in r.output
    assert not (tmp_path / "pwned").exists() and not os.path.exists("/tmp/pwned-abs")
    assert {p for p in tmp_path.rglob("*") if "-wal" not in p.name and "-shm" not in p.name} <= before


def test_a_database_that_is_not_ours_is_left_byte_for_byte(cli, tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()
    before = other.read_bytes()
    assert_one_line_error(cli("reviews", "list", other), "another program's SQLite database")
    assert other.read_bytes() == before  # the header's journal-mode bytes 18-19 included
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert_one_line_error(cli("reviews", "export", empty, "--out", tmp_path / "x"), "not a review database")
    assert empty.read_bytes() == b""
    ours = tmp_path / "ours.sqlite"
    _store_with_a_review(ours, "neutrophil")
    assert cli("reviews", "list", ours).exit_code == 0
    assert cli("reviews", "export", ours, "--out", tmp_path / "x").exit_code == 0


# --- 9: the smaller ones ---------------------------------------------------------------------------------------------
def test_an_empty_token_from_the_environment_is_refused_at_start(cli, monkeypatch):
    monkeypatch.setenv("CELLMORPHNET_TOKEN", "")
    assert_one_line_error(cli("serve", "--port", "1"), "token is empty")


def test_pipes_and_dangling_links_in_a_folder_are_listed(cli, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    (folder / JPEG.name).write_bytes(JPEG.read_bytes())
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "p.json"
    r = cli("infer", "bloodmnist", folder, "--out", out)
    assert r.exit_code == 3, r  # some skipped
    rows = {p["path"].split("/")[-1]: p for p in json.loads(out.read_text())["predictions"]}
    assert "named pipe" in rows["pipe.jpg"]["error"] and "does not exist" in rows["gone.png"]["error"]
    assert rows[JPEG.name]["status"] == "ok"


def test_sort_into_is_checked_before_anything_is_classified(cli, tmp_path, monkeypatch):
    import cellmorphnet.inference as inference

    blocked = tmp_path / "sorted"
    blocked.write_text("a file where the folder should be")
    monkeypatch.setattr(inference, "predict_files", lambda *a, **k: pytest.fail("classified before the check"))
    assert_one_line_error(cli("infer", "bloodmnist", JPEG, "--sort-into", blocked), "is a file, not a folder")
    blocked.unlink()
    (blocked / "neutrophil").mkdir(parents=True)
    os.rmdir(blocked / "neutrophil")
    (blocked / "neutrophil").write_text("a file where a class folder should be")
    monkeypatch.undo()
    r = cli("infer", "bloodmnist", JPEG, "--sort-into", blocked)  # a class folder in the way: found when copying
    assert_one_line_error(r, "is in the way")


def test_a_small_requests_batch_goes_before_a_large_ones_next_batch():
    """A single-cell /v1/predict waited 308 s behind two large fields; now at most one batch of theirs."""
    import threading

    from cellmorphnet.serve.batching import MicroBatcher

    order, gate = [], threading.Event()

    def forward(arrays):
        order.append(int(arrays[0][0, 0, 0]))
        gate.wait(5)
        return np.zeros((len(arrays), 2), np.float32)

    b = MicroBatcher(forward, max_batch=2, max_wait_ms=0)
    try:
        img = [np.full((4, 4, 3), v, np.uint8) for v in range(4)]
        first = b.submit([img[1], img[1]], priority=1)  # a large request's batch, being run
        time.sleep(0.2)
        later = b.submit([img[2], img[2]], priority=1)  # its next batch, queued
        small = b.submit([img[3]], priority=0)  # a single cell, queued after it
        gate.set()
        for f in (first, later, small):
            f.result(5)
        assert order == [1, 3, 2]
    finally:
        b.close()
        assert not b._thread.is_alive()  # (the end is never lost in a gather)


def test_infer_and_reviews_print_json(cli, tmp_path):
    """Every command that prints a result has --json (issue 35): infer's is what --out x.json writes."""
    r = cli("infer", "bloodmnist", JPEG, "--json")
    assert r.exit_code == 0, r
    assert "Classifying" not in r.stderr  # progress is for a terminal; a script reads the result (issue 35)
    body = json.loads(r.stdout)
    assert body["summary"]["cells"] == 1 and body["predictions"][0]["cell_found"] is True
    db = tmp_path / "r.sqlite"
    _store_with_a_review(db, "neutrophil")
    listed = json.loads(cli("reviews", "list", db, "--json").stdout)
    assert listed["cases"][0]["name"] == "a" and listed["cases"][0]["reviewed"] == 1
    exported = json.loads(cli("reviews", "export", db, "--out", tmp_path / "x", "--json").stdout)
    assert exported["cells"] == 1 and exported["per_class"] == {"neutrophil": 1} and exported["refused"] == []
