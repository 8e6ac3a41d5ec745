"""Adapting from the review page: the desk's job on another lab's reviewed cells, to a promoted model.

    python -m benchmarks.desk_adapt --json     # results/desk-adapt-DATE.json

``external/zheng2018-d1`` (the one use of that set for training, and only in benchmarks): k cells per type are put
in a case and reviewed with their true type, as a technologist would. The review desk's job (``serve.desk.Desk``,
what the page's Adapt button starts) then holds out a fifth of each type, adapts the served shipped model to the
rest with every default of ``train --init`` (replaying PBC when it is prepared in the home: ``--replay``), scores
the served and the new model on the held-out cells and the PBC reference images, and the new model is promoted.
Reported: the wall time to a promoted model and the agreement with the reviewers before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, header
from benchmarks.adapt import draw_picks, external_files, prepare_parent_data

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp"}


class _State:
    service = None


def run_once(home: Path, k: int, seed: int) -> dict:
    from cellmorphnet.reviews.store import ReviewStore
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.serve.desk import Desk
    from cellmorphnet.serve.service import ModelService

    shipped = runs.packaged_runs()[runs.PACKAGED]
    state = _State()
    state.service = ModelService(shipped, device="cpu").warm_up()
    store = ReviewStore(home / "reviews.sqlite", state.service.classes)
    picks = draw_picks({c: fs for c, fs in external_files().items() if c in store.classes}, k, seed)
    for t, files in picks.items():
        for f in files:
            cid = store.add_cell("d1", source=f.name, image_sha256=f"sha-{f.name}", cell_index=None, box=None,
                                 edge=False, crop=f.read_bytes(), crop_type=MEDIA.get(f.suffix.lower(), "image/png"),
                                 run="bloodmnist", checkpoint_sha256="-", predicted="neutrophil", confidence=0.5,
                                 probabilities={})  # fmt: skip
            store.review(cid, t, "benchmark")
    desk = Desk(home, store, lambda folder: ModelService(folder, device="cpu").warm_up(),
                served=("bloodmnist", shipped), device="cpu", watch=False)  # fmt: skip
    desk.state = state
    started = time.monotonic()
    desk.start_adapt(["d1"], "benchmark")
    while desk.job.state == "running":
        time.sleep(1)
    job = desk.job
    if job.state != "done":
        raise SystemExit(f"the job failed: {job.error}")
    trained = time.monotonic() - started
    desk.promote(job.run, "benchmark")
    promoted = time.monotonic() - started
    state.service.close()
    store.close()
    served, new = job.scores
    return {"k": k, "seed": seed, "cells": job.cells, "steps": job.steps, "job_s": round(trained, 1),
            "to_promoted_s": round(promoted, 1), "served": served, "new": new}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=20, help="reviewed cells per type")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000])
    ap.add_argument("--replay", action="store_true", help="prepare PBC in the home first, so the job replays it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = header("python -m benchmarks.desk_adapt " + " ".join(sys.argv[1:]))
    result["runs"] = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            if args.replay:
                prepare_parent_data(home)
            import os

            os.environ["CELLMORPHNET_HOME"] = str(home)
            result["runs"].append(run_once(home, args.k, seed))
            r = result["runs"][-1]
            print(f"k={args.k} seed={seed}: {r['to_promoted_s']} s to a promoted model; agreement on "
                  f"{r['cells']['held_out']} held-out cells {r['served']['agreement']:.3f} -> "
                  f"{r['new']['agreement']:.3f}; PBC reference {r['served']['reference_accuracy']:.3f} -> "
                  f"{r['new']['reference_accuracy']:.3f}", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
