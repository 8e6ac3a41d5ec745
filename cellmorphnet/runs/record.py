"""The run record: one typed, versioned description of what a run is, read and written here only.

Training writes it once into ``config.json`` (and into every checkpoint); ``eval``, ``infer``,
``export``, ``status`` and ``--resume`` rebuild the model, its preprocessing and its data from it,
and compare it with what they load. No torch import here, so ``status`` stays instant.

Schema history:
- 1 (cellmorphnet 0.1.0.dev0 before the record): ``{"config", "resolved", "versions", "created"}``
  with the details under ``resolved``; read by ``from_dict`` and migrated.
- 2: this dataclass, flat, with the prepare parameters and content digests of every dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmorphnet._io import read_json, write_json
from cellmorphnet.errors import DataChanged, RunError
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.runs.parts import Adaptation, Calibration, Distributed, Parent
from cellmorphnet.vision.colour import StainReference  # (a colour measurement; the record keeps it)

SCHEMA = 2
CONFIG_FILE = "config.json"
REFERENCE_FILE = "reference_images.npz"  # a few real validation images, for export checks away from the cache
REFERENCE_IMAGES = 64  # how many


@dataclass(frozen=True)
class InferencePolicy:
    """How a new full-size image becomes what the network saw in training (see ``inference``)."""

    dataset: str  # the dataset whose preprocessing is rebuilt (the run's first)
    centre_crop_px: int | None  # a centre square of this many pixels (PBC/BloodMNIST: 200), or None
    centre_crop_fraction: float  # else this fraction of the shorter side (1.0: the whole square)
    resize_chain: list[int]  # the bicubic resizes prepare made, e.g. [28, 64] for the sample
    resize: str  # the resize filter of that chain
    image_size: int  # the network's input size
    mean: list[float]  # normalisation, from the model's timm config
    std: list[float]
    crop: str = "centre"  # "cell": centred on the white cell found in each image (see cellfinder); "centre"
    nucleus_fraction: float | None = None  # median nucleus side / crop side of the training images
    colour: dict[str, list[float]] | None = None  # training images' CIELAB mean and std ("mean", "std")
    stain: StainReference | None = None  # the training images' stain (stain normalisation and contrast)
    # an adapted run (train --init): the set-level values of the lab's cells it trained on ("side", "stain",
    # "contrast"), used for every set in place of the set's own (inference.prepare.prepare_set)
    lab_set: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InferencePolicy:
        return cls(
            dataset=str(d["dataset"]),
            centre_crop_px=None if d.get("centre_crop_px") is None else int(d["centre_crop_px"]),
            centre_crop_fraction=float(d.get("centre_crop_fraction", 1.0)),
            resize_chain=[int(s) for s in d["resize_chain"]],
            resize=str(d.get("resize", "bicubic")),
            image_size=int(d["image_size"]),
            mean=[float(v) for v in d["mean"]],
            std=[float(v) for v in d["std"]],
            crop=str(d.get("crop", "centre")),
            nucleus_fraction=None if d.get("nucleus_fraction") is None else float(d["nucleus_fraction"]),
            colour=d.get("colour"),
            stain=StainReference.from_dict(d["stain"]) if d.get("stain") else None,
            lab_set=d.get("lab_set"),
        )

    def with_crop(self, crop: str) -> InferencePolicy:
        """``cell`` (where the run measured its framing) or ``centre`` (the exact geometry of the training data)."""
        if crop == "cell" and self.nucleus_fraction is None:
            from cellmorphnet.errors import ConfigError

            raise ConfigError("This run has no framing measurement, so it can only crop at the centre.",
                              hint="Use --crop centre, or retrain with this version of cellmorphnet.")  # fmt: skip
        return dataclasses.replace(self, crop=crop)

    def with_crop_fraction(self, fraction: float) -> InferencePolicy:
        return dataclasses.replace(self, centre_crop_fraction=fraction, centre_crop_px=None, crop="centre")


@dataclass(frozen=True)
class DatasetRecord:
    """What one dataset was when the run trained on it (from its prepared manifest)."""

    name: str  # registry name or folder:PATH
    size: int  # the prepared size read
    checksum: str  # the source's checksum or fingerprint
    verified: bool  # whether the source matched the registry's pins
    classes: list[str]  # local class names, in label order
    preprocessing: dict[str, Any]  # how prepare made the images
    counts: dict[str, int]  # images per split
    params: dict[str, Any] | None = None  # prepare parameters (size, seed, options); None in schema 1 runs
    content_digest: str | None = None  # sha256 over the prepared arrays; None where the manifest has none

    @classmethod
    def from_manifest(cls, name: str, size: int, m: dict[str, Any]) -> DatasetRecord:
        return cls(
            name=name,
            size=int(size),
            checksum=str(m["source"]["checksum"]),
            verified=bool(m["source"]["verified"]),
            classes=list(m["classes"]),
            preprocessing=dict(m.get("preprocessing", {})),
            counts={s: int(c["total"]) for s, c in m.get("counts", {}).items()},
            params=m.get("params"),
            content_digest=m.get("content_digest"),
        )

    def differences(self, now: DatasetRecord) -> list[str]:
        """What changed between this record and the data as prepared now, in words."""
        out = []
        if now.checksum != self.checksum:
            out.append(f"source checksum {_short(self.checksum)} → {_short(now.checksum)}")
        if now.classes != self.classes:
            if sorted(now.classes) == sorted(self.classes):
                out.append("the same classes in another label order")
            else:
                gone = [c for c in self.classes if c not in now.classes]
                new = [c for c in now.classes if c not in self.classes]
                out.append(
                    "classes " + ", ".join([*(f"-{c}" for c in gone), *(f"+{c}" for c in new)])
                    if gone or new else "classes renamed"
                )  # fmt: skip
        if self.params is not None and now.params is not None and now.params != self.params:
            keys = sorted(set(self.params) | set(now.params))
            out += [f"prepare {k} {self.params.get(k)} → {now.params.get(k)}" for k in keys
                    if self.params.get(k) != now.params.get(k)]  # fmt: skip
        if now.counts != self.counts:
            out.append(f"split sizes {_counts(self.counts)} → {_counts(now.counts)}")
        if (
            not out
            and self.content_digest
            and now.content_digest
            and self.content_digest != now.content_digest
        ):
            out.append("the prepared images differ")
        return out

    def restore_command(self) -> str:
        """The ``prepare`` command that makes this dataset's arrays again as the run saw them."""
        params = self.params or {}
        words = ["cellmorphnet prepare", self.name, f"--size {self.size}"]
        if params.get("seed") is not None:
            words.append(f"--seed {params['seed']}")
        for key, value in params.items():  # prepare's options are flags (LISC's --include-mixt)
            if key not in ("size", "seed") and value is True:
                words.append(f"--{key.replace('_', '-')}")
        return " ".join([*words, "--force"])


