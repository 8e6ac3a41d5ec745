"""What the test-time views cost: infer's default path on another lab's cells, timed per view setting.

    python -m benchmarks.views_cost [--repeats 3] [--json]      # results/views-cost-DATE.json

The shipped model with every default of ``infer`` (cell framing, stain normalisation and contrast), on the
300 images of ``external/zheng2018-d1``: ``inference.predict_files`` timed with ``--scale-views`` (3 crop
sides x 4 orientations), with the 8 flips and turns (the default), with those and ``--no-stain-contrast``,
and with one view; each run ``repeats`` times after a warm-up, alternating, in one process; the figure is
the median images/s. (Files before 2026-11-28's stain contrast timed paths without it.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks._common import SHARED, emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import dataclasses

    from cellmorphnet import inference
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model

    result = header("python -m benchmarks.views_cost " + " ".join(sys.argv[1:]))
    rm = load_run_model(runs.packaged_runs()[runs.PACKAGED], "best", "cpu")
    options = inference.inference_options(rm.record)
    files, _ = inference.collect_files([SHARED / "external" / "zheng2018-d1"])
    settings = {"scale views": {"scale_views": True}, "8 flips and turns": {},
                "8 flips and turns, --no-stain-contrast": {"stain_contrast": False},
                "one view (--no-tta)": {"tta": False}}  # fmt: skip

    def run(name: str) -> None:
        inference.predict_files(rm, files, dataclasses.replace(options, **settings[name]))

    for name in settings:
        run(name)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name in settings:
            start = time.perf_counter()
            run(name)
            rates[name].append(len(files) / (time.perf_counter() - start))
    result["images"] = len(files)
    result["images_per_s"] = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    for k, v in result["images_per_s"].items():
        print(f"{k}: {v} images/s", file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
