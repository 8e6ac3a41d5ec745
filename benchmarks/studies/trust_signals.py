"""Per-cell signals for the verdict (issue 36): for each set and preprocessing path (``prepared``'s variants),
every cell's 8 per-view logits and its pooled features (mean over the views), with its true type where known,
written to one npz per set and path under --out; and each labelled set's plain balanced accuracy, printed.
``benchmarks/trust.py`` measures the library's own path; this study, the alternatives.

    python -m benchmarks.studies.trust_signals --out /tmp/trust --only d1_img_plain,d1_img_stain,...
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED

PBC_JPEGS = SHARED / "bloodmnist-pbc" / "test_images"
D1 = SHARED / "external" / "zheng2018-d1"
BCCD_ZIP = SHARED / "bccd" / "BCCD_Dataset-d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"


def forward(rm, arrays: list[np.ndarray], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, C) logits over the 8 views (temperature not applied) and (N, F) features averaged over the views."""
    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.model.prediction import oriented

    pol, model = rm.record.inference, rm.model
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(arrays), batch):
            x = torch.from_numpy(np.stack(arrays[i : i + batch]))
            x = eval_transform(x, pol.image_size, pol.mean, pol.std)
            ls, fs = [], []
            for v in oriented(x):
                f = model.forward_head(model.forward_features(v), pre_logits=True)
                fs.append(f)
                ls.append(model.get_classifier()(f))
            logits.append(torch.stack(ls, 1).numpy())
            feats.append(torch.stack(fs, 1).mean(1).numpy())
    return np.concatenate(logits), np.concatenate(feats)


