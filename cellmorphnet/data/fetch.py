"""Fetch datasets into the cache: download, or import a file or folder the user already has.

Each source does its own fetching and verification (see ``sources/``); the outcome is recorded in
``downloads/<dataset>/source.json``, which ``prepare`` and ``status`` read.
"""

from __future__ import annotations

from pathlib import Path

from cellmorphnet.data import registry
from cellmorphnet.data.download import ByteProgress
from cellmorphnet.data.source import FetchResult
from cellmorphnet.errors import DatasetNotFound


def fetch(
    name: str,
    *,
    home: Path | None = None,
    sizes: list[int] | None = None,
    source: Path | None = None,
    allow_unverified: bool = False,
    force: bool = False,
    progress: ByteProgress | None = None,
) -> list[FetchResult]:
    """Fetch or import one dataset. See ``cellmorphnet fetch --help`` for the behaviour."""
    if name.startswith(registry.FOLDER_PREFIX):
        raise DatasetNotFound("A folder dataset needs no fetch.", hint=f"Run: cellmorphnet prepare {name}")
    src = registry.get_source(name)
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise DatasetNotFound(f"{source} does not exist.", hint="Check the path given to --from.")
    return src.fetch(home, sizes=sizes, source=source, allow_unverified=allow_unverified, force=force,
                     progress=progress)  # fmt: skip
