"""cellmorphnet: blood-cell classification from public datasets or your own image folders.

Research use only; not a diagnostic device. The public Python API (``train``, ``load_run``,
``predict``, ``evaluate``) is imported on first use, so ``import cellmorphnet`` stays light.
"""

__version__ = "0.2.0.dev0"
__all__ = ["train", "load_run", "predict", "evaluate", "__version__"]


def __getattr__(name: str):
    if name in ("train", "load_run", "predict", "evaluate"):
        from cellmorphnet import api

        return getattr(api, name)
    raise AttributeError(f"module 'cellmorphnet' has no attribute {name!r}")
