from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellmorphnet.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PBC_28 = SHARED / "bloodmnist-pbc" / "bloodmnist_pbc.npz"
PBC_64 = SHARED / "bloodmnist-pbc" / "bloodmnist_pbc_64.npz"
PBC_TEST_IMAGES = SHARED / "bloodmnist-pbc" / "test_images"
BCCD_ZIP = SHARED / "bccd" / "BCCD_Dataset-d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXTERNAL = SHARED / "external" / "zheng2018-d1"

# Names through which a test module reads ../shared/data: without that folder its tests are skipped with the
# reason, except under CI (CI set), where they must run.
_SHARED_NAMES = ("SHARED", "PBC_28", "PBC_64", "PBC_TEST_IMAGES", "BCCD_ZIP", "EXTERNAL")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: trains for more than a few batches, builds the package, starts live "
                                       "servers or drives the browser (run with: pytest -m slow)")  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    if SHARED.is_dir():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"{SHARED} is missing: CI must run the tests that read the real data.")
    reads: dict[str, bool] = {}
    skip = pytest.mark.skip(reason=f"needs the real data in {SHARED} (see the README's Set-up)")
    for item in items:
        path = str(item.path)
        if path not in reads:
            text = Path(path).read_text(encoding="utf-8")
            reads[path] = any(name in text for name in _SHARED_NAMES)
        if reads[path]:
            item.add_marker(skip)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An isolated cellmorphnet home for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("CELLMORPHNET_HOME", str(h))
    monkeypatch.delenv("CELLMORPHNET_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return h


class Result:
    def __init__(self, r):
        self.exit_code = r.exit_code
        self.stdout = ANSI.sub("", r.stdout)
        self.stderr = ANSI.sub("", r.stderr)
        self.output = self.stdout + self.stderr
        self.exception = r.exception

    def __repr__(self) -> str:
        return f"<exit {self.exit_code}>\n{self.output}"


@pytest.fixture
def cli(home):
    """Run the real app in-process; returns a Result with stdout/stderr separated and ANSI stripped."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
        res = Result(r)
        # An uncaught exception means a traceback would reach the user.
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise AssertionError(f"uncaught exception: {r.exception!r}\n{res.output}") from r.exception
        return res

    return run


def train_once(tmp_path_factory, name: str, *args: str) -> tuple[Path, Result]:
    """Train a tiny run on the sample with the real command, once for a test module or session, in a home of
    its own.

    Returns that home and the command's result; ``in_home`` gives each test its own copy.
    """
    home = tmp_path_factory.mktemp(f"trained-{name}") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLMORPHNET_HOME", str(home))
        mp.delenv("CELLMORPHNET_DEBUG", raising=False)
        mp.setenv("COLUMNS", "200")
        r = Result(CliRunner().invoke(app, ["train", "--datasets", "sample", "--name", name, *args]))
    assert r.exit_code == 0, r
    return home, r


# A tiny run of the sample (the test architecture, 28 px, four batches): what the command tests of eval, infer
# and the commands that take a run work on.
TINY_RUN = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "16", "--accum-steps", "1",
            "--limit-batches", "4", "--data-size", "28", "--epochs", "1"]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> Path:
    """A home with the tiny run ``t`` trained once a session (``TINY_RUN``); tests take copies (``trained``)."""
    return train_once(tmp_path_factory, "t", *TINY_RUN)[0]


@pytest.fixture
def trained(tiny_home, home) -> Path:
    """The tiny run ``t``, in this test's own home, free to be changed: its folder."""
    return in_home(tiny_home, home, "t")


def in_home(trained_home: Path, home: Path, name: str) -> Path:
    """A copy of a ``train_once`` home (the run and the prepared sample) in a test's own home; the run's folder."""
    import shutil

    shutil.copytree(trained_home, home, dirs_exist_ok=True)
    return home / "runs" / name


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failed command: non-zero exit, an 'Error:' line, no traceback, and each fragment in the output."""
    assert result.exit_code != 0, result
    assert "Traceback" not in result.output, result
    assert "Error:" in result.stderr, result
    flat = " ".join(result.output.split())
    for f in fragments:
        assert f in flat, (f, result)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def service():
    """The shipped model loaded as ``serve`` holds it (once per test module)."""
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.serve.service import ModelService

    svc = ModelService(runs.packaged_runs()[runs.PACKAGED], device="cpu").warm_up()
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    """A test client of the web application around ``service``."""
    from fastapi.testclient import TestClient

    from cellmorphnet.serve.app import create_app

    return TestClient(create_app(service))
