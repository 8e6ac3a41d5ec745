"""Issue 36: answers a lab can trust, measured on the library's own paths with the shipped model.

1. Batch invariance: the largest change of any probability of a cell classified alone and among others (PBC's 240
   test JPEGs one class folder at a time against all 240; each of 30 BCCD fields alone against all 30).
2. Zero-shot verdicts, no profile: the share of cells classified and the share of those right on PBC's JPEGs and on
   the other lab's cells (external/zheng2018-d1); erythroblasts per 100 classified white cells in BCCD's fields.
   The same with a lab profile made from d1's images without their labels, and today's former default (the set's
   stain and contrast measured on whatever was sent together) beside them.
3. Each signal's AUROC of right against wrong (confidence, typicality) and the risk-coverage curves (a PNG).
4. A conformal rule at 5% from k = 10 labelled d1 cells per type (six seeded draws, the adapt benchmark's seeds), on
   the d1 profile, scored on the rest: coverage against the promise, share classified, share right.
5. The time per image of the default path against the former default, in one run.

    python -m benchmarks.trust --json > docs/results/trust-DATE.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT, SHARED, emit, header

PBC_JPEGS = SHARED / "bloodmnist-pbc" / "test_images"
D1 = SHARED / "external" / "zheng2018-d1"
BCCD_ZIP = SHARED / "bccd" / "BCCD_Dataset-d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"
SEEDS = (0, 1, 2, 3, 4, 5)
K = 10


def _run(rm, files, options):
    from cellmorphnet.inference.pipeline import infer_files

    return infer_files(rm, files, options, top_k=len(rm.classes)).predictions


def _probs(preds, classes) -> dict:
    return {(str(p.source), p.cell.index if p.cell else 0): np.array([dict(p.top_k)[c] for c in classes])
            for p in preds if p.status == "ok"}  # fmt: skip


def _largest_change(a: dict, b: dict) -> float:
    return float(max(np.abs(a[k] - b[k]).max() for k in a))


def _bccd_fields(tmp: Path, n: int = 30) -> list[Path]:
    with zipfile.ZipFile(BCCD_ZIP) as z:
        names = z.namelist()
        stems = z.read(next(x for x in names if x.endswith("ImageSets/Main/test.txt"))).decode().split()[:n]
        for s in stems:
            (tmp / f"{s}.jpg").write_bytes(z.read(next(x for x in names if x.endswith(f"JPEGImages/{s}.jpg"))))
    return sorted(tmp.glob("*.jpg"))


def _truth(p) -> str:
    return Path(str(p.source)).parent.name


def _scores(preds, *, white_only: bool = False) -> dict:
    ok = [p for p in preds if p.status == "ok"]
    cl = [p for p in ok if p.verdict == "classified"]
    out = {"cells": len(ok), "classified": len(cl), "classified_share": round(len(cl) / max(len(ok), 1), 4),
           "classified_right": round(sum(p.predicted == _truth(p) for p in cl) / len(cl), 4) if cl else None,
           "all_right": round(sum(p.predicted == _truth(p) for p in ok) / max(len(ok), 1), 4),
           "reasons": {}}  # fmt: skip
    for p in ok:
        if p.verdict == "review":
            out["reasons"][p.review_reason] = out["reasons"].get(p.review_reason, 0) + 1
    if white_only:
        del out["classified_right"], out["all_right"]
        from cellmorphnet.data.taxonomy import WHITE_CELLS

        white = [p for p in cl if p.predicted in WHITE_CELLS]
        ery = sum(p.predicted == "erythroblast" for p in cl)
        out.update(classified_white=len(white), classified_erythroblasts=ery,
                   erythroblasts_per_100_white=round(100 * ery / max(len(white), 1), 2))
    return out


def _auroc(right: np.ndarray, score: np.ndarray) -> float | None:
    pos, neg = score[right], score[~right]
    if not len(pos) or not len(neg):
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return round(float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))), 4)


def _signals(preds) -> dict:
    ok = [p for p in preds if p.status == "ok" and p.typicality is not None]
    right = np.array([p.predicted == _truth(p) for p in ok])
    conf = np.array([p.confidence for p in ok])
    typ = np.array([p.typicality for p in ok])
    return {"confidence": _auroc(right, conf), "typicality": _auroc(right, typ),
            "verdict": _auroc(right, np.array([p.verdict == "classified" for p in ok], float)),
            "curves": {"confidence": _curve(right, conf), "typicality": _curve(right, typ)}}  # fmt: skip


def _curve(right: np.ndarray, score: np.ndarray) -> list[list[float]]:
    order = np.argsort(-score, kind="stable")
    acc = np.cumsum(right[order]) / np.arange(1, len(right) + 1)
    return [[round((i + 1) / len(right), 4), round(1 - float(acc[i]), 4)] for i in range(len(right))]


def _plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_signal in curves.items():
        for signal, pts in by_signal.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=f"{name}: {signal}", linestyle="-" if signal == "confidence" else "--")
    ax.set_xlabel("coverage (share of cells answered without a person)")
    ax.set_ylabel("risk (share of those answers wrong)")
    ax.set_title("Risk against coverage, shipped model, each image on its own")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _conformal(rm, files, options) -> dict:
    """k labelled cells per type calibrate the rule; the rest are scored; six seeded draws."""
    from cellmorphnet.inference.verdict import fit_conformal

    preds = _run(rm, files, options)
    ok = [p for p in preds if p.status == "ok"]
    probs = np.stack([np.array([dict(p.top_k)[c] for c in rm.classes]) for p in ok])
    y = np.array([rm.classes.index(_truth(p)) for p in ok])
    draws = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        cal = np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:K] for c in np.unique(y)
                              if (y == c).sum() > K])  # fmt: skip
        rest = np.setdiff1d(np.arange(len(y)), cal)
        c = fit_conformal(probs[cal], y[cal], 0.05)
        sets = c.sets(probs[rest])
        single = sets.sum(1) == 1
        draws.append({"seed": seed, "calibration_cells": len(cal), "qhat": round(c.qhat, 4),
                      "coverage": round(float(sets[np.arange(len(rest)), y[rest]].mean()), 4),
                      "classified_share": round(float(single.mean()), 4),
                      "classified_right": round(float((probs[rest].argmax(1) == y[rest])[single].mean()), 4)
                      if single.any() else None})  # fmt: skip
    keys = ("coverage", "classified_share", "classified_right")
    return {"alpha": 0.05, "k_per_type": K, "draws": draws,
            "mean": {k: round(float(np.mean([d[k] for d in draws if d[k] is not None])), 4) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "results" / "trust-risk-coverage.png")
    args = ap.parse_args()
    import torch

    from cellmorphnet.inference.lab import measure_lab
    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model

    torch.set_num_threads(2)
    rm = load_run_model(runs.packaged_runs()[runs.PACKAGED], device="cpu")
    default = inference_options(rm.record)
    former = inference_options(rm.record, stain_norm=True, stain_contrast=True)  # the set measured as sent
    result = header("python -m benchmarks.trust --json")
    pbc = sorted(PBC_JPEGS.glob("*/*.jpg"))
    d1 = sorted(p for p in D1.glob("*/*") if p.suffix == ".png")

    # 1. batch invariance
    whole = _probs(_run(rm, pbc, default), rm.classes)
    per_class = {}
    for c in sorted({p.parent.name for p in pbc}):
        per_class.update(_probs(_run(rm, [p for p in pbc if p.parent.name == c], default), rm.classes))
    tmp = Path(tempfile.mkdtemp())
    fields = _bccd_fields(tmp)
    together = _run(rm, fields, default)
    alone = [q for f in fields for q in _run(rm, [f], default)]
    result["batch_invariance"] = {
        "pbc_class_folders_against_all_240": _largest_change(per_class, whole),
        "bccd_field_alone_against_30": _largest_change(_probs(alone, rm.classes), _probs(together, rm.classes)),
        "former_default_pbc_platelets_alone_against_all": _largest_change(
            _probs(_run(rm, [p for p in pbc if p.parent.name == "platelet"], former), rm.classes),
            _probs(_run(rm, pbc, former), rm.classes)),
    }

    # 2. and 3. zero-shot, each image on its own; with a profile of d1; the former default
    t0 = time.perf_counter()
    pbc_preds = _run(rm, pbc, default)
    t_default = time.perf_counter() - t0
    t0 = time.perf_counter()
    pbc_former = _run(rm, pbc, former)
    t_former = time.perf_counter() - t0
    d1_preds = _run(rm, d1, default)
    values, cells = measure_lab(rm, d1, name="d1")
    with_profile = inference_options(rm.record, lab=values)
    d1_profile = _run(rm, d1, with_profile)
    result["zero_shot"] = {
        "pbc_jpegs": _scores(pbc_preds), "d1": _scores(d1_preds), "bccd_fields": _scores(together, white_only=True),
        "d1_with_profile_of_d1": _scores(d1_profile), "profile": {"cells": cells, **values.to_dict()},
        "former_default": {"pbc_jpegs": _scores(pbc_former), "d1": _scores(_run(rm, d1, former))},
        "targets": {"pbc": "classified >= 0.95, right >= 0.99", "d1": "right >= 0.93 at classified >= 0.40",
                    "bccd": "<= 1 erythroblast per 100 classified white cells"},
    }  # fmt: skip
    sig = {"pbc_jpegs": _signals(pbc_preds), "d1": _signals(d1_preds), "d1_with_profile": _signals(d1_profile)}
    _plot({k: v.pop("curves") for k, v in sig.items()}, args.plot)
    result["signals_auroc"] = sig
    result["risk_coverage_plot"] = str(args.plot.relative_to(ROOT))

    # 4. conformal from k labelled cells per type of d1, on the d1 profile
    result["conformal_d1_profile"] = _conformal(rm, d1, with_profile)

    # 5. time per image
    result["seconds_per_image"] = {"default": round(t_default / len(pbc), 4), "former_default": round(
        t_former / len(pbc), 4), "ratio": round(t_default / t_former, 3)}  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
