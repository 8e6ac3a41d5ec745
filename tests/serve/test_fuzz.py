"""Property-based tests: the API from its own schema (schemathesis, every route of /openapi.json, with and without a
token) answers no 500 and nothing over its limits; the image readers give per-file errors for any bytes (Hypothesis).

Rerun by hand: ``.venv/bin/python -m pytest -m slow tests/test_fuzz.py -k schema``.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
import schemathesis
from conftest import PBC_TEST_IMAGES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cellmorphnet.errors import InvalidData
from cellmorphnet.inference.images import Upload, read_image
from cellmorphnet.vision.imaging import load_rgb

TOKEN = "fuzz-token"
JPEG = sorted((PBC_TEST_IMAGES / "lymphocyte").glob("*.jpg"))[0]


def _schema(service, tmp_path_factory, token):
    from cellmorphnet.reviews.store import ReviewStore
    from cellmorphnet.serve.app import create_app

    store = ReviewStore(tmp_path_factory.mktemp("fuzz") / "reviews.sqlite", [*service.classes, "smudge"])
    app = create_app(service, token=token, reviews=store)
    # a case with a cell in it, so that the cell routes meet real rows as well as missing ones
    from fastapi.testclient import TestClient

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    TestClient(app).post("/v1/cases/fuzz/cells", headers=headers,
                         files=[("files", (JPEG.name, JPEG.read_bytes(), "image/jpeg"))])  # fmt: skip
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def open_api(service, tmp_path_factory):
    return _schema(service, tmp_path_factory, None)


@pytest.fixture(scope="module")
def guarded_api(service, tmp_path_factory):
    return _schema(service, tmp_path_factory, TOKEN)


EXPECTED = {200, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 503}


def _check(response) -> None:
    assert response.status_code in EXPECTED, (response.status_code, response.text[:300])
    assert len(response.content) < 5_000_000  # no answer over the limits


def _each_operation(schema, test, examples: int) -> list[str]:
    """Run ``test(case)`` on ``examples`` cases generated from each operation's schema; the operations' names."""
    names = []
    for result in schema.get_all_operations():
        op = result.ok()
        names.append(f"{op.method.upper()} {op.path}")
        def run(case):  # a fresh function per operation (Hypothesis decorates each once)
            test(case)

        given(op.as_strategy())(settings(max_examples=examples, deadline=None, database=None,
                                         suppress_health_check=list(HealthCheck))(run))()  # fmt: skip
    return names


@pytest.mark.slow
def test_every_route_without_a_token(open_api):
    names = _each_operation(open_api, lambda case: _check(case.call()), 15)
    assert {"POST /v1/predict", "POST /v1/gradcam", "POST /v1/cells/{cell_id}/review", "GET /readyz"} <= set(names)


@pytest.mark.slow
def test_every_route_with_and_without_the_token(guarded_api):
    def both(case):
        _check(case.call(headers={"Authorization": f"Bearer {TOKEN}"}))
        without = case.call()
        _check(without)
        if case.path.startswith("/v1"):
            assert without.status_code in (401, 403, 404, 405, 413, 422), without.status_code

    assert len(_each_operation(guarded_api, both, 8)) >= 10


def _png_header(width: int, height: int, body: bytes) -> bytes:
    """A PNG that claims ``width`` x ``height`` and holds ``body`` as its image data (anything at all)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_are_an_image_or_a_per_file_error(data):
    try:
        img = read_image(Upload("x.bin", data, max_pixels=4_000_000))
    except InvalidData as e:
        assert e.message.startswith("x.bin: ")
    else:
        assert img.mode == "RGB"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=512))
def test_any_png_header_is_refused_before_decoding_or_read(width, height, body):
    data = _png_header(width, height, body)
    try:
        img = load_rgb(io.BytesIO(data), "h.png", max_pixels=4_000_000)
    except InvalidData as e:
        assert e.message.startswith("h.png: ")
    else:
        assert img.size == (width, height) and width * height <= 4_000_000


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.binary(min_size=1, max_size=64))
def test_a_real_jpeg_cut_or_damaged_anywhere_is_a_per_file_error(cut, noise):
    data = bytearray(JPEG.read_bytes())
    cut = cut % len(data)
    damaged = bytes(data[:cut]) + noise + bytes(data[cut + len(noise):])
    try:
        img = read_image(Upload("d.jpg", damaged, max_pixels=4_000_000))
    except InvalidData:
        pass
    else:
        assert img.mode == "RGB" and min(img.size) > 0
    Image.open(JPEG).verify()  # (the original untouched)
