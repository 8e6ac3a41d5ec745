"""What every data source provides, and the fetch record each keeps in the cache.

A source is one class (see ``sources/``): its registry row (``DatasetInfo``), how it is fetched
or imported, what identifies its input (``source_state``), and how its images become training
arrays (``build``). ``fetch``, ``prepare``, ``cache`` and training look sources up by name in
``registry``; none of them knows any source by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from cellmorphnet import paths
from cellmorphnet._io import read_json, write_json
from cellmorphnet.data import store
from cellmorphnet.data.download import ByteProgress
from cellmorphnet.errors import DatasetNotFound, InvalidData

SOURCE_RECORD = "source.json"
ItemProgress = Callable[[int, int], None]  # progress(done, total)


@dataclass(frozen=True)
class DatasetInfo:
    """A source's row of the registry, kept as data."""

    name: str  # the name used on the command line
    title: str  # a human title
    classes: tuple[str, ...]  # class names, in label order
    licence: str  # licence of the data
    homepage: str  # where a person can read about it and download it by hand
    citation: str  # who to cite
    default_size: int  # the size ``prepare`` uses when none is given
    recipe: str | None = None  # the training recipe (config.RECIPES) when trained alone
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific pins (URLs, digests, folder names)


@dataclass
class SourceState:
    """What identifies a source's input for the no-op check, and how it is shown."""

    checksum: str  # a digest or fingerprint of the input
    verified: bool  # whether it matched the registry's pins
    origin: str  # where it came from


@dataclass
class Built:
    """The output of a source's ``build``."""

    splits: dict[str, store.Split]
    classes: list[str]
    preprocessing: dict[str, Any]  # how images were made; stored in the manifest and used by infer
    split_policy: str  # how the splits were made
    warnings: list[str] = field(default_factory=list)  # e.g. skipped boxes or unreadable files
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FetchResult:
    """What one fetch did."""

    dataset: str  # registry name
    action: str  # "downloaded", "imported", "already present" or "embedded"
    verified: bool  # whether the content matched the registry's pins
    path: Path | None  # where the data now lies in the cache
    size: int | None = None  # image size for sources fetched per size (BloodMNIST), else None
    details: dict[str, Any] = field(default_factory=dict)


class Source:
    """Base class of a data source. Subclasses set ``info`` and implement ``source_state`` and ``build``."""

    info: ClassVar[DatasetInfo]

    @property
    def name(self) -> str:
        return self.info.name

    def fetch(
        self,
        home: Path | None,
        *,
        sizes: list[int] | None,
        source: Path | None,
        allow_unverified: bool,
        force: bool,
        progress: ByteProgress | None,
    ) -> list[FetchResult]:
        """Download, or import ``source``, into the cache, verified. Sources fetched per size override this."""
        raise DatasetNotFound(f"{self.name} needs no fetch.", hint=f"Run: cellmorphnet prepare {self.name}")

    def source_state(self, name: str, *, home: Path | None, size: int) -> SourceState:
        raise NotImplementedError

    def build(self, name: str, *, home: Path | None, size: int, seed: int, progress: ItemProgress | None = None,
              **options: Any) -> Built:  # fmt: skip
        raise NotImplementedError

    def default_size(self, home: Path | None) -> int:
        return self.info.default_size

    def cache_entry(self, home: Path | None) -> dict[str, Any]:
        """What ``status`` shows of this source's fetch state."""
        record = read_source_record(self.name, home)
        return {"fetched": record is not None, "verified": bool(record and record.get("verified"))}

    @staticmethod
    def no_sizes(name: str, sizes: list[int] | None) -> None:
        if sizes:
            raise InvalidData(f"--size applies to bloodmnist only; {name} is prepared at any size with prepare --size.")


# --- the fetch record: downloads/<dataset>/source.json ------------------------------------------------


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dataset_dir(name: str, home: Path | None = None) -> Path:
    return paths.downloads_dir(home) / name


def read_source_record(name: str, home: Path | None = None) -> dict[str, Any] | None:
    """The fetch record of ``name``, or ``None`` if it was never fetched."""
    p = dataset_dir(name, home) / SOURCE_RECORD
    return read_json(p) if p.exists() else None


def write_source_record(name: str, record: dict[str, Any], home: Path | None) -> None:
    write_json(dataset_dir(name, home) / SOURCE_RECORD, record)


def partial_download(name: str, home: Path | None = None) -> list[Path]:
    """``.part`` files left by interrupted downloads of ``name``."""
    folder = dataset_dir(name, home)
    return sorted(folder.glob("*.part")) if folder.exists() else []
