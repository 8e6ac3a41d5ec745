"""One place for terminal output: messages and progress on stderr, results on stdout.

Rich renders only when the stream is a terminal; otherwise plain lines. ``NO_COLOR`` is honoured
by rich itself.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
rank = 0  # in a torchrun job, this process's rank: only rank 0 shows messages, progress and results


def only_rank_zero(this_rank: int) -> None:
    """Silence every message, bar and result of a process other than a distributed job's rank 0 (errors that
    only it can report still come through ``errors``)."""
    global rank
    rank = this_rank
    err.quiet = out.quiet = this_rank != 0


def errors() -> Console:
    """Where an error is printed: stderr, even on a silenced rank (then prefixed with the rank by the caller)."""
    return err if rank == 0 else Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup, so scripts can parse it); rank 0's alone in a torchrun job."""
    if rank != 0:
        return
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]Warning:[/yellow] {message}")


def duration(seconds: float | None) -> str:
    """Seconds as ``m:ss`` or ``h:mm:ss`` (``—`` where unknown)."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@contextmanager
def progress(description: str, unit: str = "items") -> Iterator[Callable[[int, int | None], None]]:
    """Yield a ``callback(done, total)``: a rich bar on a terminal, plain lines (every 10%) otherwise."""
    if err.is_terminal:
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

    state = {"next": 0.0, "last": 0.0}

    def plain(done: int, total: int | None) -> None:
        now = time.monotonic()
        fmt = _human_bytes if unit == "bytes" else (lambda n: f"{n:,}")
        if total:
            frac = done / total
            if frac >= state["next"] or done == total:
                err.print(f"{description}: {fmt(done)} of {fmt(total)} ({frac:.0%})")
                state["next"] = min(1.0, int(frac * 10 + 1) / 10)
        elif now - state["last"] > 5:
            err.print(f"{description}: {fmt(done)}")
            state["last"] = now

    yield plain
