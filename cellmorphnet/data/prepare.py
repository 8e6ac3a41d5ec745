"""Turn fetched sources into training-ready arrays (see ``store``), once.

Each source (``sources/``) provides ``source_state(...)`` (cheap: what identifies the input) and
``build(...)`` (decode, crop, resize, split). This module decides whether work is needed, runs
it, and writes the result atomically. Running prepare again on unchanged input is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmorphnet.data import registry, store
from cellmorphnet.data.source import Built, ItemProgress, SourceState
from cellmorphnet.errors import InvalidData


@dataclass
class PrepareResult:
    dataset: str
    size: int
    path: Path
    manifest: dict[str, Any]
    skipped: bool  # True when nothing changed and the existing arrays were kept
    warnings: list[str] = field(default_factory=list)


def default_size(name: str, home: Path | None = None) -> int:
    return registry.get_source(name).default_size(home)


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
    src = registry.get_source(name)
    size = src.default_size(home) if size is None else size
    if not 8 <= size <= 1024:
        raise InvalidData(f"--size {size} is out of range (8 to 1024).")
    options = dict(options or {})
    state: SourceState = src.source_state(name, home=home, size=size)
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
    built: Built = src.build(name, home=home, size=size, seed=seed, progress=progress, **options)
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