def _short(checksum: str) -> str:
    return checksum if len(checksum) <= 20 else checksum[:20] + "…"


def _counts(c: dict[str, int]) -> str:
    return "/".join(str(c.get(s, 0)) for s in ("train", "val", "test"))


def _part(kind, d: dict[str, Any] | None):
    return kind.from_dict(d) if d else None


@dataclass
class RunRecord:
    """Everything eval, infer, export, status and resume need to rebuild what a run trained."""

    config: TrainConfig  # the resolved training configuration
    device: str  # where it trained
    precision: str  # fp32, bf16 or fp16
    image_size: int  # the network's input size
    classes: list[str]  # the model's outputs, in order
    taxonomy: dict[str, Any]  # data.taxonomy.Taxonomy.to_dict(): each dataset's labels onto the classes
    mean: list[float]  # input normalisation
    std: list[float]
    datasets: dict[str, DatasetRecord]  # what each dataset was, in training order
    steps_per_epoch: int  # optimizer steps per epoch
    inference: InferencePolicy  # how new images are preprocessed
    versions: dict[str, str] = field(default_factory=dict)  # package versions that trained it
    created: str = ""  # ISO time the run started
    resumed: list[dict[str, Any]] = field(default_factory=list)  # each resume: when, and settings it changed
    calibration: Calibration | None = None  # temperature scaling (None: not calibrated)
    parent: Parent | None = None  # train --init: the run adapted from
    adaptation: Adaptation | None = None  # train --init: the lab's cells, new classes, replay, held-out scores
    distributed: Distributed | None = None  # under torchrun (None: one process)
    schema: int = SCHEMA

    @property
    def temperature(self) -> float:
        """Logits are divided by this before the softmax everywhere (1.0 where the run was not calibrated)."""
        return float(self.calibration.temperature) if self.calibration else 1.0

    @property
    def data_sizes(self) -> dict[str, int]:
        return {name: d.size for name, d in self.datasets.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "created": self.created,
            "config": self.config.to_dict(),
            "device": self.device,
            "precision": self.precision,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "taxonomy": self.taxonomy,
            "mean": list(self.mean),
            "std": list(self.std),
            "datasets": {n: dataclasses.asdict(d) for n, d in self.datasets.items()},
            "steps_per_epoch": self.steps_per_epoch,
            "inference": self.inference.to_dict(),
            "versions": {k: str(v) for k, v in self.versions.items()},
            "resumed": list(self.resumed),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            **({"parent": self.parent.to_dict()} if self.parent else {}),
            **({"adaptation": self.adaptation.to_dict()} if self.adaptation else {}),
            **({"distributed": self.distributed.to_dict()} if self.distributed else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Read any schema this version knows; refuse a newer one with a clear message."""
        schema = int(d.get("schema", 1))
        if schema > SCHEMA:
            raise RunError(
                f"This run was written by a newer cellmorphnet (run record schema {schema}; this one reads up to "
                f"{SCHEMA}).",
                hint="pip install --upgrade cellmorphnet",
            )
        try:
            if schema == 1:
                d = _migrate_v1(d)
            return cls(
                config=TrainConfig.from_dict(d["config"]),
                device=str(d["device"]),
                precision=str(d["precision"]),
                image_size=int(d["image_size"]),
                classes=list(d["classes"]),
                taxonomy=d["taxonomy"],
                mean=[float(v) for v in d["mean"]],
                std=[float(v) for v in d["std"]],
                datasets={n: DatasetRecord(**v) for n, v in d["datasets"].items()},
                steps_per_epoch=int(d["steps_per_epoch"]),
                inference=InferencePolicy.from_dict(d["inference"]),
                versions=dict(d.get("versions", {})),
                created=str(d.get("created", "")),
                resumed=list(d.get("resumed", [])),
                calibration=_part(Calibration, d.get("calibration")),
                parent=_part(Parent, d.get("parent")),
                adaptation=_part(Adaptation, d.get("adaptation")),
                distributed=_part(Distributed, d.get("distributed")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"The run record is damaged or incomplete ({type(e).__name__}: {e}).") from None

    # --- files ---------------------------------------------------------------------------------

    def save(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        path = Path(run_dir) / CONFIG_FILE
        try:
            return cls.from_dict(read_json(path))
        except FileNotFoundError:
            raise RunError(f"{run_dir} has no {CONFIG_FILE}.", hint="Is it a cellmorphnet run folder?") from None
        except ValueError as e:
            raise RunError(f"{path} is not valid JSON ({e}).") from None

    # --- checks --------------------------------------------------------------------------------

    def data_changes(self, home: Path | None, names: list[str] | None = None) -> list[str]:
        """How the prepared data differs now from what the run trained on, one line per difference."""
        from cellmorphnet.data import store

        out = []
        for name in [n for n in (names or self.datasets) if n in self.datasets]:
            rec = self.datasets[name]
            manifest = store.read_manifest(store.prepared_path(name, rec.size, home))
            if manifest is None:
                continue  # missing data is reported by the loader, with its own hint
            now = DatasetRecord.from_manifest(name, rec.size, manifest)
            out += [f"{name} ({rec.size} px): {d}" for d in rec.differences(now)]
        return out

    def check_data(self, home: Path | None, *, accept: bool, names: list[str] | None = None) -> list[str]:
        """Raise ``DataChanged`` if the data differs, unless ``accept``; return the differences."""
        changes = self.data_changes(home, names)
        if changes and not accept:
            changed = {c.split(" (", 1)[0] for c in changes}
            restore = "; ".join(self.datasets[n].restore_command() for n in self.datasets if n in changed)
            raise DataChanged(
                f"The data changed since this run trained: {'; '.join(changes)}.",
                hint=f"Restore it with: {restore}; or pass --accept-data-change to use the data as it is now.",
            )
        return changes

    def mismatch(self, other: RunRecord) -> list[str]:
        """Fields of two records of one run that differ and would change predictions (config.json vs checkpoint)."""
        out = []
        for what in ("classes", "image_size", "mean", "std", "inference"):
            if getattr(self, what) != getattr(other, what):
                out.append(what)
        if self.config.model != other.config.model:
            out.append("model")
        return out


def _migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 (``config`` + ``resolved``) to the fields of schema 2."""
    resolved = d["resolved"]
    datasets = {}
    for name, info in resolved["datasets"].items():
        datasets[name] = {
            "name": name,
            "size": int(info["size"]),
            "checksum": info["checksum"],
            "verified": bool(info["verified"]),
            "classes": list(info["classes"]),
            "preprocessing": dict(info.get("preprocessing", {})),
            "counts": dict(info.get("counts", {})),
            "params": None,
            "content_digest": None,
        }
    inference = resolved.get("inference") or policy_for(
        DatasetRecord(**next(iter(datasets.values()))), resolved["image_size"], resolved["mean"], resolved["std"]
    ).to_dict()
    return {
        **{k: resolved[k] for k in ("device", "precision", "image_size", "classes", "taxonomy", "mean", "std")},
        "config": {"augment": "basic", "recipe": "custom", **d["config"]},  # what 0.1 trained with
        "datasets": datasets,
        "steps_per_epoch": resolved.get("steps_per_epoch", 0),
        "inference": inference,
        "versions": d.get("versions", {}),
        "created": d.get("created", ""),
        "resumed": [{"at": d["resumed"]}] if isinstance(d.get("resumed"), str) else [],
    }


def policy_for(ds: DatasetRecord, image_size: int, mean: list[float], std: list[float],
               appearance: dict[str, Any] | None = None) -> InferencePolicy:  # fmt: skip
    """The inference policy that rebuilds ``ds``'s preprocessing for a new full-size image.

    ``appearance`` (``training.data.appearance``): the framing and colour measured on the training images.
    """
    pre = ds.preprocessing
    stored = int(pre.get("stored_size", ds.size))
    return InferencePolicy(
        dataset=ds.name,
        centre_crop_px=None if pre.get("centre_crop_px") is None else int(pre["centre_crop_px"]),
        centre_crop_fraction=float(pre.get("centre_crop_fraction", 1.0)),
        resize_chain=[stored, ds.size] if stored != ds.size else [ds.size],
        resize="bicubic",
        image_size=int(image_size),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        **(appearance or {}),
    )
