"""Checkpoints: everything needed to resume, written atomically and loaded as data (``weights_only``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cellmorphnet._io import atomic_path
from cellmorphnet.errors import CheckpointError

FORMAT = 2  # 1: "config" + "resolved" dicts; 2: "record" (cellmorphnet.runs.record.RunRecord) and "lr_plan"


def make(model, optimizer, scheduler, *, scaler, epoch: int, record, lr_plan, early_stopping: dict,
         history: dict) -> dict[str, Any]:  # fmt: skip
    return {
        "format": FORMAT,
        "epoch": epoch,  # epochs completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "lr_plan": lr_plan.to_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "early_stopping": early_stopping,
        "history": history,  # the history up to this epoch, so a resume never depends on history.json
        "record": record.to_dict(),  # what the run is, so a checkpoint alone rebuilds model and preprocessing
        "class_names": list(record.classes),
    }


def record_of(state: dict[str, Any]):
    """The run record a checkpoint carries (format 1 checkpoints are migrated)."""
    from cellmorphnet.runs.record import RunRecord

    if "record" in state:
        return RunRecord.from_dict(state["record"])
    if "config" in state and "resolved" in state:
        return RunRecord.from_dict({"config": state["config"], "resolved": state["resolved"]})
    raise CheckpointError("The checkpoint carries no run record; it was not written by cellmorphnet.")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and a job scheduler (or kill) stopping the run


@contextmanager
def defer_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C and SIGTERM while the block runs, then raise: an epoch's files are saved all or nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise Stopped(caught[0])


class Stopped(KeyboardInterrupt):
    """A stop signal: Ctrl-C (SIGINT) or SIGTERM. A KeyboardInterrupt, so every handler of Ctrl-C also sees it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Turn SIGTERM into ``Stopped`` (as Python already does for SIGINT) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint as data only; a file that would need code to load is refused."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except Exception as e:  # unpickling errors, truncated files, unsafe globals
        raise CheckpointError(f"{path} cannot be loaded safely ({type(e).__name__}: {e}).") from None
