"""Resumable HTTP downloads with checksum verification.

A download writes to ``<dest>.part`` and continues it with an HTTP Range request on the next try,
so a cut connection costs only what was not yet received. The file is renamed into place only
after its checksum matches.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cellmorphnet._io import CHUNK, file_digest
from cellmorphnet.errors import ChecksumMismatch, DownloadError

# progress(done_bytes, total_bytes or None)
ByteProgress = Callable[[int, "int | None"], None]

USER_AGENT = "cellmorphnet (+https://pypi.org/project/cellmorphnet/)"
HTML_PREFIXES = (b"<!doctype html", b"<html", b"<!--", b"<head")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _looks_like_html(first_bytes: bytes) -> bool:
    return first_bytes.lstrip()[:20].lower().startswith(HTML_PREFIXES)


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    progress: ByteProgress | None = None,
    timeout: float = 30.0,
    manual_hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if it exists.

    Args:
        url: the address to fetch.
        dest: the final path; written only once the whole file has arrived and verified.
        md5: expected MD5 of the whole file; ``None`` skips the check.
        progress: called with the bytes done and the total (if the server says).
        timeout: seconds to wait for the server on connect and on each read.
        manual_hint: what to tell the user when the server cannot be reached.

    Raises:
        DownloadError: unreachable server, an HTTP error, or an HTML page in place of the file.
            A partial file is kept for the next try.
        ChecksumMismatch: the finished file has the wrong MD5; the bad file is removed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, see fetch)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The server has nothing past our offset: the .part is complete; verify it below.
            return _finish(part, dest, md5, url)
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}.", hint=manual_hint) from None
    except OSError as e:  # URLError, timeouts and refused connections
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Could not reach {url} ({reason}).", hint=manual_hint) from None

    with response:
        content_type = (response.headers.get("Content-Type") or "").lower()
        if "text/html" in content_type:
            raise DownloadError(
                f"{url} sent an HTML page instead of the file (a login, error or consent page?).", hint=manual_hint
            )
        status = getattr(response, "status", 200)
        if status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as f:
                first = True
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    if first and offset == 0 and _looks_like_html(chunk[:512]):
                        f.close()
                        part.unlink()
                        raise DownloadError(f"{url} sent an HTML page instead of the file.", hint=manual_hint)
                    first = False
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as e:  # timeouts and resets are OSErrors; DownloadError is not, so it passes
            raise DownloadError(
                f"The connection to {url} broke after {done:,} bytes ({e}). Run the same command again to resume.",
                hint=manual_hint,
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"The connection to {url} closed after {done:,} of {total:,} bytes. Run the same command again to resume."
        )
    return _finish(part, dest, md5, url)


def _finish(part: Path, dest: Path, md5: str | None, url: str) -> Path:
    if md5 is not None:
        actual = file_digest(part, "md5")
        if actual != md5:
            part.unlink()
            raise ChecksumMismatch(
                f"The file from {url} has MD5 {actual}, expected {md5}. It was removed.",
                hint="Run the command again; if it keeps failing, the server's file has changed.",
            )
    os.replace(part, dest)
    return dest


def copy_with_md5(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` atomically (via ``dest.part``) and return the MD5 of the bytes copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    h = hashlib.md5()
    with open(src, "rb") as fin, open(part, "wb") as fout:
        for chunk in iter(lambda: fin.read(CHUNK), b""):
            h.update(chunk)
            fout.write(chunk)
    os.replace(part, dest)
    return h.hexdigest()
