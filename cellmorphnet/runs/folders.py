"""Run folders: finding them, locking them, the heartbeat, and reading a run's status.

A run folder holds ``config.json``, ``history.json``, ``checkpoints/{last,best}.pt``, ``train.log``
and ``heartbeat.json``. The training process rewrites the heartbeat every few seconds; ``status``
reads it (and the history) from any other process. A run is *running* only while its heartbeat is
fresh and, on the same machine, its process is alive.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellmorphnet import paths
from cellmorphnet._io import read_json, write_json
from cellmorphnet.errors import CellMorphNetError, ConfigError, RunError

HEARTBEAT = "heartbeat.json"
HISTORY = "history.json"
CONFIG = "config.json"
LOCK = ".lock"
HEARTBEAT_INTERVAL = 5.0  # seconds between heartbeat writes
HEARTBEAT_STALE = 30.0  # a running heartbeat older than this means the process is gone

FINAL_STATES = ("finished", "early-stopped", "interrupted", "crashed")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).exists() or (path / HEARTBEAT).exists()


def list_runs(home: Path | None = None) -> list[Path]:
    """Run folders under the home's ``runs/``, oldest first by the creation time in ``config.json``.

    (Not by file times: a resume rewrites ``config.json`` and must not make an old run the latest.)
    """
    root = paths.runs_dir(home)
    if not root.is_dir():
        return []

    def created(p: Path) -> str:
        try:
            return str(read_json(p / CONFIG).get("created", ""))
        except (OSError, ValueError):
            return ""

    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda p: (created(p), p.name))


PACKAGED = "bloodmnist"  # the run that ships inside the package (cellmorphnet/shipped/), usable right after install


def packaged_runs() -> dict[str, Path]:
    """The ready runs shipped with cellmorphnet, by name (read-only: they live in the installed package)."""
    from importlib import resources

    root = Path(str(resources.files("cellmorphnet") / "shipped"))
    if not root.is_dir():
        return {}
    return {p.name: p.resolve() for p in sorted(root.iterdir()) if p.is_dir() and is_run_dir(p)}


def is_packaged(run_dir: Path) -> bool:
    return Path(run_dir).resolve() in packaged_runs().values()


def output_dir(run_dir: Path, home: Path | None, *parts: str) -> Path:
    """Where a command writes what it makes from a run (``eval``, ``export``): inside the run folder, except for
    a shipped run, whose folder belongs to the installed package: then under the home's ``packaged/NAME``."""
    if is_packaged(run_dir):
        return (home or paths.home_dir()) / "packaged" / Path(run_dir).name / Path(*parts)
    return Path(run_dir) / Path(*parts)


LATEST = "latest"  # the word every command that takes a run accepts for the most recent run


def resolve_run(run: str | Path | None, home: Path | None = None) -> Path:
    """A run by path, by name under ``runs/``, a shipped run by name, or the latest run when ``run`` is None or
    ``latest``. Every command that takes a run resolves it here."""
    if run is None or str(run) == LATEST:
        runs = list_runs(home)
        if not runs:
            raise RunError("There are no runs yet.", hint="Start one with: cellmorphnet train --datasets sample")
        return runs[-1]
    p = Path(run).expanduser()
    for candidate in (p, paths.runs_dir(home) / str(run)):
        if candidate.is_dir() and is_run_dir(candidate):
            return candidate.resolve()
    shipped = packaged_runs()
    if str(run) in shipped:
        return shipped[str(run)]
    hint = f"cellmorphnet status lists the runs; give a name, a run folder or '{LATEST}'"
    if shipped:
        hint += f", or {', '.join(shipped)} (shipped with cellmorphnet)"
    raise RunError(f"No run '{run}'.", hint=hint + ".")


def check_run_name(name: str) -> str:
    """``name`` where it names one folder under ``runs/`` that ``resolve_run`` finds by it; else a ``ConfigError``."""
    if (not name.strip() or name in (LATEST, ".", "..") or name.startswith(".") or any(c in name for c in "/\\")
            or any(ord(c) < 32 for c in name)):  # fmt: skip
        raise ConfigError(f"Run name {name!r} is not one folder under the home's runs/ (no path, not hidden, not "
                          f"'{LATEST}').", hint="Give a plain name (lab-a-2026), or --run-dir for a folder "
                          "elsewhere.")  # fmt: skip
    return name


