"""What is in the cache: each dataset, whether it is fetched, verified, and prepared at which sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellmorphnet import paths
from cellmorphnet.data import registry, store
from cellmorphnet.data.fetch import partial_download, read_source_record


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
    for name, info in registry.REGISTRY.items():
        record = read_source_record(name, home)
        entry: dict[str, Any] = {"name": name, "title": info.title, "licence": info.licence}
        if name == "sample":
            entry.update(fetched=True, verified=True, note="embedded")
        elif name == "bloodmnist":
            files = (record or {}).get("files", {})
            entry.update(
                fetched=bool(files),
                fetched_sizes={s: {"verified": f["verified"], "md5": f["md5"]} for s, f in sorted(files.items())},
                verified=bool(files) and all(f["verified"] for f in files.values()),
            )
        else:
            entry.update(fetched=record is not None, verified=bool(record and record.get("verified")))
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
