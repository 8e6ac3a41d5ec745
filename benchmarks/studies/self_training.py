"""Does self-training on a lab's unreviewed cells lift an adaptation at k = 10 reviewed cells per type?

    python -m benchmarks.studies.self_training --json       # results/self-training-DATE.json

The k = 10 draws of ``benchmarks/adapt.py`` (the same seeded picks of ``external/zheng2018-d1``). For each draw
the rest is split in two halves per type (seeded). The default adaptation (``train --init`` on the picked
cells, replaying the parent's PBC training data) is scored on the whole rest, as the benchmark scores it. Then,
for each half: the other half plays the lab's unreviewed cells; the default adaptation classifies them (every
default of ``infer``), those it gives at least ``--threshold`` (calibrated) join the reviewed cells under their
predicted type, at most ``--cap`` of each type, the most confident first (0: no cap), and the parent is adapted
again on both; that model scores this half. Together the two halves score the whole rest, and no cell is ever
scored by a model that trained on it. Plain balanced accuracy (argmax over every class) over the types with at
least 5 cells left, as the benchmark's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit, header
from benchmarks.adapt import draw_picks, external_files, link_folder, prepare_parent_data


def balanced_accuracy(preds, truth: dict[Path, str]) -> tuple[float, dict[str, float]]:
    seen: dict[str, list[int]] = {}
    for p in preds:
        t = truth[Path(p.path)]
        seen.setdefault(t, [0, 0])
        seen[t][0] += 1
        seen[t][1] += p.predicted == t
    recall = {c: n_right / n for c, (n, n_right) in sorted(seen.items()) if n >= 5}
    return float(np.mean(list(recall.values()))), {c: round(r, 4) for c, r in recall.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--cap", type=int, default=20, help="pseudo-labelled cells kept per type (0: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet import api
    from cellmorphnet.inference import inference_options, predict_files
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.training.finetune import adapt

    result = header("python -m benchmarks.studies.self_training " + " ".join(sys.argv[1:]))
    result["rows"] = []
    files = external_files()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        prepare_parent_data(home)
        parent_dir = runs.packaged_runs()[runs.PACKAGED]
        for draw in range(args.draws):
            seed = 1000 * args.k + draw
            picked = draw_picks(files, args.k, seed)
            rest = {c: [f for f in fs if f not in picked[c]] for c, fs in files.items()}
            truth = {f: c for c, fs in rest.items() for f in fs}
            rng = np.random.default_rng(seed + 7)
            halves: list[dict[str, list[Path]]] = [{}, {}]
            for c, fs in rest.items():
                order = rng.permutation(len(fs))
                halves[0][c] = [fs[i] for i in sorted(order[: len(fs) // 2])]
                halves[1][c] = [fs[i] for i in sorted(order[len(fs) // 2 :])]
            work = Path(tmp) / f"draw{draw}"
            lab = link_folder(work / "lab", {c: fs for c, fs in picked.items() if fs})
            t = time.perf_counter()
            adapt(parent_dir, lab, work / "default", home=home, device="cpu")
            row = {"draw": draw, "seed": seed, "seconds_default": round(time.perf_counter() - t, 1)}
            rm = api.load_run(str(work / "default"), device="cpu")
            preds, _ = predict_files(rm, list(truth), inference_options(rm.record))
            row["default"], row["default_recall"] = balanced_accuracy(preds, truth)
            scored, row["pseudo"] = [], []
            for h in (0, 1):
                unreviewed = [f for fs in halves[1 - h].values() for f in fs]
                preds, _ = predict_files(rm, unreviewed, inference_options(rm.record))
                confident: dict[str, list[tuple[float, Path]]] = {}
                for p in preds:
                    if p.confidence is not None and p.confidence >= args.threshold and picked.get(p.predicted):
                        confident.setdefault(p.predicted, []).append((p.confidence, Path(p.path)))
                cells = {c: list(fs) for c, fs in picked.items() if fs}
                kept = right = 0
                for c, found in confident.items():
                    for _, f in sorted(found, key=lambda x: -x[0])[: args.cap or None]:
                        cells[c].append(f)
                        kept += 1
                        right += truth[f] == c
                t = time.perf_counter()
                adapt(parent_dir, link_folder(work / f"lab{h}", cells), work / f"self{h}", home=home, device="cpu")
                row["pseudo"].append({"kept": kept, "right": right, "of": len(unreviewed),
                                      "per_type": {c: len(fs) - len(picked[c]) for c, fs in cells.items()},
                                      "seconds": round(time.perf_counter() - t, 1)})  # fmt: skip
                rm_h = api.load_run(str(work / f"self{h}"), device="cpu")
                half = [f for fs in halves[h].values() for f in fs]
                scored += predict_files(rm_h, half, inference_options(rm_h.record))[0]
            row["self_trained"], row["self_trained_recall"] = balanced_accuracy(scored, truth)
            result["rows"].append(row)
            print(row, file=sys.stderr, flush=True)
    for key in ("default", "self_trained"):
        result[f"{key}_mean"] = round(float(np.mean([r[key] for r in result["rows"]])), 4)
    print({k: result[k] for k in ("default_mean", "self_trained_mean")}, file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
