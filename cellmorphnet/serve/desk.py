"""The review desk's server side: adapting the served model to the lab's reviewed cells as a background job, and
switching the served model (promote, rollback) while the server runs.

One adaptation at a time. It takes the reviewed cells of the chosen cases, holds out a fifth of each type (the
cells neither model trained on), runs ``train --init``'s fine-tuning (``training.finetune.adapt``) on the rest
into a new run ``HOME/runs/desk-<time>``, then scores the served model and the new one on the held-out cells and
on the served run's reference PBC images (``evaluation.compare``). Nothing is served until an admin promotes it;
every switch is recorded in ``HOME/served.sqlite`` (``labs.served``), whoever makes it, and the server follows a
switch made from the command line within ``WATCH_S`` seconds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cellmorphnet.errors import CellMorphNetError, Conflict, InvalidData

HOLD_OUT = 0.2  # of each type's reviewed cells, scored and not trained on
WATCH_S = 3.0  # how often the server looks for a switch made elsewhere (lab promote, another server)
RETIRE_S = 150.0  # a replaced model is closed after this (requests that hold it finish first)
MAX_CASES = 100
log = logging.getLogger("cellmorphnet.serve")


@dataclass(frozen=True)
class Job:
    """The adaptation job as the page shows it."""

    id: int
    cases: tuple[str, ...]
    by: str | None
    started: float
    state: str = "running"  # running, done or failed
    phase: str = "selecting cells"
    step: int = 0
    steps: int = 0
    run: str | None = None  # the new run's name, once written
    error: str | None = None
    finished: float | None = None
    cells: dict[str, int] = field(default_factory=dict)  # trained on / held out
    scores: list[dict[str, Any]] = field(default_factory=list)  # evaluation.compare.RunScore.to_dict(), served first

    def to_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"id": self.id, "cases": list(self.cases), "by": self.by, "state": self.state, "phase": self.phase,
                "step": self.step, "steps": self.steps, "run": self.run, "error": self.error,
                "seconds": round(end - self.started, 1), "cells": self.cells, "scores": self.scores}  # fmt: skip


class Desk:
    """Owns the served model while the server runs. ``load(run_dir)`` builds a warmed-up ``ModelService``;
    ``state`` is the application's state (``create_app`` sets it), whose ``service`` is what every route uses."""

    def __init__(self, home: Path, store, load: Callable[[Path], Any], *, served: tuple[str, Path],
                 device: str = "cpu", adapt_steps: int | None = None, watch: bool = True) -> None:  # fmt: skip
        self.home, self.store, self._load = Path(home), store, load
        self.state = None
        self.served = served  # (name, folder) of what is served now
        self.device, self.adapt_steps = device, adapt_steps
        self._lock = threading.Lock()
        self._switching = threading.Lock()
        self.job: Job | None = None
        self._seen = self._latest_switch()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cellmorphnet-served", daemon=True)
        if watch:
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()

    # --- the served model ---------------------------------------------------------------------
    def _latest_switch(self) -> int | None:
        from cellmorphnet.labs.served import Served, served_path

        path = served_path(self.home)
        if not path.is_file():
            return None
        try:
            with Served(path, read_only=True) as s:
                cur = s.current()
        except CellMorphNetError:
            return None
        return None if cur is None else cur.id

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            latest = self._latest_switch()
            if latest != self._seen:
                try:
                    self.follow()
                except CellMorphNetError as e:
                    log.warning("Not switching models: %s", e.message)
                    self._seen = latest

    def follow(self, loaded: tuple[Path, Any] | None = None) -> tuple[str, Path]:
        """Serve what ``HOME/served.sqlite`` says is served now (a switch made here or elsewhere); ``loaded``: that
        run's folder and its service, already loaded."""
        from cellmorphnet.labs.served import served_run

        with self._switching:
            self._seen = self._latest_switch()
            name, run_dir = served_run(self.home)
            same = loaded is not None and Path(loaded[0]).resolve() == Path(run_dir).resolve()
            if loaded is not None and not same:  # another switch came first: what was loaded is not needed
                loaded[1].close()
            if Path(run_dir).resolve() != Path(self.served[1]).resolve():
                new = loaded[1] if same else self._load(run_dir)
                old, self.state.service = self.state.service, new
                # a class the new model gave (a lab's own, from an adaptation) can be reviewed from now on
                self.store.classes.extend(c for c in new.classes if c not in self.store.classes)
                self.served = (name, run_dir)
                log.info("Now serving %s.", name)
                retire = threading.Timer(RETIRE_S, old.close)
                retire.daemon = True  # never holds the server open at exit
                retire.start()
            return self.served

    def promote(self, run: str, by: str | None) -> dict[str, Any]:
        """Serve ``run`` (a run's name under HOME/runs, or a shipped one's: never a folder elsewhere on the server)."""
        from cellmorphnet.errors import NotFound, RunError
        from cellmorphnet.labs.served import promote

        if not run.strip() or any(c in run for c in "/\\") or run.startswith("."):
            raise InvalidData("Give a run's name (as GET /v1/adapt or cellmorphnet status shows it), not a path.")
        from cellmorphnet.runs.folders import resolve_run

        try:
            run_dir = resolve_run(run, self.home)
        except RunError as e:
            raise NotFound(e.message) from None
        return self._switch(run_dir, lambda: promote(self.home, run, by=by))

    def rollback(self, by: str | None) -> dict[str, Any]:
        from cellmorphnet.labs.served import Served, rollback, served_path
        from cellmorphnet.runs.folders import resolve_run

        with Served(served_path(self.home)) as served:
            target, _ = served.rollback_target()
        return self._switch(resolve_run(target, self.home), lambda: rollback(self.home, by=by))

    def _switch(self, run_dir: Path, record: Callable[[], Any]) -> dict[str, Any]:
        """Load ``run_dir`` first (a run that does not load is never recorded as served), then ``record()`` the switch
        and serve it."""
        try:
            new = self._load(run_dir)
        except InvalidData:
            raise
        except CellMorphNetError as e:  # a checkpoint that does not load, a run record that does not match...
            raise Conflict(f"{Path(run_dir).name} cannot be served: {e.message}", hint=e.hint) from None
        try:
            switch = record()
        except BaseException:
            new.close()
            raise
        self.follow(loaded=(run_dir, new))
        return switch.to_dict()

    def history(self) -> dict[str, Any]:
        from cellmorphnet.labs.served import Served, served_path

        switches = []
        if served_path(self.home).is_file():
            with Served(served_path(self.home), read_only=True) as s:
                switches = [x.to_dict() for x in s.history()]
        return {"run": self.served[0], "switches": switches}

    # --- adapting ---------------------------------------------------------------------------------
    def start_adapt(self, cases: list[str], by: str | None) -> Job:
        """Start adapting the served model to the reviewed cells of ``cases`` (``Conflict`` while one runs)."""
        known = {c["name"] for c in self.store.cases()}
        cases = list(dict.fromkeys(cases))
        if not cases or len(cases) > MAX_CASES:
            raise InvalidData(f"Choose between 1 and {MAX_CASES} cases to adapt on.")
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise InvalidData(f"There is no case '{unknown[0]}'.")
        with self._lock:
            if self.job is not None and self.job.state == "running":
                raise Conflict("An adaptation is already running.", hint="Wait for it to end (its progress is shown).")
            self.job = Job(id=(self.job.id + 1 if self.job else 1), cases=tuple(cases), by=by, started=time.time())
            job = self.job
        threading.Thread(target=self._adapt, args=(job,), name="cellmorphnet-adapt", daemon=True).start()
        return job

    def _update(self, **changes) -> None:
        with self._lock:
            self.job = replace(self.job, **changes)

    def _adapt(self, job: Job) -> None:
        try:
            self._adapt_steps(job)
        except CellMorphNetError as e:
            self._update(state="failed", error=e.message + (f" {e.hint}" if e.hint else ""), finished=time.time())
        except Exception as e:  # noqa: BLE001 - a bug: the job says so, the server goes on
            log.exception("The adaptation failed.")
            self._update(state="failed", error=f"{type(e).__name__}: {e}", finished=time.time())

    def _adapt_steps(self, job: Job) -> None:
        import numpy as np

        from cellmorphnet import paths
        from cellmorphnet.evaluation.compare import compare_runs
        from cellmorphnet.reviews.export import export
        from cellmorphnet.training.finetune import AdaptSettings, adapt, split_held_out

        store = self.store
        cells = [c for case in job.cases for c in store.cells(case) if c.reviewed in store.classes]
        if not cells:
            raise Conflict("The chosen cases have no reviewed cells to adapt on.")
        types = sorted({c.reviewed for c in cells})
        labels = np.array([types.index(c.reviewed) for c in cells])
        train, held = split_held_out(labels, HOLD_OUT, seed=0)
        self._update(cells={"train": len(train), "held_out": len(held)}, phase="fine-tuning")
        parent_name, parent_dir = self.served
        name = "desk-" + datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = paths.runs_dir(self.home) / name
        settings = AdaptSettings(new_classes=tuple(t for t in types if t not in self.state.service.classes),
                                 **({"steps": self.adapt_steps} if self.adapt_steps else {}))  # fmt: skip

        def events(kind: str, **info) -> None:
            if kind == "adapt_step":
                self._update(step=info["step"], steps=info["steps"])

        tmp = Path(tempfile.mkdtemp(prefix=".desk-", dir=self.home))
        try:
            export(store, tmp / "cells", only={cells[i].id for i in train})
            files = []
            if len(held):  # the held-out cells written the same way: class folders of their crops
                export(store, tmp / "held", only={cells[i].id for i in held})
                files = sorted(f for f in (tmp / "held").glob("*/*") if f.is_file())
            truths = [f.parent.name for f in files]
            adapt(parent_dir, tmp / "cells", run_dir, home=self.home, settings=settings, device=self.device,
                  events=events)  # fmt: skip
            self._update(run=name, phase="comparing")
            scores = compare_runs({parent_name: parent_dir, name: run_dir}, files, truths, reference_from=parent_dir,
                                  device=self.device)  # fmt: skip
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._update(state="done", phase="done", scores=[s.to_dict() for s in scores], finished=time.time())
