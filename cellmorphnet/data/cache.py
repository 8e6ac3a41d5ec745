"""What is in the cache: each dataset, whether it is fetched, verified, and prepared at which sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellmorphnet import paths
from cellmorphnet.data import registry, store
from cellmorphnet.data.source import partial_download


def _prepared(name: str, home: Path | None) -> dict[str, Any]:
    return {
        str(size): {
            "counts": {s: c["total"] for s, c in m.get("counts", {}).items()},
            "classes": m.get("classes", []),
            "verified": m.get("source", {}).get("verified", False),
        }
        for size, m in store.prepared_sizes(name, home).items()
    }


def cache_status(home: Path | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the cache under ``home``."""
    home = home or paths.home_dir()
    datasets = []
    for name, src in registry.sources().items():
        info = src.info
        entry: dict[str, Any] = {"name": name, "title": info.title, "licence": info.licence, **src.cache_entry(home)}
        partial = partial_download(name, home)
        if partial:
            entry["partial_downloads"] = [{"file": p.name, "bytes": p.stat().st_size} for p in partial]
        entry["prepared"] = _prepared(name, home)
        datasets.append(entry)
    prepared_root = paths.prepared_dir(home)
    if prepared_root.is_dir():
        for d in sorted(prepared_root.glob("folder-*")):
            sizes = store.prepared_sizes(d.name, home)
            if sizes:
                any_manifest = next(iter(sizes.values()))
                datasets.append(
                    {
                        "name": any_manifest["dataset"],
                        "title": "image folder",
                        "licence": "yours",
                        "fetched": True,
                        "verified": False,
                        "prepared": _prepared(d.name, home),
                    }
                )
    return {"home": str(home), "datasets": datasets}
