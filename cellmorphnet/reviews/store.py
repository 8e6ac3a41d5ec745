"""The review database: cells a lab has looked at, what the model said of each, and what the reviewers decided.

A technologist reviews the machine's pre-classification and confirms or reassigns each cell; those cells are the
labelled data that adapt a model to the lab (``train --init``). What people enter is never lost, so it lives in
SQLite (the standard library's ``sqlite3``, WAL journal, one file in the server's home), not in JSON:

- ``cases``: a named set of uploads (one slide, one patient sample), and when it was opened;
- ``cells``: one per white cell (a single-cell image, or a cell found in a field): the upload's name and
  SHA-256, the cell's index and box in it, its crop (PNG or the upload's own bytes), and the model's
  prediction (run, checkpoint digest, class, probabilities, and from schema 2 its verdict and review reason);
- ``reviews``: an append-only history per cell (class, reviewer, time). A cell's review is its latest row; an
  undo appends the row before it again (or ``NULL``: not reviewed), so two reviewers at once, or a review and
  its undo, all stay in the history.

Every write is one transaction: a killed server leaves the last committed state, never half a review. The file
carries a schema version (``PRAGMA user_version``) and is migrated forward on open, like the run record; a
newer one is refused with a clear message.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellmorphnet.errors import ConfigError, Conflict, InvalidData, NotFound
from cellmorphnet.runtime.database import Database, Stored, now

SCHEMA = 3
FILENAME = "reviews.sqlite"
MAX_NAME = 200  # characters of a case or reviewer name
# reviewed cells per type from which ``train --init`` adapts a model well: ten per type left another lab's remaining
# cells at 0.88-0.90 balanced accuracy, twenty at 0.93 (benchmarks/adapt.py); the review page and train say so
ENOUGH_PER_TYPE = 20

_MIGRATIONS = {  # from version N-1 to N
    1: """
        CREATE TABLE cases (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created TEXT NOT NULL
        );
        CREATE TABLE cells (
            id INTEGER PRIMARY KEY,
            case_id INTEGER NOT NULL REFERENCES cases(id),
            source TEXT NOT NULL,            -- the upload's name, as sent
            image_sha256 TEXT NOT NULL,      -- of the upload's bytes
            cell_index INTEGER,              -- in a field (1, 2, ...); NULL for a single-cell image
            x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,  -- its box in a field
            edge INTEGER NOT NULL DEFAULT 0, -- cut by the field's border
            crop BLOB NOT NULL,              -- the cell's image (PNG, or the upload's own bytes)
            crop_type TEXT NOT NULL,         -- its media type
            run TEXT NOT NULL,               -- the model that pre-classified it
            checkpoint_sha256 TEXT NOT NULL,
            predicted TEXT NOT NULL,
            confidence REAL NOT NULL,
            probabilities TEXT NOT NULL,     -- JSON: {class: probability}
            created TEXT NOT NULL,
            UNIQUE (case_id, image_sha256, cell_index)
        );
        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY,
            cell_id INTEGER NOT NULL REFERENCES cells(id),
            class TEXT,                      -- NULL: back to not reviewed (an undo)
            reviewer TEXT,
            created TEXT NOT NULL,
            action TEXT NOT NULL DEFAULT 'review'  -- review or undo
        );
        CREATE INDEX reviews_by_cell ON reviews (cell_id, id);
    """,
    2: """
        ALTER TABLE cells ADD COLUMN verdict TEXT;        -- classified or review; NULL: stored before verdicts
        ALTER TABLE cells ADD COLUMN review_reason TEXT;  -- why the model sent it to a person
    """,
    3: """
        CREATE TABLE fields (                -- a smear field's upload, once, so a cell can be shown in it
            image_sha256 TEXT PRIMARY KEY,   -- as cells.image_sha256
            data BLOB NOT NULL,
            media TEXT NOT NULL,
            created TEXT NOT NULL
        );
    """,
}


def _probabilities(text) -> dict[str, float]:
    """A cell's stored probabilities; {} where the database holds something else (it is read as input)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


