"""The one exception hierarchy of cellmorphnet.

Library code raises these; the CLI turns them into a one-line message plus a hint
(see ``cellmorphnet.cli.app``). Anything else that escapes is a bug.
"""

from __future__ import annotations


class CellMorphNetError(Exception):
    """Base class: an expected failure with a message for the user and an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DatasetNotFound(CellMorphNetError):
    """An unknown dataset name, or a dataset that is not fetched or prepared yet."""


class DownloadError(CellMorphNetError):
    """A server could not be reached, refused the request, or sent the wrong thing."""


class ChecksumMismatch(CellMorphNetError):
    """A file's digest differs from the one pinned in the registry."""


class InvalidData(CellMorphNetError):
    """A file or folder does not have the layout, keys, shapes or counts expected."""


class NotFound(InvalidData):
    """A named thing (a case, a cell) that does not exist (the server answers 404)."""


class Conflict(InvalidData):
    """An action the current state does not allow: nothing to undo, nothing to export (the server answers 409)."""


class LimitExceeded(CellMorphNetError):
    """A request asks for more than a documented limit allows (the server answers 413)."""


class TimeLimit(CellMorphNetError):
    """A request's work ran past its time limit (the server answers 503 and frees the worker)."""


class UnsafeArchive(CellMorphNetError):
    """An archive member would be written outside its target folder."""


class CheckpointError(CellMorphNetError):
    """A weights file or checkpoint is missing, unsafe, damaged or does not fit the model."""


class RunError(CellMorphNetError):
    """A run folder is missing, in use by another process, or inconsistent."""


class DataChanged(RunError):
    """The prepared data differs from what a run was trained on (seed, classes, source, content)."""


class ExportError(CellMorphNetError):
    """An export failed or its verification did not pass."""


class OutputError(CellMorphNetError):
    """A result file or folder cannot be written where asked (a file in the way, no permission, read-only)."""


class ConfigError(CellMorphNetError):
    """A configuration file or option value is invalid."""
