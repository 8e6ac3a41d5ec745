"""The real download code against a local HTTP server."""

import hashlib
import os
import socket

import pytest
from conftest import assert_one_line_error
from httpserver import FileServer

from cellmorphnet.data.download import download, part_path
from cellmorphnet.data.sources import bloodmnist
from cellmorphnet.errors import ChecksumMismatch, DownloadError

BODY = os.urandom(3 * 1024 * 1024 + 123)
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


def test_complete_download_with_progress(server, tmp_path):
    server.routes["/f.npz"] = (BODY, {})
    seen = []
    dest = download(f"{server.base}/f.npz", tmp_path / "f.npz", md5=MD5, progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == BODY
    assert not part_path(dest).exists()
    assert seen[-1] == (len(BODY), len(BODY))


def test_cut_connection_then_resume_with_range(server, tmp_path):
    half = len(BODY) // 2
    server.routes["/f.npz"] = (BODY, {"cut_at": half})
    dest = tmp_path / "f.npz"
    with pytest.raises(DownloadError, match="again to resume"):
        download(f"{server.base}/f.npz", dest, md5=MD5)
    assert not dest.exists()
    assert part_path(dest).stat().st_size == half
    download(f"{server.base}/f.npz", dest, md5=MD5)
    assert dest.read_bytes() == BODY
    assert server.requests[-1]["range"] == f"bytes={half}-"


def test_server_without_range_support_restarts(server, tmp_path):
    server.routes["/f.npz"] = (BODY, {"ignore_range": True})
    dest = tmp_path / "f.npz"
    part_path(dest).write_bytes(b"garbage-prefix")
    download(f"{server.base}/f.npz", dest, md5=MD5)
    assert dest.read_bytes() == BODY


def test_complete_part_file_is_verified_after_416(server, tmp_path):
    server.routes["/f.npz"] = (BODY, {})
    dest = tmp_path / "f.npz"
    part_path(dest).write_bytes(BODY)
    download(f"{server.base}/f.npz", dest, md5=MD5)
    assert dest.read_bytes() == BODY


def test_wrong_checksum_is_refused_and_removed(server, tmp_path):
    server.routes["/f.npz"] = (BODY, {})
    dest = tmp_path / "f.npz"
    with pytest.raises(ChecksumMismatch, match=MD5):
        download(f"{server.base}/f.npz", dest, md5="0" * 32)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_instead_of_file(server, tmp_path, content_type):
    server.routes["/f.npz"] = (
        b"<!DOCTYPE html><html><body>Please log in</body></html>",
        {"content_type": content_type},
    )
    dest = tmp_path / "f.npz"
    with pytest.raises(DownloadError, match="HTML page"):
        download(f"{server.base}/f.npz", dest)
    assert not dest.exists()


def test_404(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.base}/missing.npz", tmp_path / "f.npz")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def local_bloodmnist(monkeypatch):
    """Point BloodMNIST's 28 px URL at a URL of the test's choosing (the network boundary)."""
    target = {}
    real = bloodmnist.bloodmnist_file

    def fake(size):
        url, filename, md5 = real(size)
        return target.get("url", url), filename, target.get("md5", md5)

    monkeypatch.setattr(bloodmnist, "bloodmnist_file", fake)
    return target


def test_cli_fetch_without_network_is_one_line_and_keeps_partial(cli, home, local_bloodmnist):
    url = f"http://127.0.0.1:{_closed_port()}/bloodmnist.npz"
    local_bloodmnist["url"] = url
    part = home / "downloads" / "bloodmnist" / "bloodmnist.npz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 100)
    r = cli("fetch", "bloodmnist")
    assert_one_line_error(r, "Could not reach", url, "--from")
    assert r.exit_code == 1
    assert part.read_bytes() == b"x" * 100
    status = cli("status")
    assert "partial download" in status.stdout


def test_cli_fetch_downloads_and_resumes(cli, home, server, local_bloodmnist):
    half = len(BODY) // 3
    server.routes["/bloodmnist.npz"] = (BODY, {"cut_at": half})
    local_bloodmnist.update(url=f"{server.base}/bloodmnist.npz", md5=MD5)
    r = cli("fetch", "bloodmnist")
    assert_one_line_error(r, "again to resume")
    r = cli("fetch", "bloodmnist")
    assert r.exit_code == 0, r
    assert "downloaded, verified" in r.stderr
    assert (home / "downloads" / "bloodmnist" / "bloodmnist.npz").read_bytes() == BODY
    r = cli("fetch", "bloodmnist")
    assert "already present" in r.stderr
