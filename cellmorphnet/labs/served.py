"""Which model a lab serves, and every switch: ``cellmorphnet lab promote RUN`` (or the review page's button) makes a
run the served one, ``lab rollback`` restores the one before; ``serve`` without a run serves the latest, and a running
server follows a switch within seconds.

The switches are what people decided, so they live in SQLite (``HOME/served.sqlite``, versioned like the review
store), append-only: each row names the run, its checkpoint's SHA-256 when it was promoted (a run whose checkpoint
changed since is refused), the run it replaced, who switched and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellmorphnet._io import file_digest
from cellmorphnet.errors import Conflict, InvalidData
from cellmorphnet.runtime.database import Database, Stored, now

SCHEMA = 1
FILENAME = "served.sqlite"
_MIGRATIONS = {
    1: """
        CREATE TABLE switches (
            id INTEGER PRIMARY KEY,
            action TEXT NOT NULL,             -- promote or rollback
            run TEXT NOT NULL,                -- served from now: a name under HOME/runs, bloodmnist, or a folder
            checkpoint_sha256 TEXT NOT NULL,  -- its best checkpoint's when switched to
            previous TEXT,                    -- the run it replaced
            previous_sha256 TEXT,
            by TEXT,                          -- the account that switched (NULL: the command line or the shared token)
            note TEXT,
            created TEXT NOT NULL
        );
    """,
}


@dataclass(frozen=True)
class Switch:
    id: int
    action: str
    run: str
    checkpoint_sha256: str
    previous: str | None
    previous_sha256: str | None
    by: str | None
    note: str | None
    created: str

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "action": self.action, "run": self.run, "checkpoint_sha256": self.checkpoint_sha256,
                "previous": self.previous, "previous_sha256": self.previous_sha256, "by": self.by, "note": self.note,
                "created": self.created}  # fmt: skip


def served_path(home: Path) -> Path:
    return Path(home) / FILENAME


def checkpoint_of(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.pt"


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


class Served(Stored):
    """The switches file at ``path`` (created on open unless ``read_only``)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self._file = Database(self.path, what="served-model file", schema=SCHEMA, migrations=_MIGRATIONS,
                              marker="switches", read_only=read_only)  # fmt: skip

    def history(self, limit: int = 50) -> list[Switch]:
        """The latest switches, newest first (rows that are not ours are left out: the file is read as input)."""
        rows = self._file.db.execute("SELECT * FROM switches ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            if r["action"] in ("promote", "rollback") and isinstance(r["run"], str) and isinstance(r["id"], int):
                out.append(Switch(r["id"], r["action"], r["run"], str(r["checkpoint_sha256"]), _text(r["previous"]),
                                  _text(r["previous_sha256"]), _text(r["by"]), _text(r["note"]),
                                  str(r["created"])))  # fmt: skip
        return out

    def current(self) -> Switch | None:
        """The latest switch (None: nothing promoted yet)."""
        latest = self.history(1)
        return latest[0] if latest else None

    def promote(self, run: str, run_dir: Path, *, previous: tuple[str, str] | None, by: str | None = None,
                note: str | None = None, action: str = "promote") -> Switch:  # fmt: skip
        """Record that ``run`` (found at ``run_dir``) is served from now, replacing ``previous`` (name, checkpoint
        SHA-256)."""
        ckpt = checkpoint_of(run_dir)
        if not ckpt.is_file():
            raise InvalidData(f"{run_dir} has no best checkpoint to serve.")
        digest = file_digest(ckpt)
        before = previous
        if before is not None and before == (run, digest):
            raise Conflict(f"{run} is already the served model.")
        created = now()
        with self._file.write() as db:
            cur = db.execute("INSERT INTO switches (action, run, checkpoint_sha256, previous, previous_sha256, by, "
                             "note, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (action, run, digest, *(before or (None, None)), by, note, created))  # fmt: skip
        return Switch(int(cur.lastrowid), action, run, digest, *(before or (None, None)), by, note, created)

    def rollback_target(self) -> tuple[str, str]:
        """The run (and checkpoint digest) served before the current one; ``Conflict`` where there is none."""
        cur = self.current()
        if cur is None or cur.previous is None or cur.previous_sha256 is None:
            raise Conflict("There is no earlier model to go back to.",
                           hint="A rollback restores the model served before the last promotion.")  # fmt: skip
        return cur.previous, cur.previous_sha256


def check_unchanged(run_dir: Path, expected: str, run: str) -> None:
    """Refuse a run whose best checkpoint is no longer the one that was promoted (retrained, replaced, tampered)."""
    ckpt = checkpoint_of(run_dir)
    if not ckpt.is_file() or file_digest(ckpt) != expected:
        raise Conflict(f"{run}'s checkpoint is not the one that was promoted (sha256 {expected[:12]}…).",
                       hint="Promote it again if this is the model to serve: cellmorphnet lab promote RUN")  # fmt: skip


DEFAULT_RUN = "bloodmnist"  # what a home serves before anything is promoted: the model that ships


def run_name(run_dir: Path, home: Path) -> str:
    """How a switch names a run: its folder's name under HOME/runs, a shipped run's name, else its folder."""
    from cellmorphnet import paths
    from cellmorphnet.runs.folders import packaged_runs

    run_dir = Path(run_dir).resolve()
    if run_dir.parent == paths.runs_dir(home).resolve():
        return run_dir.name
    for name, folder in packaged_runs().items():
        if Path(folder).resolve() == run_dir:
            return name
    return str(run_dir)


def served_run(home: Path) -> tuple[str, Path]:
    """The run this home serves (name, folder): the latest switch's, its checkpoint checked; else the shipped one."""
    from cellmorphnet.runs.folders import resolve_run

    path = served_path(home)
    current = None
    if path.is_file():
        with Served(path, read_only=True) as served:
            current = served.current()
    if current is None:
        return DEFAULT_RUN, resolve_run(DEFAULT_RUN, home)
    run_dir = resolve_run(current.run, home)
    check_unchanged(run_dir, current.checkpoint_sha256, current.run)
    return current.run, run_dir


def promote(home: Path, run: str, *, by: str | None = None, note: str | None = None) -> Switch:
    """Make ``run`` the served model of ``home`` (recorded; a running server follows)."""
    from cellmorphnet.runs.folders import resolve_run

    run_dir = resolve_run(run, home)
    name, folder = served_run(home)
    with Served(served_path(home)) as served:
        return served.promote(run_name(run_dir, home), run_dir, previous=(name, file_digest(checkpoint_of(folder))),
                              by=by, note=note)  # fmt: skip


def rollback(home: Path, *, by: str | None = None) -> Switch:
    """Serve again the model served before the last switch (recorded as a switch of its own)."""
    from cellmorphnet.runs.folders import resolve_run

    with Served(served_path(home)) as served:
        current = served.current()
        run, digest = served.rollback_target()
        run_dir = resolve_run(run, home)
        check_unchanged(run_dir, digest, run)
        return served.promote(run, run_dir, previous=(current.run, current.checkpoint_sha256), by=by,
                              action="rollback")  # fmt: skip