def labelled(folder: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    return files, [p.parent.name for p in files]


def prepared(rm, items, variant: str) -> list[np.ndarray]:
    """The arrays the library's prepare path gives under one variant:

    - ``img_plain``: every default (each image on its own, no stain step);
    - ``img_stain``: each image's own nucleus density normalised; ``img_shrunk``: that density taken halfway (in
      log) to the training images'; ``img_lamp``: the training images' density, so only the lamp is corrected;
    - ``profile``: a lab profile measured on the same images (crop side, stain, contrast), as ``lab create`` makes;
      ``profile_nocontrast``: the same without the stain contrast.
    """
    import dataclasses
    from unittest import mock

    from cellmorphnet.inference import adaptation, prepare
    from cellmorphnet.inference.lab import measure_lab
    from cellmorphnet.inference.options import inference_options
    from cellmorphnet.vision import colour

    def one_view(arrays):
        lg, _ = forward(rm, arrays)
        return np.exp(lg[:, 0]) / np.exp(lg[:, 0]).sum(1, keepdims=True)

    if variant.startswith("profile"):
        lab, _ = measure_lab(rm, items, minimum=1)
        if variant == "profile_nocontrast":
            lab = dataclasses.replace(lab, contrast=None)
        _, loaded = prepare.prepare_set(items, inference_options(rm.record, lab=lab, tta=False), rm.classes, one_view)
        return [x.array for x in loaded]
    if variant == "img_plain":
        _, loaded = prepare.prepare_set(items, inference_options(rm.record, tta=False), rm.classes, one_view)
        return [x.array for x in loaded]
    ref = np.asarray(rm.record.inference.stain.nucleus_density)
    own = {"img_stain": lambda d: d, "img_shrunk": lambda d: np.sqrt(np.asarray(d) * ref),
           "img_lamp": lambda d: ref}[variant]  # fmt: skip
    opts = inference_options(rm.record, stain_norm=True, tta=False)
    median = colour.set_density
    out = []
    with mock.patch.object(adaptation, "MIN_COLOUR_SET", 1), mock.patch.object(  # a set of one: its own stain
            colour, "set_density", lambda ds: list(own(median(ds))) if ds else None):
        for it in items:
            _, loaded = prepare.prepare_set([it], opts, rm.classes, one_view, workers=1)
            out.append(next(iter(loaded)).array)
    return out


def balanced_accuracy(logits: np.ndarray, labels: list[str], classes: list[str], temperature: float) -> float:
    """Mean recall over the types with at least 5 images, plain argmax of the 8-view mean."""
    lg = logits / temperature
    p = np.exp(lg - lg.max(2, keepdims=True))
    pred = np.array(classes)[(p / p.sum(2, keepdims=True)).mean(1).argmax(1)]
    lab = np.array(labels)
    return float(np.mean([(pred[lab == c] == c).mean() for c in set(labels) if (lab == c).sum() >= 5]))


def bccd_fields(tmp: Path) -> list[Path]:
    out = tmp / "bccd"
    if not out.exists():
        with zipfile.ZipFile(BCCD_ZIP) as z:
            names = z.namelist()
            test = next(n for n in names if n.endswith("ImageSets/Main/test.txt"))
            stems = z.read(test).decode().split()
            out.mkdir(parents=True)
            for s in stems:
                n = next(n for n in names if n.endswith(f"JPEGImages/{s}.jpg"))
                (out / f"{s}.jpg").write_bytes(z.read(n))
    return sorted(out.glob("*.jpg"))


def analyse(out: Path, names: list[str]) -> dict[str, dict[str, float]]:
    """Each signal's AUROC of right against wrong on the saved sets ``names`` (``pbc_train`` must be saved too: the
    class means, the shared covariance and the neighbours come from it). Signals: the confidence, the share of the
    8 views agreeing with the answer, the energy, the Mahalanobis distance to the nearest class (and relative to
    the whole training set's), and the similarity to the 10th-nearest training cell."""
    from sklearn.metrics import roc_auc_score

    def load(name):
        z = np.load(out / f"{name}.npz")
        lg = z["logits"] / float(z["temperature"])
        views = np.exp(lg - lg.max(2, keepdims=True))
        views /= views.sum(2, keepdims=True)
        return lg, views, z["feats"], np.array(z["labels"]), list(z["classes"])

    _, _, feats, labels, classes = load("pbc_train")
    y = np.array([classes.index(c) for c in labels])
    mu = np.stack([feats[y == c].mean(0) for c in range(len(classes))])
    resid = feats - mu[y]
    cov = resid.T @ resid / len(feats)
    ridge = 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
    prec, prec_all = np.linalg.inv(cov + ridge), np.linalg.inv(np.cov(feats.T) + ridge)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    result = {}
    for name in names:
        lg, views, f, lab, _ = load(name)
        p = views.mean(1)
        pred = p.argmax(1)
        right = np.array(classes)[pred] == lab
        d = np.stack([np.einsum("ij,jk,ik->i", f - m, prec, f - m) for m in mu], 1)
        d_all = np.einsum("ij,jk,ik->i", f - feats.mean(0), prec_all, f - feats.mean(0))
        mean_logits = lg.mean(1)
        energy = np.log(np.exp(mean_logits - mean_logits.max(1, keepdims=True)).sum(1)) + mean_logits.max(1)
        knn = np.sort((f / np.linalg.norm(f, axis=1, keepdims=True)) @ unit.T, 1)[:, -10]
        signals = {"confidence": p.max(1), "view_agreement": (views.argmax(2) == pred[:, None]).mean(1),
                   "energy": energy, "mahalanobis": -d.min(1), "relative_mahalanobis": -(d.min(1) - d_all),
                   "knn_similarity": knn}  # fmt: skip
        both = 0 < right.sum() < len(right)  # an AUROC needs right and wrong answers
        result[name] = {k: round(float(roc_auc_score(right, v)), 3) for k, v in signals.items()} if both else {}
    return result


def rules(out: Path, names: list[str], run) -> dict[str, dict[str, str]]:
    """The verdict rule (``inference.verdict``, with the run's trust reference) on the saved sets, and the same with
    other sets of rare types: the share classified, and of those the share right (for BCCD's unlabelled white
    cells: erythroblasts per 100 classified white cells)."""
    from cellmorphnet.inference import verdict as v
    from cellmorphnet.runs import trust

    ref = trust.load(run, 8)
    choices = {"kept": v.RARE_TYPES, "with platelet": v.RARE_TYPES | {"platelet"},
               "without basophil": v.RARE_TYPES - {"basophil"}}  # fmt: skip
    result: dict[str, dict[str, str]] = {}
    for name in names:
        z = np.load(out / f"{name}.npz")
        lg = z["logits"] / float(z["temperature"])
        p = np.exp(lg - lg.max(2, keepdims=True))
        p = (p / p.sum(2, keepdims=True)).mean(1)
        classes, labels = list(z["classes"]), np.array(z["labels"])
        pred, conf, typ = np.array(classes)[p.argmax(1)], p.max(1), ref.typicality(z["feats"])
        for label, rare in choices.items():
            ok = np.array([v.verdict(predicted=q, confidence=c, cell_found=True, typicality=t,
                                     marks=(ref.typical, ref.home), rare_types=rare)[0] == v.CLASSIFIED
                           for q, c, t in zip(pred, conf, typ, strict=True)])  # fmt: skip
            if labels[0] == "wbc":
                white = np.isin(pred[ok], ["basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"])
                per_100 = 100 * (pred[ok] == "erythroblast").sum() / max(white.sum(), 1)
                said = f"{ok.mean():.1%} classified, {per_100:.1f} erythroblasts per 100 white"
            else:
                said = f"{ok.mean():.1%} classified, {(pred[ok] == labels[ok]).mean():.1%} of them right"
            result.setdefault(name, {})[label] = said
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--run", default="bloodmnist")
    ap.add_argument("--only", default="")
    ap.add_argument("--analyse", default="", help="print each signal's AUROC on these saved sets (comma-separated)")
    ap.add_argument("--rules", default="", help="print the verdict rule's figures on these saved sets, and with "
                    "other rare types")  # fmt: skip
    args = ap.parse_args()
    if args.analyse or args.rules:
        import json

        from cellmorphnet.runs import folders

        found = analyse(args.out, args.analyse.split(",")) if args.analyse else rules(
            args.out, args.rules.split(","), folders.resolve_run(args.run))  # fmt: skip
        print(json.dumps(found, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from cellmorphnet.inference.cells import find_cells
    from cellmorphnet.runs import folders
    from cellmorphnet.runs.load import load_run_model

    torch.set_num_threads(2)
    rm = load_run_model(folders.resolve_run(args.run))
    only = set(args.only.split(",")) if args.only else None

    def save(name, arrays, labels, paths):
        lg, ft = forward(rm, arrays)
        if labels[0] != "wbc":
            print(name, "balanced accuracy", round(balanced_accuracy(lg, labels, rm.classes, rm.record.temperature), 3),
                  flush=True)  # fmt: skip
        np.savez_compressed(args.out / f"{name}.npz", logits=lg, feats=ft, labels=np.array(labels),
                            paths=np.array([str(p) for p in paths]), temperature=rm.record.temperature,
                            classes=np.array(rm.classes))
        print(name, len(arrays), flush=True)

    for split in ("train", "val"):
        if only and split not in only:
            continue
        z = np.load(SHARED / "bloodmnist-pbc" / "bloodmnist_pbc_64.npz")
        labels = [rm.classes[int(i)] for i in z[f"{split}_labels"].ravel()]
        save(f"pbc_{split}", list(z[f"{split}_images"]), labels, range(len(labels)))
    variants = ("img_plain", "img_stain", "img_shrunk", "img_lamp", "profile_nocontrast", "profile")
    for name, folder in (("pbcjpg", PBC_JPEGS), ("d1", D1)):
        files, labels = labelled(folder)
        for v in variants:
            if only and f"{name}_{v}" not in only:
                continue
            save(f"{name}_{v}", prepared(rm, files, v), labels, files)
    fields = bccd_fields(args.out)
    for v in variants:
        if only and f"bccd_{v}" not in only:
            continue
        if v.startswith("img"):
            items = [c for f in fields for c in find_cells([f], "auto", 1)[0]]
        else:
            items = find_cells(fields, "auto", 2)[0]
        items = [i for i in items if hasattr(i, "box")]
        save(f"bccd_{v}", prepared(rm, items, v), ["wbc"] * len(items), [f"{i.source}#{i.index}" for i in items])


if __name__ == "__main__":
    main()
