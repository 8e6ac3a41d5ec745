"""Shared helpers for the benchmark scripts: machine description and result output."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # the build as installed, e.g. 2.14.1+cu130 (a CUDA build, run on the CPU)
        "torch_cuda_build": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def header(command: str) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
    }


def emit(result: dict, as_json: bool) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")


@contextmanager
def serving(run: str = "bloodmnist", *extra: str, timeout: float = 120, pids: list[int] | None = None) -> Iterator[str]:
    """``cellmorphnet serve RUN`` (the installed command) on a free local port, in a temporary home; yields its
    URL once ``/readyz`` answers, and stops it afterwards. ``pids``, if given, receives the server's process id."""
    import socket
    import subprocess
    import tempfile
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "cellmorphnet"
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([str(exe), "serve", run, "--port", str(port), "--device", "cpu", *extra],
                                env={**os.environ, "CELLMORPHNET_HOME": tmp}, stdout=subprocess.DEVNULL)  # fmt: skip
        if pids is not None:
            pids.append(proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"cellmorphnet serve exited with {proc.returncode}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cellmorphnet serve was not ready after {timeout} s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
