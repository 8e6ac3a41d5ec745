"""The one output object of the CLI: messages and progress on stderr, a command's result on stdout, as people
read it or as ``--json``, and only rank 0's in a torchrun job.

Rich renders only when the stream is a terminal; otherwise plain lines. ``NO_COLOR`` is honoured by rich
itself. Commands use the one instance, ``output``: ``output.result(data, human)`` prints a result either way, so no
command writes its own ``if --json`` branch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console


class Output:
    """Where everything a command says goes. One instance (``output``), set up by the command line."""

    def __init__(self) -> None:
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False)
        self.rank = 0  # in a torchrun job, this process's rank: only rank 0 shows messages, progress and results

    def only_rank_zero(self, rank: int) -> None:
        """Silence every message, bar and result of a process other than a distributed job's rank 0 (errors that
        only it can report still come through ``errors``)."""
        self.rank = rank
        self.err.quiet = self.out.quiet = rank != 0

    def set_quiet(self, quiet: bool) -> None:
        """``--quiet``: no messages, warnings or progress on stderr; the result (stdout) and errors still come. Set
        on every invocation, so one command's choice never carries over to the next in the same process."""
        self.err.quiet = quiet or self.rank != 0

    def errors(self) -> Console:
        """Where an error is printed: stderr, even when quiet or on a silenced rank (then prefixed with the rank by
        the caller)."""
        return Console(stderr=True, highlight=False) if self.err.quiet else self.err

    def result(self, data: Any, human: Callable[[], None] | None = None, *, as_json: bool = False) -> None:
        """A command's result: ``data`` as JSON on stdout with ``--json`` (``as_json``), else what ``human`` prints
        (nothing without it)."""
        if as_json:
            self.print_json(data)
        elif human is not None:
            human()

    def print_json(self, data: Any) -> None:
        """Plain JSON on stdout (no rich markup, so scripts can parse it); rank 0's alone in a torchrun job."""
        if self.rank != 0:
            return
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        self.err.print(message)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/yellow] {message}")

    @staticmethod
    def duration(seconds: float | None) -> str:
        """Seconds as ``m:ss`` or ``h:mm:ss`` (``—`` where unknown)."""
        if seconds is None:
            return "—"
        seconds = int(seconds)
        h, rem = divmod(seconds, 3600)
        m, s = divmod(rem, 60)
        return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"

    @contextmanager
    def progress(self, description: str, unit: str = "items") -> Iterator[Callable[[int, int | None], None]]:
        """Yield a ``callback(done, total)``: a rich bar on a terminal; nothing otherwise (a log or a script reads
        the result, not the progress)."""
        err = self.err
        if err.is_terminal and not err.quiet:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = [TextColumn("{task.description}"), BarColumn()]
            if unit == "bytes":
                columns += [DownloadColumn(), TransferSpeedColumn()]
            else:
                columns += [MofNCompleteColumn()]
            columns.append(TimeRemainingColumn())
            with Progress(*columns, console=err, transient=False) as bar:
                task = bar.add_task(description, total=None)

                def update(done: int, total: int | None) -> None:
                    bar.update(task, completed=done, total=total)

                yield update
            return

        yield lambda done, total: None  # not a terminal (a log, a pipe, a script): no progress lines


output = Output()  # the CLI's one instance