def new_run_dir(home: Path | None, name: str | None, datasets: list[str]) -> Path:
    root = paths.runs_dir(home)
    if name is not None:
        return root / check_run_name(name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "+".join(d.split(":")[0] if d.startswith("folder:") else d for d in datasets)[:40]
    base = root / f"{stamp}-{label}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


class RunLock:
    """An exclusive lock on a run folder, held while training; released by the OS if the process dies."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: fall back to the heartbeat
            hb = read_heartbeat(self.path.parent)
            if hb and _classify(hb)[0] == "running":
                self._refuse(hb)
        except OSError:
            os.close(self.fd)
            self.fd = None
            self._refuse(read_heartbeat(self.path.parent))
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _refuse(self, hb: dict | None) -> None:
        who = f" (process {hb['pid']} on {hb['host']})" if hb else ""
        raise RunError(
            f"The run folder {self.path.parent} is in use by another training process{who}.",
            hint="Watch it with: cellmorphnet status --watch; or train into another folder with --name.",
        )

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_heartbeat(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / HEARTBEAT
    try:
        return read_json(p)
    except (FileNotFoundError, ValueError):
        return None


class Heartbeat:
    """Rewrites ``heartbeat.json`` every ``interval`` seconds from a background thread.

    ``update(**fields)`` changes what the next write says (cheap: no I/O); ``close(state)`` writes
    the final state and stops the thread.
    """

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_INTERVAL, **fields: Any) -> None:
        self.path = run_dir / HEARTBEAT
        self.interval = interval
        self.fields: dict[str, Any] = {
            "state": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now_iso(),
            **fields,
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cellmorphnet-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.write()
        self._thread.start()
        return self

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.fields.update(fields)

    def write(self) -> None:
        with self._lock:
            data = {**self.fields, "updated": time.time(), "updated_iso": now_iso()}
        try:
            write_json(self.path, data)
        except OSError:  # a full disk must not kill training; the next beat retries
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def close(self, state: str, **fields: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)
        self.update(state=state, ended=now_iso(), **fields)
        self.write()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _classify(hb: dict[str, Any]) -> tuple[str, str | None]:
    """``(state, reason)`` from a heartbeat: a 'running' heartbeat that went stale means a crash."""
    state = hb.get("state", "unknown")
    if state != "running":
        return state, hb.get("error")
    age = time.time() - float(hb.get("updated", 0))
    same_host = hb.get("host") == socket.gethostname()
    if same_host and not _pid_alive(int(hb.get("pid", -1))):
        return "crashed", "the training process is gone without saying why (killed?)"
    if age > HEARTBEAT_STALE:
        return "crashed", f"no heartbeat for {age:.0f} s"
    return "running", None


def read_status(run_dir: Path) -> dict[str, Any]:
    """Everything ``cellmorphnet status RUN`` shows, as a JSON-ready dict."""
    from cellmorphnet.runs.record import RunRecord

    hb = read_heartbeat(run_dir) or {}
    try:
        record = RunRecord.load(run_dir)
    except CellMorphNetError:  # status shows what it can of a damaged or foreign run folder
        record = None
    try:
        history = read_json(run_dir / HISTORY) if (run_dir / HISTORY).exists() else {}
    except ValueError:
        history = {}
    state, reason = _classify(hb) if hb else ("unknown", "no heartbeat")
    planned = int(hb.get("epochs_planned") or (record.config.epochs if record else 0))
    done = len(history.get("train_loss", []))
    val_f1 = history.get("val_f1", [])
    best_i = max(range(len(val_f1)), key=lambda i: val_f1[i]) if val_f1 else None
    epoch_times = history.get("epoch_time", [])
    last_time = epoch_times[-1] if epoch_times else None
    eta = None
    if state == "running" and epoch_times:
        # The last epoch is the best guess: earlier ones may have trained only the head (much faster).
        mean_time = epoch_times[-1]
        frac = 0.0
        if hb.get("batches"):
            frac = min(1.0, hb.get("batch", 0) / hb["batches"])
        eta = max(0.0, (planned - done - frac) * mean_time)
    per_class = {}
    if best_i is not None and history.get("val_f1_per_class"):
        per_class = history["val_f1_per_class"][best_i]
    return {
        "run": str(run_dir),
        "name": run_dir.name,
        "state": state,
        "reason": reason,
        "datasets": list(record.config.datasets) if record else [],
        "parent": record.parent.to_dict() if record and record.parent else None,  # train --init: adapted from
        "reviewed_cells": record.adaptation.per_class if record and record.adaptation else None,  # on which cells
        "device": (record.resumed[-1]["device"] if record.resumed and "device" in record.resumed[-1]
                   else record.device) if record else None,
        "world_size": _world_size(hb, record),  # processes of the latest session (torchrun), 1 without
        "started_with": (record.distributed.world_size if record.distributed else 1) if record else None,
        "epochs_done": done,
        "epochs_planned": planned,
        "current_epoch": hb.get("epoch"),
        "batch": hb.get("batch"),
        "batches": hb.get("batches"),
        "best_val_f1": val_f1[best_i] if best_i is not None else None,
        "best_epoch": history["epoch"][best_i] if best_i is not None and history.get("epoch") else None,
        "train_acc": history["train_acc"][-1] if history.get("train_acc") else None,
        "val_acc": history["val_acc"][-1] if history.get("val_acc") else None,
        "last_epoch_time": last_time,
        "eta_seconds": eta,
        "per_class_f1_at_best": per_class,
        "curves": {k: history.get(k, []) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "val_f1")},
        "heartbeat_age": (time.time() - float(hb["updated"])) if hb.get("updated") else None,
    }


def _world_size(hb: dict[str, Any], record) -> int:
    """How many processes the run's latest session has (or had): its heartbeat's, else its record's."""
    if hb:
        return int(hb.get("world_size", 1))
    if record is None:
        return 1
    if record.resumed:
        return int(record.resumed[-1].get("world_size", 1))
    return record.distributed.world_size if record.distributed else 1