def _text(row: sqlite3.Row, column: str) -> str | None:
    """A text column a database of an older schema (read, not migrated) may lack; anything but text reads as None."""
    value = row[column] if column in row.keys() else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Cell:
    """One stored cell with the model's prediction and its current review."""

    id: int
    case: str
    source: str
    image_sha256: str
    cell_index: int | None
    box: tuple[int, int, int, int] | None
    edge: bool
    run: str
    checkpoint_sha256: str
    predicted: str
    confidence: float
    probabilities: dict[str, float]
    created: str
    reviewed: str | None  # the current review's class (None: not reviewed)
    reviewer: str | None
    reviewed_at: str | None
    verdict: str | None = None  # the model's verdict when it was stored (None: stored before verdicts)
    review_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "case": self.case, "source": self.source, "image_sha256": self.image_sha256,
                "cell": self.cell_index, "box": list(self.box) if self.box else None, "edge": self.edge,
                "run": self.run, "checkpoint_sha256": self.checkpoint_sha256, "predicted": self.predicted,
                "confidence": self.confidence, "probabilities": self.probabilities, "created": self.created,
                "reviewed": self.reviewed, "reviewer": self.reviewer, "reviewed_at": self.reviewed_at,
                "verdict": self.verdict, "review_reason": self.review_reason}  # fmt: skip


# Unicode categories that are not printable text: controls (C0, DEL, C1), format characters (the direction
# overrides that make a name read backwards among them), lone surrogates, private use and unassigned code points
_NOT_TEXT = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def check_name(value: str | None, what: str, *, required: bool) -> str | None:
    """A case or reviewer name as stored: stripped, at most ``MAX_NAME`` characters of printable text (no control,
    format or direction-override character, no lone surrogate); a case name holds no '/' (it is one segment of a
    URL). ``InvalidData`` names what is wrong."""
    import unicodedata

    value = (value or "").strip()
    if not value:
        if required:
            raise InvalidData(f"The {what} is empty.")
        return None
    if len(value) > MAX_NAME or any(unicodedata.category(ch) in _NOT_TEXT for ch in value):
        raise InvalidData(f"The {what} must be at most {MAX_NAME} characters of printable text (no control or "
                          "direction characters).")  # fmt: skip
    if what == "case name" and ("/" in value or "\\" in value):
        raise InvalidData(f"A case name cannot hold '/' or '\\' ('{value}').",
                          hint="Use '-' instead, e.g. 2026-12-06.")
    return value


