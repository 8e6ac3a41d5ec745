"""The registry of data sources: ``@register`` on a ``Source`` subclass adds it; the rest looks it up by name.

Every module in ``cellmorphnet/data/sources/`` is imported on first lookup, so a new dataset is one
new file there. ``folder:PATH`` (your own class folders) is the ``folder`` source with a path.
"""

from __future__ import annotations

import importlib
import pkgutil

from cellmorphnet.data.source import DatasetInfo, Source
from cellmorphnet.errors import DatasetNotFound

FOLDER_PREFIX = "folder:"
_SOURCES: dict[str, Source] = {}
_loaded = False


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make ``cls`` the source named ``cls.info.name``."""
    if cls.info.name in _SOURCES and type(_SOURCES[cls.info.name]) is not cls:
        raise ValueError(f"Two sources are named {cls.info.name}.")
    _SOURCES[cls.info.name] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    from cellmorphnet.data import sources

    for module in sorted(m.name for m in pkgutil.iter_modules(sources.__path__)):
        importlib.import_module(f"{sources.__name__}.{module}")
    _loaded = True


def sources() -> dict[str, Source]:
    """Every named source (not ``folder``), in the order they are listed to users."""
    _load()
    order = ("bloodmnist", "bccd", "lisc", "sample")
    named = {n: s for n, s in _SOURCES.items() if n != "folder"}
    return dict(sorted(named.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def get_source(name: str) -> Source:
    """A source by name (``folder:PATH`` gives the folder source), or raise with the list of known names."""
    _load()
    key = "folder" if name.startswith(FOLDER_PREFIX) else name
    try:
        return _SOURCES[key]
    except KeyError:
        raise DatasetNotFound(
            f"Unknown dataset '{name}'.",
            hint=f"Known datasets: {', '.join(sources())}, or folder:PATH for your own class folders.",
        ) from None


def get_info(name: str) -> DatasetInfo:
    return get_source(name).info
