"""Adapting the shipped model to another lab with k of its labelled cells per type (``train --init``).

    python -m benchmarks.adapt --json      # results/adapt-DATE.json

On ``external/zheng2018-d1`` (the other lab's 300 white cells; the one use of that set for training, and only
here): for k = 0, 5, 10 and 20 labelled cells per white-cell type, three seeded draws each (a class with fewer
cells gives what it has; the picks are recorded in the result file), the shipped model is adapted to the
picked cells with every default of ``train --init`` (replaying its PBC training data, prepared here from
``../shared/data``), and the rest of the set is scored with every default of ``infer``: balanced accuracy over
the types with at least 5 cells left, with the plain argmax over every class and restricted to the five
white-cell types. k = 0 is the shipped model itself (the zero-shot figure). Also: the adapted model's accuracy
on PBC's test split (3,421 arrays, one view) against the parent's, and the adaptation's wall time.
``--no-replay`` measures the fallback for a parent whose training data is not prepared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED, emit, header

EXTERNAL = SHARED / "external" / "zheng2018-d1"
PBC_64 = SHARED / "bloodmnist-pbc" / "bloodmnist_pbc_64.npz"
FIVE = "basophil,eosinophil,lymphocyte,monocyte,neutrophil"


def external_files() -> dict[str, list[Path]]:
    """The other lab's cells by type folder."""
    return {c.name: sorted(p for p in c.iterdir() if p.is_file()) for c in sorted(EXTERNAL.iterdir()) if c.is_dir()}


def draw_picks(files: dict[str, list[Path]], k: int, seed: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)
    return {c: [fs[i] for i in sorted(rng.permutation(len(fs))[: min(k, len(fs))])] for c, fs in files.items()}


def link_folder(root: Path, files: dict[str, list[Path]]) -> Path:
    for c, fs in files.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for f in fs:
            (root / c / f.name).symlink_to(f)
    return root


def prepare_parent_data(home: Path) -> None:
    """The shipped model's training data (PBC at 64 px, from ../shared/data) prepared in ``home`` as it trained on
    it, so ``train --init`` replays it."""
    from typer.testing import CliRunner

    from cellmorphnet.cli.app import app

    for cmd in (["fetch", "bloodmnist", "--from", str(PBC_64), "--allow-unverified"],
                ["prepare", "bloodmnist", "--size", "64"]):
        r = CliRunner().invoke(app, ["--home", str(home), *cmd])
        if r.exit_code != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.output}")


def _score(rm, folder: Path) -> dict:
    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.inference import inference_options

    out = {}
    for label, classes in (("plain", None), ("five_types", FIVE)):
        r = evaluate_folder(rm, folder, inference_options(rm.record, classes=classes))
        m = r["metrics"]
        # where the errors are: with a dozen cells of a type left, one cell is 2 points of balanced accuracy
        confused = {f"{m['classes'][t]}->{m['classes'][p]}": n for t, row in enumerate(m["confusion_matrix"])
                    for p, n in enumerate(row) if n and t != p}  # fmt: skip
        out[label] = {"balanced_accuracy": r["balanced_accuracy_min5"], "accuracy": m["accuracy"],
                      "images": r["predicted"],
                      "recall": {c: round(m["per_class"][c]["recall"], 4) for c in r["per_class_images"]},
                      "confused": confused}  # fmt: skip
    return out


def _pbc_test(rm) -> float:
    import torch

    from cellmorphnet.data.loader import eval_transform

    d = np.load(PBC_64)
    images, labels = d["test_images"], d["test_labels"].reshape(-1)
    rec = rm.record
    order = [rec.classes.index(c) for c in rec.classes[: int(labels.max()) + 1]]  # the parent's first 8 classes
    hits = 0
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = eval_transform(torch.from_numpy(images[i : i + 256]), rec.image_size, rec.mean, rec.std)
            pred = rm.model(x.to(rm.device)).argmax(1).cpu().numpy()
            hits += int((np.array(order)[labels[i : i + 256]] == pred).sum())
    return hits / len(images)