class ReviewStore(Stored):
    """The review database at ``path`` (created and migrated on open), usable from many threads.

    ``read_only`` (``reviews list`` / ``export``): the file must already be a review database; it is opened with
    SQLite's read-only mode and never changed, not even its journal mode. Either way, a file that is not ours
    (not SQLite, or another program's database) is refused before anything is written to it.
    """

    def __init__(self, path: Path, classes: list[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.classes = list(classes)  # what a review may say: the model's classes and the lab's own
        self.read_only = read_only
        self._file = Database(self.path, what="review database", schema=SCHEMA, migrations=_MIGRATIONS,
                              marker="reviews", read_only=read_only,
                              hint="Reviews are made in cellmorphnet serve's review view.")  # fmt: skip
        if read_only and self._file.found < 1:
            self._file.close()
            raise ConfigError(f"{self.path} has review schema {self._file.found}; open it once with cellmorphnet "
                              f"serve to bring it to {SCHEMA}.")  # fmt: skip
        # an older schema opened read-only reads as it is (what it lacks reads as None), without being changed
        self._db = self._file.db
        self._write = self._file.write

    @property
    def schema(self) -> int:
        return self._file.schema

    # --- cases and cells ---------------------------------------------------------------------------
    def case_id(self, name: str) -> int:
        """The case called ``name``, opened if new."""
        name = check_name(name, "case name", required=True)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO cases (name, created) VALUES (?, ?)", (name, now()))
            return db.execute("SELECT id FROM cases WHERE name = ?", (name,)).fetchone()[0]

    def cases(self) -> list[dict[str, Any]]:
        rows = self._db.execute("""
            SELECT c.name, c.created, COUNT(x.id) AS cells FROM cases c LEFT JOIN cells x ON x.case_id = c.id
            GROUP BY c.id ORDER BY c.id""").fetchall()
        out = []
        for r in rows:
            cells = self.cells(r["name"])
            out.append({"name": r["name"], "created": r["created"], "cells": r["cells"],
                        "reviewed": sum(c.reviewed is not None for c in cells)})  # fmt: skip
        return out

    def add_cell(self, case: str, *, source: str, image_sha256: str, cell_index: int | None,
                 box: tuple[int, int, int, int] | None, edge: bool, crop: bytes, crop_type: str, run: str,
                 checkpoint_sha256: str, predicted: str, confidence: float, probabilities: dict[str, float],
                 verdict: str | None = None, review_reason: str | None = None) -> int:  # fmt: skip
        """Store one cell of ``case`` (the same cell of the same image again: the stored one is kept); its id."""
        case_id = self.case_id(case)
        with self._write() as db:
            found = db.execute("SELECT id FROM cells WHERE case_id = ? AND image_sha256 = ? AND cell_index IS ?",
                               (case_id, image_sha256, cell_index)).fetchone()  # fmt: skip
            if found:
                return found[0]
            x0, y0, x1, y1 = box if box else (None, None, None, None)
            cur = db.execute(
                "INSERT INTO cells (case_id, source, image_sha256, cell_index, x0, y0, x1, y1, edge, crop, crop_type, "
                "run, checkpoint_sha256, predicted, confidence, probabilities, created, verdict, review_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (case_id, source, image_sha256, cell_index, x0, y0, x1, y1, int(edge), crop, crop_type, run,
                 checkpoint_sha256, predicted, float(confidence), json.dumps(probabilities), now(), verdict,
                 review_reason))  # fmt: skip
            return cur.lastrowid

    def _cell_rows(self, where: str, args: tuple) -> list[Cell]:
        rows = self._db.execute(f"""
            SELECT x.*, c.name AS case_name,
                   (SELECT class FROM reviews r WHERE r.cell_id = x.id ORDER BY r.id DESC LIMIT 1) AS reviewed,
                   (SELECT reviewer FROM reviews r WHERE r.cell_id = x.id ORDER BY r.id DESC LIMIT 1) AS reviewer,
                   (SELECT created FROM reviews r WHERE r.cell_id = x.id ORDER BY r.id DESC LIMIT 1) AS reviewed_at
            FROM cells x JOIN cases c ON c.id = x.case_id WHERE {where} ORDER BY x.id""", args).fetchall()
        return [Cell(r["id"], r["case_name"], r["source"], r["image_sha256"], r["cell_index"],
                     (r["x0"], r["y0"], r["x1"], r["y1"]) if r["x0"] is not None else None, bool(r["edge"]), r["run"],
                     r["checkpoint_sha256"], r["predicted"], r["confidence"], _probabilities(r["probabilities"]),
                     r["created"], r["reviewed"], r["reviewer"] if r["reviewed"] else None,
                     r["reviewed_at"] if r["reviewed"] else None, _text(r, "verdict"),
                     _text(r, "review_reason")) for r in rows]  # fmt: skip

    def cells(self, case: str | None = None) -> list[Cell]:
        """Every cell (of one case), in the order they were stored."""
        if case is None:
            return self._cell_rows("1", ())
        return self._cell_rows("c.name = ?", (case,))

    def cell(self, cell_id: int) -> Cell:
        found = self._cell_rows("x.id = ?", (cell_id,))
        if not found:
            raise NotFound(f"There is no cell {cell_id}.")
        return found[0]

    def crop(self, cell_id: int) -> tuple[bytes, str]:
        row = self._db.execute("SELECT crop, crop_type FROM cells WHERE id = ?", (cell_id,)).fetchone()
        if row is None:
            raise NotFound(f"There is no cell {cell_id}.")
        return bytes(row["crop"]), row["crop_type"]

    def add_field(self, image_sha256: str, data: bytes, media: str) -> None:
        """Keep a field's upload (once, whatever the cases that hold its cells)."""
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO fields (image_sha256, data, media, created) VALUES (?, ?, ?, ?)",
                       (image_sha256, data, media, now()))  # fmt: skip

    def field(self, image_sha256: str) -> tuple[bytes, str] | None:
        """A kept field's upload and media type; None where it was not kept (a database of schema 2 or older)."""
        try:
            row = self._db.execute("SELECT data, media FROM fields WHERE image_sha256 = ?", (image_sha256,)).fetchone()
        except sqlite3.OperationalError:  # no such table: an older schema, read as it is
            return None
        return None if row is None or not isinstance(row["data"], bytes) else (bytes(row["data"]), str(row["media"]))

    # --- reviews -----------------------------------------------------------------------------------
    def review(self, cell_id: int, cls: str, reviewer: str | None = None) -> Cell:
        """Confirm or reassign a cell: ``cls`` must be one of the store's classes."""
        if cls not in self.classes:
            raise InvalidData(f"'{cls}' is not a class here.", hint=f"The classes: {', '.join(self.classes)}.")
        reviewer = check_name(reviewer, "reviewer name", required=False)
        with self._write() as db:
            if db.execute("SELECT 1 FROM cells WHERE id = ?", (cell_id,)).fetchone() is None:
                raise NotFound(f"There is no cell {cell_id}.")
            db.execute("INSERT INTO reviews (cell_id, class, reviewer, created, action) VALUES (?, ?, ?, ?, 'review')",
                       (cell_id, cls, reviewer, now()))  # fmt: skip
        return self.cell(cell_id)

    def undo(self, cell_id: int, reviewer: str | None = None) -> Cell:
        """Take back a cell's latest review: the one before it is current again (appended, so history stays)."""
        reviewer = check_name(reviewer, "reviewer name", required=False)
        with self._write() as db:
            rows = db.execute("SELECT class, action FROM reviews WHERE cell_id = ? ORDER BY id",
                              (cell_id,)).fetchall()  # fmt: skip
            state: list[str | None] = []  # the stack of reviews an undo walks back through
            for r in rows:
                if r["action"] == "undo":
                    if state:
                        state.pop()
                else:
                    state.append(r["class"])
            if not state:
                raise Conflict(f"Cell {cell_id} has no review to undo.")
            previous = state[-2] if len(state) > 1 else None
            db.execute("INSERT INTO reviews (cell_id, class, reviewer, created, action) VALUES (?, ?, ?, ?, 'undo')",
                       (cell_id, previous, reviewer, now()))  # fmt: skip
        return self.cell(cell_id)

    def history(self, cell_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT class, reviewer, created, action FROM reviews WHERE cell_id = ? ORDER BY id",
                                (cell_id,)).fetchall()  # fmt: skip
        return [dict(r) for r in rows]


def store_path(home: Path) -> Path:
    return home / FILENAME


_CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # a folder name on every system


def is_class_name(name: str) -> bool:
    """Whether ``name`` can be a class: a folder name on every system (letters, digits, - and _, at most 40)."""
    return bool(_CLASS_NAME.fullmatch(name))


def check_class_name(name: str) -> str:
    """A lab's own class name (``serve --extra-class``): a folder name on every system."""
    name = name.strip()
    if not _CLASS_NAME.fullmatch(name):
        raise ConfigError(f"'{name}' is not a usable class name.",
                          hint="Letters, digits, - and _ (at most 40), starting with a letter or a digit.")  # fmt: skip
    return name
