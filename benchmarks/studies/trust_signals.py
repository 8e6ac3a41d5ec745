"""Per-cell signals for the verdict (issue 36): for each set and preprocessing path, every cell's 8 per-view logits
and its pooled features (mean over the views), with its true type where known. Written to one npz per set and
path under --out; ``benchmarks/trust.py`` reads the library's own path, this study the alternatives.

    python -m benchmarks.studies.trust_signals --out /tmp/trust
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


def prepared(rm, items, *, per_image: bool, stain_norm: bool, contrast: bool) -> list[np.ndarray]:
    """The arrays the library's prepare path gives: the set as one survey, or each item as a set of its own."""
    from cellmorphnet.inference import adaptation, prepare
    from cellmorphnet.inference.options import inference_options

    opts = inference_options(rm.record, stain_norm=stain_norm, stain_contrast=contrast if stain_norm else None,
                             tta=False)

    def one_view(arrays):
        lg, _ = forward(rm, arrays)
        return np.exp(lg[:, 0]) / np.exp(lg[:, 0]).sum(1, keepdims=True)

    if not per_image:
        _, loaded = prepare.prepare_set(items, opts, rm.classes, one_view, workers=2)
        return [x.array for x in loaded]
    old = adaptation.MIN_COLOUR_SET
    adaptation.MIN_COLOUR_SET = 1  # a set of one: its own stain
    try:
        out = []
        for it in items:
            _, loaded = prepare.prepare_set([it], opts, rm.classes, one_view, workers=1)
            out.append(next(iter(loaded)).array)
        return out
    finally:
        adaptation.MIN_COLOUR_SET = old


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--run", default="bloodmnist")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
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
    variants = {"set": dict(per_image=False, stain_norm=True, contrast=True),
                "img_plain": dict(per_image=True, stain_norm=False, contrast=False),
                "img_stain": dict(per_image=True, stain_norm=True, contrast=False)}  # fmt: skip
    for name, folder in (("pbcjpg", PBC_JPEGS), ("d1", D1)):
        files, labels = labelled(folder)
        for v, kw in variants.items():
            if only and f"{name}_{v}" not in only:
                continue
            save(f"{name}_{v}", prepared(rm, files, **kw), labels, files)
    fields = bccd_fields(args.out)
    for v, kw in variants.items():
        if only and f"bccd_{v}" not in only:
            continue
        if kw["per_image"]:
            items = [c for f in fields for c in find_cells([f], "auto", 1)[0]]
        else:
            items = find_cells(fields, "auto", 2)[0]
        items = [i for i in items if hasattr(i, "box")]
        save(f"bccd_{v}", prepared(rm, items, **kw), ["wbc"] * len(items), [f"{i.source}#{i.index}" for i in items])


if __name__ == "__main__":
    main()
