"""Where cellmorphnet keeps its files.

Everything lives under one home folder: ``downloads/`` (fetched and imported sources),
``prepared/`` (training-ready arrays) and ``runs/``. The home comes from, in order, the
``--home`` option, the ``CELLMORPHNET_HOME`` variable, and platformdirs' user data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "CELLMORPHNET_HOME"


def home_dir() -> Path:
    """Return the home folder (not created)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("cellmorphnet", appauthor=False))


def downloads_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "downloads"


def prepared_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "prepared"


def runs_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "runs"
