"""``cellmorphnet serve``: the REST API in-process (FastAPI's test client), the micro-batcher, the command.

Everything runs the model that ships with the package (the default architecture, fully trained), so
the agreement with ``infer`` is checked on what users get.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import PBC_TEST_IMAGES, assert_one_line_error, png_claiming
from fastapi.testclient import TestClient
from PIL import Image

from cellmorphnet.runs import folders as runs
from cellmorphnet.serve.app import create_app
from cellmorphnet.serve.batching import MicroBatcher
from cellmorphnet.serve.service import Limits, ModelService

JPEGS = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))


def _files(paths, field="files"):
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_health_routes_and_readiness(service):
    fresh = ModelService(service.run_dir, device="cpu")
    try:
        c = TestClient(create_app(fresh))
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.head("/healthz").status_code == 200 and c.head("/").status_code == 200  # monitors send HEAD
        assert c.get("/readyz").status_code == 503  # loaded, not yet warmed up
        fresh.warm_up()
        assert c.get("/readyz").json() == {"status": "ready"}
    finally:
        fresh.close()


def test_model_card(client, service):
    card = client.get("/v1/model").json()
    assert card["classes"] == service.classes and len(card["classes"]) == 8
    assert card["input_size"] == 96 and card["architecture"] == "tf_efficientnet_lite0"
    digest = hashlib.sha256((service.run_dir / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    assert card["checkpoint_sha256"] == digest
    assert card["datasets"][0]["name"] == "bloodmnist" and card["datasets"][0]["licence"] == "CC BY 4.0"
    assert card["test_metrics"]["bloodmnist"]["accuracy"] > 0.97  # the shipped run was evaluated
    assert card["preprocessing"]["crop"] == "cell" and card["preprocessing"]["tta"] is True
    assert card["preprocessing"]["set"] == "each file on its own" and card["preprocessing"]["lab"] is None
    assert not card["preprocessing"]["stain_norm"] and card["verdicts"]["trust_reference"]  # what the page shows
    assert card["datasets"][0]["verified"] is False  # this project's PBC rebuild, not the official BloodMNIST file
    assert "not a medical device" in card["notice"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warned of a duplicate operation ID for the HEAD routes
        schema = client.get("/openapi.json").json()
    assert schema["paths"]["/v1/predict"]["post"]["requestBody"]
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)) and set(schema["paths"]["/healthz"]) == {"get"}


@pytest.mark.slow
def test_predict_agrees_with_infer_on_the_real_test_jpegs(client, cli, tmp_path):
    """All 240 JPEGs in one request, as infer's folder: each file gets infer's answer and verdict."""
    assert len(JPEGS) == 240
    out = tmp_path / "infer.csv"
    r = cli("infer", runs.PACKAGED, PBC_TEST_IMAGES, "--out", out)
    assert r.exit_code == 0, r
    expected = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    res = client.post("/v1/predict", files=_files(JPEGS))
    assert res.status_code == 200
    results = res.json()["results"]
    assert [x["file"] for x in results] == [p.name for p in JPEGS]  # upload order
    for x in results:
        row = expected[x["file"]]
        assert x["status"] == "ok" and x["predicted"] == row["predicted"], x["file"]
        assert abs(x["confidence"] - float(row["confidence"])) < 1e-4
        assert x["framing"] == row["framing"]
        assert x["verdict"] == row["verdict"] and x["stain_contrast"] is None and row["stain_contrast"] == ""
    truth = [p.parent.name for p in JPEGS]
    accuracy = np.mean([x["predicted"] == t for x, t in zip(results, truth, strict=True)])
    assert accuracy > 0.9


def test_single_image_requests_match_infer_on_that_file(client, service):
    from cellmorphnet.inference import predict_files

    rm, o = service.rm, service.options
    for path in JPEGS[::60]:
        (want,), _ = predict_files(rm, [path], o)
        got = client.post("/v1/predict", files=_files([path])).json()["results"][0]
        assert got["predicted"] == want.predicted and abs(got["confidence"] - want.confidence) < 1e-4


def test_bad_files_get_an_error_entry_and_never_fail_the_request(client):
    good = JPEGS[0].read_bytes()
    rgba = Image.open(JPEGS[1]).convert("RGBA")
    sixteen = Image.fromarray(np.asarray(Image.open(JPEGS[2]).convert("L"), np.uint16) * 257)
    files = [
        ("files", ("good.jpg", good, "image/jpeg")),
        ("files", ("zero.jpg", b"", "image/jpeg")),
        ("files", ("truncated.jpg", good[: len(good) // 2], "image/jpeg")),
        ("files", ("text.png", b"this is not an image\n" * 10, "image/png")),
        ("files", ("bomb.png", png_claiming(100_000, 100_000), "image/png")),
        ("files", ("rgba.png", _png(rgba), "image/png")),
        ("files", ("16bit.png", _png(sixteen), "image/png")),
        # formats Pillow can open but a microscope does not write: refused before any decoder of theirs runs
        ("files", ("figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n", "image/png")),
        ("files", ("favicon.png", _saved(Image.open(JPEGS[3]).resize((32, 32)), "ICO"), "image/png")),
        ("files", ("cell.webp", _saved(Image.open(JPEGS[3]), "WEBP"), "image/webp")),
    ]
    res = client.post("/v1/predict", files=files, params={"top_k": 2})
    assert res.status_code == 200
    by = {x["file"]: x for x in res.json()["results"]}
    assert [x["file"] for x in res.json()["results"]] == [f[1][0] for f in files]
    for ok in ("good.jpg", "rgba.png", "16bit.png", "cell.webp"):
        assert by[ok]["status"] == "ok" and len(by[ok]["top_k"]) == 2, by[ok]
    assert "empty" in by["zero.jpg"]["error"]
    assert by["truncated.jpg"]["status"] == "error" and by["truncated.jpg"]["error"]
    for refused in ("text.png", "figure.eps", "favicon.png"):
        assert by[refused]["error"] == "not an image in a supported format (JPEG, PNG, TIFF, BMP or WebP)"
    assert "too large" in by["bomb.png"]["error"]
    assert all(by[f]["predicted"] is None for f in ("zero.jpg", "truncated.jpg", "text.png", "bomb.png"))


def _saved(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_min_confidence_flags_and_top_k(client):
    res = client.post("/v1/predict", files=_files(JPEGS[:3]), params={"top_k": 8, "min_confidence": 1.0}).json()
    for x in res["results"]:
        assert x["low_confidence"] is True and len(x["top_k"]) == 8
        probs = [t["probability"] for t in x["top_k"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert client.post("/v1/predict", files=_files(JPEGS[:1]), params={"top_k": 0}).status_code == 422


def test_limits_answer_413_and_bad_bodies_400(service):
    small = TestClient(create_app(service, limits=Limits(max_file_bytes=10_000, max_request_bytes=200_000,
                                                          max_files=3)))  # fmt: skip
    big = JPEGS[0].read_bytes()
    assert len(big) > 10_000
    r = small.post("/v1/predict", files=[("files", ("big.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and "big.jpg" in r.json()["detail"]
    tiny = _png(Image.new("RGB", (8, 8), "white"))
    r = small.post("/v1/predict", files=[("files", (f"{i}.png", tiny, "image/png")) for i in range(4)])
    assert r.status_code == 413 and "At most 3 files" in r.json()["detail"]
    r = small.post("/v1/predict", content=b"x" * 300_000, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    c = TestClient(create_app(service))
    assert c.post("/v1/predict", json={"files": []}).status_code == 400
    assert c.post("/v1/predict", files=[("other", ("a.png", tiny, "image/png"))]).status_code == 400
    assert c.post("/v1/gradcam", files=_files(JPEGS[:2], "file")).status_code == 400



def test_a_request_of_large_canvases_is_refused_before_anything_is_decoded(client, service):
    """Blank 7000x7000 PNGs are tiny on the wire and 49 megapixels each decoded: a request whose images add up to
    more than max_request_pixels (200 million by default) is refused from their headers alone."""
    import time

    canvas = _png(Image.new("RGB", (7000, 7000), "white"))
    assert len(canvas) < 300_000 and service.limits.max_request_pixels == 200_000_000
    start = time.monotonic()
    r = client.post("/v1/predict", files=[("files", (f"{i}.png", canvas, "image/png")) for i in range(5)])
    assert r.status_code == 413 and "245 million pixels" in r.json()["detail"], r.text
    assert time.monotonic() - start < 5  # nothing was decoded
    assert client.post("/v1/predict", files=_files(JPEGS[:3])).status_code == 200  # the server goes on


def test_token_guards_v1_but_not_health(service):
    c = TestClient(create_app(service, token="s3cret"))
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        r = c.get("/v1/model", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/predict", files=_files(JPEGS[:1]), headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert c.get("/v1/model", headers=ok).status_code == 200
    assert c.post("/v1/predict", files=_files(JPEGS[:1]), headers=ok).json()["results"][0]["status"] == "ok"
    assert c.get("/").status_code == 200  # the page itself asks for the token


def test_an_empty_token_is_refused_and_tokens_compare_as_utf8(service):
    from cellmorphnet.errors import ConfigError

    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="token is empty"):
            create_app(service, token=empty)
    c = TestClient(create_app(service, token="clé-secrète"))
    utf8 = "Bearer clé-secrète".encode()  # what a client sends: the token's UTF-8 bytes
    assert c.get("/v1/model", headers=[("Authorization", utf8)]).status_code == 200
    assert c.get("/v1/model", headers=[("Authorization", "Bearer clé-secrètE".encode())]).status_code == 401
    assert c.get("/v1/model", headers={"Authorization": "Bearer "}).status_code == 401


def test_other_sites_cannot_use_a_local_server_by_origin_or_by_host(service):
    from cellmorphnet.serve.security import trusted_hosts

    one = _files(JPEGS[:1])
    for token in (None, "s3cret"):  # a cross-origin POST is refused with or without a token
        auth = {"Authorization": "Bearer s3cret"} if token else {}
        c = TestClient(create_app(service, token=token, hosts=trusted_hosts("127.0.0.1")), base_url="http://127.0.0.1:8000")
        refused = c.post("/v1/predict", files=one, headers={**auth, "Origin": "http://evil.example"})
        assert refused.status_code == 403 and "Cross-origin" in refused.json()["detail"]
        assert c.post("/v1/predict", files=one, headers={**auth, "Origin": "null"}).status_code == 403
        assert c.post("/v1/predict", files=one, headers={**auth, "Origin": "http://127.0.0.1:8000"}).status_code == 200
        assert c.post("/v1/predict", files=one, headers=auth).status_code == 200  # no Origin: curl, scripts
        # DNS rebinding: a foreign name that resolves to 127.0.0.1 is not answered, the loopback names are
        assert c.get("/healthz", headers={"Host": "evil.example:8000"}).status_code == 400
        assert c.get("/v1/model", headers={**auth, "Host": "localhost:8000"}).status_code == 200
    allowed = TestClient(create_app(service, cors_origins=["http://lims.example"]))
    assert allowed.post("/v1/predict", files=one, headers={"Origin": "http://lims.example"}).status_code == 200
    assert trusted_hosts("0.0.0.0") == ["*"] and "lab-pc" in trusted_hosts("0.0.0.0", ["lab-pc"])
    assert set(trusted_hosts("::1")) == {"[::1]", "localhost", "127.0.0.1"}


def test_cors_is_off_unless_an_origin_is_given(service):
    origin = {"Origin": "http://lims.example"}
    assert "access-control-allow-origin" not in TestClient(create_app(service)).get("/v1/model", headers=origin).headers
    c = TestClient(create_app(service, cors_origins=["http://lims.example"]))
    assert c.get("/v1/model", headers=origin).headers["access-control-allow-origin"] == "http://lims.example"
    other = c.get("/v1/model", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


def test_gradcam_returns_the_overlay_png(client):
    path = JPEGS[100]
    r = client.post("/v1/gradcam", files=_files([path], "file"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (516, 256) and img.mode == "RGB"
    pred = client.post("/v1/predict", files=_files([path])).json()["results"][0]
    assert r.headers["x-predicted-class"] == pred["predicted"]
    left, right = np.asarray(img)[:, :256].astype(int), np.asarray(img)[:, 260:].astype(int)
    assert np.abs(left - right).mean() > 5  # the heat map is drawn over the crop
    bad = client.post("/v1/gradcam", files=[("file", ("x.png", b"nope", "image/png"))])
    assert bad.status_code == 422 and bad.json()["detail"].startswith("not an image")


def test_the_page_is_served_and_needs_no_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = ("/static/common.js", "/static/app.js", "/static/review.js", "/static/style.css")
    for asset in assets:
        assert client.get(asset).status_code == 200
    review = client.get("/review")
    assert review.status_code == 200 and "/static/review.js" in review.text
    texts = [page.text, review.text, *(client.get(a).text for a in assets)]
    for text in texts:
        text = text.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace's name: never fetched
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "not a medical device" in page.text
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/..%2F__init__.py").status_code == 404


def test_micro_batcher_gathers_concurrent_requests():
    sizes = []

    def forward(arrays):
        sizes.append(len(arrays))
        time.sleep(0.02)
        return np.stack([a.reshape(-1)[:2].astype(np.float32) for a in arrays])

    b = MicroBatcher(forward, max_batch=8, max_wait_ms=50)
    arrays = [np.full((4, 4, 3), i, np.uint8) for i in range(16)]
    results = [None] * 16

    def client(i):
        results[i] = b.submit([arrays[i]]).result(timeout=10)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert sum(sizes) == 16 and max(sizes) <= 8 and len(sizes) < 16  # gathered, and bounded
    for i, r in enumerate(results):
        assert r.shape == (1, 2) and r[0, 0] == i  # each request gets its own rows back

    alone = []
    one = MicroBatcher(lambda a: (alone.append(len(a)), np.zeros((len(a), 2)))[1], max_batch=1, max_wait_ms=50)
    futures = [one.submit([arrays[0]]) for _ in range(5)] + [one.submit(arrays[:3])]
    [f.result(timeout=10) for f in futures]
    one.close()
    assert alone == [1] * 8  # no micro-batching: every image alone


def test_micro_batcher_hands_errors_to_the_waiting_request():
    def forward(arrays):
        raise RuntimeError("model broke")

    b = MicroBatcher(forward, max_batch=4, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="model broke"):
        b.submit([np.zeros((2, 2, 3), np.uint8)]).result(timeout=10)
    assert b.call(lambda: 42).result(timeout=10) == 42  # the thread lives on
    b.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_a_broken_run_before_opening_the_port(cli, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs.packaged_runs()[runs.PACKAGED], broken)
    ckpt = broken / "checkpoints" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert_one_line_error(cli("serve", broken, "--port", str(_free_port())), "cannot be loaded safely")
    assert_one_line_error(cli("serve", tmp_path / "nowhere"), "No run")
    assert_one_line_error(cli("serve", "--token", ""), "The token is empty")  # before anything loads


def test_serve_refuses_a_port_in_use(cli):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_line_error(cli("serve", "--port", str(port)), f"Cannot listen on 127.0.0.1:{port}")


def test_serve_and_infer_agree_on_smear_fields(client, service, tmp_path):
    """Two real BCCD fields in one request: each file's list of cells (box, edge, class) is infer's for the same
    files together; the request's differential counts them; Grad-CAM of one cell by its box."""
    import zipfile

    from conftest import BCCD_ZIP

    from cellmorphnet import api

    with zipfile.ZipFile(BCCD_ZIP) as z:
        for n in ("00176", "00000"):
            name = next(m for m in z.namelist() if m.endswith(f"JPEGImages/BloodImage_{n}.jpg"))
            (tmp_path / f"{n}.jpg").write_bytes(z.read(name))
    paths = [tmp_path / "00176.jpg", tmp_path / "00000.jpg"]
    body = client.post("/v1/predict", files=_files(paths)).json()
    want = api.predict(service.rm, paths)
    assert [r["kind"] for r in body["results"]] == ["field", "field"]
    got = [(r["file"], c["cell"], tuple(c["box"]), c["edge"], c["predicted"])
           for r in body["results"] for c in r["cells"]]  # fmt: skip
    assert got == [(p.source.name, p.cell.index, p.cell.box, p.cell.edge, p.predicted) for p in want]
    assert len(got) == 2 and body["results"][0]["predicted"] is None
    assert body["differential"]["white_cells"] + body["differential"]["nucleated_red_cells"] + sum(
        body["differential"]["other"].values()) + body["differential"]["low_confidence"] + body["differential"][
        "awaiting_review"] == 2
    assert {c["verdict"] for r in body["results"] for c in r["cells"]} <= {"classified", "review"}
    cell = body["results"][0]["cells"][0]
    x0, y0, x1, y1 = cell["box"]
    r = client.post(f"/v1/gradcam?x0={x0}&y0={y0}&x1={x1}&y1={y1}&rbc={body['results'][0]['rbc_diameter_px']}",
                    files=_files(paths[:1], field="file"))  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.post("/v1/gradcam?x0=1&y0=2", files=_files(paths[:1], field="file")).status_code == 400


def test_overload_notices_say_a_burst_of_503s_in_a_line_every_ten_seconds():
    import logging

    from cellmorphnet.serve.connections import OverloadNotices

    now = [100.0]
    quiet = OverloadNotices(every=10, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, (), None)

    first = record("Exceeded concurrency limit.")
    assert quiet.filter(first) and "answered 503 (busy)" in first.getMessage()
    passed = []
    for _ in range(30):  # 30 more over the next 9 s: held back
        now[0] += 0.3
        passed.append(quiet.filter(record("Exceeded concurrency limit.")))
    assert not any(passed)
    now[0] += 2
    later = record("Exceeded concurrency limit.")
    assert quiet.filter(later) and later.getMessage().startswith("Exceeded concurrency limit: 31 requests answered")
    assert quiet.filter(record("Started server process")) and quiet.filter(record("Other warning %s"))  # the rest
