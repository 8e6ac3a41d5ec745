"""Accuracy on this machine: one full training on the rebuilt BloodMNIST (PBC) arrays, then the test split.

    python -m benchmarks.accuracy --size 64 --json          # the default recipe (96 px input, 20 epochs)

Imports ../shared/data/bloodmnist-pbc (unverified: it is a rebuild, not the official file) into a
temporary home, prepares it, trains with cellmorphnet's own loop (train flags pass through) and
evaluates the best checkpoint on the test split with ``cellmorphnet eval``'s own report (one view; the
8-view average, eval's default, is reported beside it as ``test_accuracy_tta``): accuracy,
balanced accuracy, macro-F1, per-class F1, one-vs-rest AUC, ECE, the generalisation gap, wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import SHARED, emit, header

FILES = {28: "bloodmnist_pbc.npz", 64: "bloodmnist_pbc_64.npz"}


def bootstrap_ci(labels, pred, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the test accuracy (test images resampled with replacement)."""
    import numpy as np

    hits = (np.asarray(labels) == np.asarray(pred)).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), size=(rounds, len(hits)))].mean(1)
    return [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, choices=sorted(FILES))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--unfreeze-epochs", default="1,2")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--image-size", type=int, default=96, help="0: the data's own size")
    ap.add_argument("--augment", default="stain", choices=["stain", "basic"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ema", type=float, default=None, help="train --ema (default: the recipe's)")
    ap.add_argument("--mixup", type=float, default=None, help="train --mixup")
    ap.add_argument("--cutmix", type=float, default=None, help="train --cutmix")
    ap.add_argument("--augment-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="ablation only: change one field of the augmentation preset (no train flag), e.g. "
                         "grayscale=0.2; repeatable")
    ap.add_argument("--home", type=Path, default=None, help="keep the run here instead of a temporary folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import dataclasses

    from sklearn.metrics import accuracy_score, f1_score

    from cellmorphnet.data.fetch import fetch
    from cellmorphnet.data.prepare import prepare
    from cellmorphnet.evaluation.report import evaluate_run
    from cellmorphnet.runs.config import TrainConfig
    from cellmorphnet.runs.load import load_run_model, predict_split
    from cellmorphnet.training import augment
    from cellmorphnet.training.fit import fit

    result = header("python -m benchmarks.accuracy " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        fetch("bloodmnist", home=home, source=SHARED / "bloodmnist-pbc" / FILES[args.size], allow_unverified=True)
        prepare("bloodmnist", home=home, size=args.size)
        cfg = TrainConfig(
            datasets=["bloodmnist"], data_size=args.size, image_size=args.image_size or None, epochs=args.epochs,
            lr=args.lr,
            unfreeze_epochs=[int(v) for v in args.unfreeze_epochs.split(",")], label_smoothing=args.label_smoothing,
            augment=args.augment, seed=args.seed,
            **{k: getattr(args, k) for k in ("ema", "mixup", "cutmix") if getattr(args, k) is not None},
        ).validate()  # fmt: skip
        for item in args.augment_set:
            field, value = item.split("=", 1)
            augment.AUGMENTATIONS[args.augment] = dataclasses.replace(augment.AUGMENTATIONS[args.augment],
                                                                     **{field: float(value)})  # fmt: skip
        result["augment_settings"] = dataclasses.asdict(augment.AUGMENTATIONS[args.augment])

        def progress(kind, **data):
            if kind == "epoch_end":
                r = data["record"]
                line = f"epoch {r['epoch']}: val acc {r['val_acc']:.4f} f1 {r['val_f1']:.4f} "
                line += f"({r['epoch_time']:.0f} s, {r['images_per_s']:.0f} img/s)"
                print(line, file=sys.stderr, flush=True)

        start = time.perf_counter()
        summary = fit(cfg, home / "runs" / "accuracy", home=home, events=progress)
        train_wall = time.perf_counter() - start
        rm = load_run_model(home / "runs" / "accuracy", "best", "cpu")
        out = predict_split(rm, "test", home)["bloodmnist"]
        pred = out["probs"].argmax(1)
        classes = rm.record.taxonomy["local_classes"]["bloodmnist"]
        per_class = f1_score(out["labels"], pred, average=None, labels=list(range(len(classes))))
        report = evaluate_run(home / "runs" / "accuracy", home=home, device="cpu", tta=False)["datasets"]["bloodmnist"]
        tta = predict_split(rm, "test", home, tta=True)["bloodmnist"]["probs"].argmax(1)
        m = report["metrics"]
        result.update(
            test_balanced_accuracy=m["balanced_accuracy"], test_macro_auc_ovr=m["macro_auc_ovr"], test_ece=m["ece"],
            val_macro_f1=report["val_metrics"]["macro_f1"], generalisation_gap=report["generalisation_gap"],
            test_confusion_matrix=m["confusion_matrix"],
        )  # fmt: skip
        result.update(
            config=cfg.to_dict(),
            summary=summary,
            train_wall_time_s=round(train_wall, 1),
            best_epoch=rm.epoch,
            test_accuracy=float(accuracy_score(out["labels"], pred)),
            test_macro_f1=float(f1_score(out["labels"], pred, average="macro")),
            test_per_class_f1={c: round(float(f), 4) for c, f in zip(classes, per_class, strict=True)},
            test_n=int(len(pred)),
            test_accuracy_ci95=bootstrap_ci(out["labels"], pred),
            test_accuracy_tta=float(accuracy_score(out["labels"], tta)),
            test_macro_f1_tta=float(f1_score(out["labels"], tta, average="macro")),
            test_accuracy_tta_ci95=bootstrap_ci(out["labels"], tta),
        )
    print(f"test accuracy {result['test_accuracy']:.4f}, macro-F1 {result['test_macro_f1']:.4f}, "
          f"training {train_wall / 60:.1f} min", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
