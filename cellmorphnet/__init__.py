"""cellmorphnet: blood-cell classification from public datasets or your own image folders.

Research use only; not a diagnostic device. The public Python API (``train``, ``load_run``,
``predict``, ``evaluate``) is imported on first use, so ``import cellmorphnet`` stays light; ``dir()``
and tab completion list it all the same.
"""

__version__ = "0.3.0.dev0"
_API = ("train", "load_run", "predict", "evaluate")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from cellmorphnet import api

        return getattr(api, name)
    raise AttributeError(f"module 'cellmorphnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