def _conformal(rm, calibration: dict[str, list[Path]], rest: dict[str, list[Path]], alpha: float = 0.05) -> dict:
    """The lab's next reviewed cells (``calibration``, not trained on) calibrate split conformal on the adapted run,
    read with its own lab's values as ``infer`` reads them; scored on ``rest``: coverage against the promise, the
    share of cells whose set holds one type (classified) and the share of those right."""
    from cellmorphnet.inference.lab import lab_probs
    from cellmorphnet.inference.options import LabSet
    from cellmorphnet.inference.verdict import fit_conformal

    lab = LabSet.from_dict(rm.record.inference.lab_set or {})

    def read(files: dict[str, list[Path]]):
        items = [f for fs in files.values() for f in fs]
        labels = np.array([rm.classes.index(c) for c, fs in files.items() for _ in fs])
        probs = lab_probs(rm, items, lab)
        keep = [i for i, p in enumerate(probs) if p is not None]
        return np.stack([probs[i] for i in keep]), labels[keep]

    cp, cy = read(calibration)
    rp, ry = read(rest)
    c = fit_conformal(cp, cy, alpha)
    sets = c.sets(rp)
    single = sets.sum(1) == 1
    return {"alpha": alpha, "calibration_cells": len(cy), "rest_cells": len(ry), "qhat": round(c.qhat, 4),
            "coverage": round(float(sets[np.arange(len(ry)), ry].mean()), 4),
            "classified_share": round(float(single.mean()), 4),
            "classified_right": round(float((rp.argmax(1) == ry)[single].mean()), 4) if single.any() else None,
            "all_right": round(float((rp.argmax(1) == ry).mean()), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="0,5,10,20")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--distill", type=float, default=None, help="with --no-replay: the weight of the parent's answers")
    ap.add_argument("--freeze-lower", action=argparse.BooleanOptionalAction, default=None,
                    help="keep the backbone's lower half as the parent had it (default: only without replay)")
    ap.add_argument("--hold-out", type=float, default=None,
                    help="of each type's reviewed cells, held out for the calibration (0: none)")
    ap.add_argument("--conformal", action="store_true",
                    help="also: k more cells per type (not trained on) calibrate split conformal at 5%%; scored on "
                    "the rest")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import dataclasses

    from cellmorphnet import api
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.training.finetune import AdaptSettings, adapt

    result = header("python -m benchmarks.adapt " + " ".join(sys.argv[1:]))
    files = external_files()
    result.update(per_class=({c: len(f) for c, f in files.items()}), rows=[])
    settings = AdaptSettings(replay=False if args.no_replay else None)
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    if args.distill is not None:
        settings = dataclasses.replace(settings, distill=args.distill)
    if args.freeze_lower is not None:
        settings = dataclasses.replace(settings, freeze_lower=args.freeze_lower)
    if args.hold_out is not None:
        settings = dataclasses.replace(settings, hold_out=args.hold_out)
    result["settings"] = dataclasses.asdict(settings)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        if not args.no_replay:
            prepare_parent_data(home)
        parent_dir = runs.packaged_runs()[runs.PACKAGED]
        parent = api.load_run(runs.PACKAGED, device="cpu")
        result["parent_pbc_test_accuracy"] = round(_pbc_test(parent), 4)
        for k in [int(v) for v in args.ks.split(",")]:
            for draw in range(args.draws if k else 1):
                seed = 1000 * k + draw
                picked = draw_picks(files, k, seed) if k else {c: [] for c in files}
                rest = {c: [f for f in fs if f not in picked[c]] for c, fs in files.items()}
                calibration = None
                if args.conformal and k:  # the lab's next k reviewed cells per type, drawn from the rest
                    more = draw_picks(rest, k, seed + 500)
                    calibration = {c: fs for c, fs in more.items() if fs}
                    rest = {c: [f for f in fs if f not in more[c]] for c, fs in rest.items()}
                work = Path(tmp) / f"k{k}-{draw}"
                rest_dir = link_folder(work / "rest", rest)
                names = {c: [f.name for f in fs] for c, fs in picked.items()}
                row = {"k": k, "draw": draw, "seed": seed, "picked": names}
                if k == 0:
                    rm, seconds, summary = parent, 0.0, None
                else:
                    lab = link_folder(work / "lab", {c: fs for c, fs in picked.items() if fs})
                    t = time.perf_counter()
                    summary = adapt(parent_dir, lab, work / "run", home=home, settings=settings, device="cpu")
                    seconds = time.perf_counter() - t
                    rm = api.load_run(str(work / "run"), device="cpu")
                if calibration is not None:
                    row["conformal"] = _conformal(rm, calibration, {c: fs for c, fs in rest.items() if fs})
                    row["calibration_picked"] = {c: [f.name for f in fs] for c, fs in calibration.items()}
                row.update(seconds=round(seconds, 1), rest=_score(rm, rest_dir),
                           pbc_test_accuracy=round(_pbc_test(rm), 4),
                           replay=None if summary is None else summary["adaptation"]["replay"])  # fmt: skip
                result["rows"].append(row)
                print({k: v for k, v in row.items() if k != "picked"}, file=sys.stderr, flush=True)
                shutil.rmtree(work, ignore_errors=True)
    summary_rows = {}
    for k in sorted({r["k"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["k"] == k]
        summary_rows[k] = {
            "plain_mean": round(float(np.mean([r["rest"]["plain"]["balanced_accuracy"] for r in rows])), 4),
            "plain_min": round(float(np.min([r["rest"]["plain"]["balanced_accuracy"] for r in rows])), 4),
            "five_types_mean": round(float(np.mean([r["rest"]["five_types"]["balanced_accuracy"] for r in rows])), 4),
            "pbc_test_mean": round(float(np.mean([r["pbc_test_accuracy"] for r in rows])), 4),
            "seconds_max": max(r["seconds"] for r in rows),
        }
    conformal = [r["conformal"] for r in result["rows"] if "conformal" in r]
    if conformal:
        summary_rows["conformal"] = {key: round(float(np.mean([c[key] for c in conformal if c[key] is not None])), 4)
                                     for key in ("coverage", "classified_share", "classified_right", "all_right")}
    result["summary"] = summary_rows
    print(json.dumps(summary_rows, indent=1), file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
