"""A versioned SQLite file of ours: what people enter (reviews, accounts, which model a server serves).

Opened through the standard library's ``sqlite3`` with a WAL journal, usable from many threads; every write is
one transaction (``write``), so a killed process leaves the last committed state. The file carries a schema
version (``PRAGMA user_version``) and is migrated forward on open, step by step, each step whole or not at all; a
newer file is refused with a clear message, and so is another program's database, before anything is written to
it. ``read_only`` opens an existing file with SQLite's read-only mode and never changes it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from cellmorphnet._io import check_writable
from cellmorphnet.errors import ConfigError, InvalidData, OutputError


def now() -> str:
    """The time stored with a row: UTC, ISO 8601, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Database:
    """The SQLite file at ``path``, of the kind ``what`` (named in messages), at schema ``schema`` reached by
    ``migrations`` (version N's SQL script from N-1); ``marker`` is a table every version of ours has, by which the
    file is known as ours. ``hint`` says where such a file comes from (when a read-only one is missing)."""

    def __init__(self, path: Path, *, what: str, schema: int, migrations: dict[int, str], marker: str,
                 read_only: bool = False, hint: str | None = None) -> None:  # fmt: skip
        self.path, self.what, self.target = Path(path), what, schema
        self.read_only = read_only
        self._migrations, self._marker = migrations, marker
        self._lock = threading.Lock()
        if read_only:
            if not self.path.is_file() or self.path.stat().st_size == 0:
                kind = "an empty file" if self.path.is_file() else "not a file"
                raise InvalidData(f"{self.path} is not a {what} ({kind}).", hint=hint)
        else:
            check_writable(self.path, folder=False)  # WAL mode writes beside the file, even to read
        try:
            if read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"Cannot open the {what} {self.path}: {getattr(e, 'strerror', None) or e}.",
                              hint="Give a file in a folder you can write to.") from None  # fmt: skip
        try:
            self.db.row_factory = sqlite3.Row
            self.found = self._check_ours()  # the version on disk, before anything could change the file
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
                self.db.execute("PRAGMA foreign_keys=ON")
                self._migrate(self.found)
        except sqlite3.Error as e:  # not SQLite at all, or a database that stays locked
            self.db.close()
            raise InvalidData(f"Cannot use {self.path} as a {what}: {e}.") from None
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is committed, or none."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    @property
    def schema(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _check_ours(self) -> int:
        """The file's schema version; ``InvalidData`` for another program's database, ``ConfigError`` for a newer
        cellmorphnet's. Reads only."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if version > self.target:
            raise ConfigError(f"{self.path} was written by a newer cellmorphnet ({self.what} schema {version}; this "
                              f"one reads up to {self.target}).",
                              hint="Upgrade cellmorphnet: pipx upgrade cellmorphnet")  # fmt: skip
        if (version == 0 and tables) or (version and self._marker not in tables):  # ours always set user_version
            raise InvalidData(f"{self.path} is another program's SQLite database (tables: "
                              f"{', '.join(tables[:5]) or 'none'}).",
                              hint=f"Give a new file, or a {self.what} cellmorphnet wrote.")  # fmt: skip
        return version

    def _migrate(self, version: int) -> None:
        for target in range(version + 1, self.target + 1):
            script = re.sub(r"--[^\n]*", "", self._migrations[target])  # (comments may hold a ';')
            with self.write() as db:  # the whole step or none of it
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")


class Stored:
    """What keeps its records in a ``Database`` (``self._file``): closed when done, or used as a context manager."""

    _file: Database

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
