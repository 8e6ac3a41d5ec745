"""Turn fetched sources into training-ready arrays (see ``store``), once.

Each source module provides ``source_state(...)`` (cheap: what identifies the input) and
``build(...)`` (decode, crop, resize, split). This module decides whether work is needed, runs
it, and writes the result atomically. Running prepare again on unchanged input is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmorphnet.data import registry, store
from cellmorphnet.errors import InvalidData

# progress(done, total)
ItemProgress = Callable[[int, int], None]


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
class PrepareResult:
    dataset: str
    size: int
    path: Path
    manifest: dict[str, Any]
    skipped: bool  # True when nothing changed and the existing arrays were kept
    warnings: list[str] = field(default_factory=list)


def _source_module(name: str):
    if name.startswith(registry.FOLDER_PREFIX):
        from cellmorphnet.data import folder as mod
    elif name == "bloodmnist":
        from cellmorphnet.data import bloodmnist as mod
    elif name == "bccd":
        from cellmorphnet.data import bccd as mod
    elif name == "lisc":
        from cellmorphnet.data import lisc as mod
    elif name == "sample":
        from cellmorphnet.data import sample as mod
    else:
        registry.get_info(name)  # raises with the known names
        raise AssertionError(name)
    return mod


def default_size(name: str, home: Path | None = None) -> int:
    if name.startswith(registry.FOLDER_PREFIX):
        return 64
    if name == "bloodmnist":
        from cellmorphnet.data import bloodmnist

        return bloodmnist.default_size(home)
    return registry.get_info(name).default_size


def prepare(
    name: str,
    *,
    home: Path | None = None,
    size: int | None = None,
    seed: int = 42,
    force: bool = False,
    options: dict[str, Any] | None = None,
    progress: ItemProgress | None = None,
) -> PrepareResult:
    """Prepare one dataset at one size. Returns what was written (or kept)."""
    mod = _source_module(name)
    size = size or default_size(name, home)
    if not 8 <= size <= 1024:
        raise InvalidData(f"--size {size} is out of range (8 to 1024).")
    options = dict(options or {})
    state: SourceState = mod.source_state(name, home=home, size=size)
    params = {"size": size, "seed": seed, **options}
    target = store.prepared_path(name, size, home)
    existing = store.read_manifest(target)
    if (
        existing is not None
        and not force
        and existing.get("source", {}).get("checksum") == state.checksum
        and existing.get("params") == params
    ):
        return PrepareResult(name, size, target, existing, skipped=True)
    built: Built = mod.build(name, home=home, size=size, seed=seed, progress=progress, **options)
    if sum(len(s.labels) for s in built.splits.values()) == 0:
        raise InvalidData(f"{name}: no usable images were found.")
    manifest = {
        "dataset": name,
        "size": size,
        "classes": built.classes,
        "params": params,
        "source": {"checksum": state.checksum, "verified": state.verified, "origin": state.origin},
        "preprocessing": built.preprocessing,
        "split_policy": built.split_policy,
        "warnings": built.warnings,
        **built.extra,
    }
    manifest = store.write_prepared(target, built.splits, manifest)
    return PrepareResult(name, size, target, manifest, skipped=False, warnings=built.warnings)
