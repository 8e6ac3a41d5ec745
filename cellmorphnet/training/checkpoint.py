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

FORMAT = 1


def make(
    model, optimizer, scheduler, scaler, epoch: int, cfg, resolved: dict, early_stopping: dict, history: dict
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "epoch": epoch,  # epochs completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "early_stopping": early_stopping,
        "history": history,  # the history up to this epoch, so a resume never depends on history.json
        "config": cfg.to_dict(),
        "resolved": resolved,
        "class_names": list(resolved["classes"]),
    }


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


@contextmanager
def defer_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C while the block runs, then raise it: an epoch's files are saved all or nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


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
