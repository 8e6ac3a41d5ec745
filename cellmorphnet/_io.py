"""Small helpers for atomic writes and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellmorphnet.errors import OutputError

CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back (at import, before any threads)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The rename is atomic on one file system, so a reader sees the old file or the new one,
    never half of one. On failure the temporary file is removed and ``target`` is untouched. The file gets
    ``target``'s permissions where it exists, else those of a file opened for writing (not the temporary
    file's owner-only ones), so a run folder stays readable by whoever could read it before.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from e
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_UMASK)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, target)
        except OSError as e:  # a folder where the file should go
            raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: Path, *, folder: bool) -> None:
    """Raise ``OutputError`` now, before any work, where ``path`` (a file, or a folder with ``folder``) could not be
    written: a file where a folder should be or the other way round, or no writable folder to make it in.
    Nothing is created."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder.")
    if not folder and path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name.")
    ancestor = path if folder else path.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"Cannot write {path}: {ancestor} is not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {path}: {ancestor} is not writable.")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> tuple[str, int]:
    """Digest over the sorted ``relative/path sha256`` lines of every file under ``root``.

    This verifies an archive by its content rather than its bytes, so a re-packed zip of the
    same files (GitHub regenerates archives) still verifies. Returns the digest and file count.
    """
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    lines = [f"{rel} {file_digest(p)}" for rel, p in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), len(lines)


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV Injection"): a file named
# "=HYPERLINK(...).jpg" would become a link, or worse, in the CSV a colleague opens.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell that a spreadsheet shows as the text it is: one that would start a formula gets a leading '."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell
