"""Evaluate a run on a prepared split: metrics per dataset, the success criteria, JSON and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellmorphnet._io import atomic_path, write_json
from cellmorphnet.evaluation.metrics import classification_metrics, success_criteria
from cellmorphnet.runs.load import load_run_model, predict_split


def evaluate_run(
    run_dir: Path,
    *,
    home: Path | None = None,
    split: str = "test",
    datasets: list[str] | None = None,
    which: str = "best",
    device: str = "auto",
    accept_data_change: bool = False,
    tta: bool | None = None,
    progress=None,
) -> dict[str, Any]:
    """Metrics of ``which``.pt on ``split`` (and on val, for the generalisation gap), each dataset in its own labels.

    ``tta``: average over the 8 flips and quarter turns, as ``infer`` does (default: ``inference.DEFAULT_TTA``).

    The prepared data must be what the run trained on (see ``record.RunRecord.check_data``);
    with ``accept_data_change`` the differences are accepted and listed in the report.
    """
    rm = load_run_model(run_dir, which, device, accept_mismatch=accept_data_change)
    changes = rm.record.check_data(home, accept=accept_data_change, names=datasets)
    local = rm.record.taxonomy["local_classes"]
    splits = [split] if split == "val" else [split, "val"]
    if tta is None:
        from cellmorphnet.inference import DEFAULT_TTA

        tta = DEFAULT_TTA
    # ``progress(batches done, batches in all)`` over the splits: the splits not yet begun counted at this one's size
    offset, last = 0, {"n": 0}

    def step(i: int, n: int, left: int) -> None:
        last["n"] = n
        if progress is not None:
            progress(offset + i, offset + n * left)

    preds = {}
    for k, s in enumerate(splits):
        left = len(splits) - k
        preds[s] = predict_split(rm, s, home, datasets, tta=tta,
                                 progress=lambda i, n, left=left: step(i, n, left))  # fmt: skip
        offset += last["n"]
    report: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": str(rm.checkpoint),
        "epoch": rm.epoch,
        "split": split,
        "device": str(rm.device),
        "calibration": rm.record.calibration.to_dict() if rm.record.calibration else None,
        "tta": tta,
        "data_changes_accepted": changes + [f"config.json differs from the checkpoint: {m}" for m in
                                            rm.record_mismatch],
        "datasets": {},
    }
    for name, out in preds[split].items():
        classes = list(local[name])
        m = classification_metrics(out["labels"], out["probs"], classes)
        val = (
            m
            if split == "val"
            else classification_metrics(preds["val"][name]["labels"], preds["val"][name]["probs"], classes)
        )
        entry = {"metrics": m, "val_metrics": val}
        test_f1 = None if split == "val" else m["macro_f1"]
        if test_f1 is not None:
            entry["generalisation_gap"] = val["macro_f1"] - test_f1
        entry["criteria"] = success_criteria(
            val["macro_f1"], {c: v["f1"] for c, v in val["per_class"].items()}, test_f1
        )
        report["datasets"][name] = entry
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``metrics.json`` and the PNG plots into ``out_dir``; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", report)
    files = [out_dir / "metrics.json"]
    for name, entry in report["datasets"].items():
        files += plot_dataset(entry["metrics"], out_dir, f"{name}_{report['split']}")
    return files


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_dataset(m: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Confusion matrix (counts and row-normalised), per-class F1, and a reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = m["classes"]
    cm = np.asarray(m["confusion_matrix"], dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    files = []

    size = max(5.0, 0.6 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size), gridspec_kw={"wspace": 0.45})
    for ax, data, title, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "row-normalised", "{:.2f}")):
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix ({title})")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=axes, shrink=0.7)
    files.append(_save(fig, out_dir / f"{stem}_confusion.png"))
    plt.close(fig)

    f1 = [m["per_class"][c]["f1"] for c in classes]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(classes) + 2), 4))
    colours = ["#2b8a3e" if v >= 0.8 else "#e8a317" if v > 0.75 else "#c92a2a" for v in f1]
    ax.bar(range(len(classes)), f1, color=colours)
    ax.axhline(0.75, color="#c92a2a", linestyle="--", linewidth=1, label="minimum 0.75")
    ax.axhline(0.80, color="#2b8a3e", linestyle=":", linewidth=1, label="target 0.80")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1 (macro {m['macro_f1']:.3f})")
    for i, v in enumerate(f1):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    files.append(_save(fig, out_dir / f"{stem}_per_class_f1.png"))
    plt.close(fig)

    bins = [b for b in m["reliability_bins"] if b["n"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    width = m["reliability_bins"][0]["hi"] - m["reliability_bins"][0]["lo"]
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge", alpha=0.7,
           edgecolor="black", label="accuracy")  # fmt: skip
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="#c92a2a",
            label="mean confidence")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {m['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    files.append(_save(fig, out_dir / f"{stem}_reliability.png"))
    plt.close(fig)
    return files
