"""Lab profiles: a lab's own values (crop side, stain, contrast, red-cell scale, and, once calibrated on its
reviewed cells, a conformal rule), measured once and kept as ``HOME/labs/NAME.json``.

A profile is made for one run (the checkpoint's digest is kept): its contrast and its conformal calibration are
measured with that model, so another run refuses it. The file is versioned like the run record and checked on
every read (a colleague's export is data, never trusted as it comes); writes are atomic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cellmorphnet._io import atomic_path
from cellmorphnet.errors import ConfigError, Conflict, InvalidData, NotFound
from cellmorphnet.inference.options import LabSet
from cellmorphnet.paths import home_dir

PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 64 * 1024  # a profile is a few hundred bytes; a larger file is refused unread
NONE = "none"  # --lab none: the run's home preprocessing
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class LabProfile:
    name: str
    run: str  # the run it was made with (its folder name)
    checkpoint_sha256: str  # of that run's checkpoint: another run refuses the profile
    created: str
    cells: int  # the cells it was measured on
    source: str  # the folder it was measured on
    values: LabSet
    calibrated: dict[str, Any] | None = None  # where the conformal rule came from: source, cells, coverage
    version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "run": self.run,
                "checkpoint_sha256": self.checkpoint_sha256, "created": self.created, "cells": self.cells,
                "source": self.source, "values": self.values.to_dict(), "calibrated": self.calibrated}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any, where: str) -> LabProfile:
        if not isinstance(d, dict):
            raise InvalidData(f"{where} is not a lab profile.")
        version = d.get("version")
        if not isinstance(version, int) or version < 1:
            raise InvalidData(f"{where} is not a lab profile (no version).")
        if version > PROFILE_VERSION:
            raise InvalidData(f"{where} was written by a newer cellmorphnet (profile version {version}; this one reads "
                              f"up to {PROFILE_VERSION}).", hint="Upgrade cellmorphnet to use it.")  # fmt: skip
        try:
            name = check_name(str(d["name"]))
            sha = str(d["checkpoint_sha256"])
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ValueError("checkpoint_sha256 is not a sha256")
            cells = int(d["cells"])
            if cells < 1:
                raise ValueError("cells must be positive")
            calibrated = d.get("calibrated")
            if calibrated is not None and not isinstance(calibrated, dict):
                raise ValueError("calibrated must be an object")
            values = LabSet.from_dict(d["values"], name=name)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise InvalidData(f"{where} is not a valid lab profile ({e}).") from None
        return cls(name, str(d["run"])[:200], sha, str(d["created"])[:40], cells, str(d["source"])[:1000], values,
                   calibrated, version)  # fmt: skip


def check_name(name: str) -> str:
    if name == NONE or not _NAME.match(name):
        raise ConfigError(f"'{name}' cannot name a lab profile.",
                          hint="Use letters, digits, '.', '_' and '-' (up to 64), not 'none'.")  # fmt: skip
    return name


def labs_dir(home: Path | None = None) -> Path:
    return (home or home_dir()) / "labs"


def path_of(name: str, home: Path | None = None) -> Path:
    return labs_dir(home) / f"{check_name(name)}.json"


def read(path: Path, where: str | None = None) -> LabProfile:
    """A profile file, checked."""
    where = where or str(path)
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise InvalidData(f"{where} is too large to be a lab profile.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{where} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidData(f"{where} is not a lab profile ({e}).") from None
    return LabProfile.from_dict(data, where)


def load(name: str, home: Path | None = None) -> LabProfile:
    path = path_of(name, home)
    if not path.exists():
        known = ", ".join(p.name for p in list_profiles(home)) or "none yet"
        raise NotFound(f"There is no lab profile '{name}' (known: {known}).",
                       hint="Make one with: cellmorphnet lab create NAME FOLDER")  # fmt: skip
    return read(path, f"Lab profile '{name}'")


def write(profile: LabProfile, path: Path) -> Path:
    """The profile as a JSON file at ``path``, written atomically (the home's copy, or an export)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def save(profile: LabProfile, home: Path | None = None) -> Path:
    return write(profile, path_of(profile.name, home))


def list_profiles(home: Path | None = None) -> list[LabProfile]:
    """Every readable profile in the home (damaged ones are left out; ``load`` names them)."""
    out = []
    folder = labs_dir(home)
    for p in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            out.append(read(p))
        except (InvalidData, NotFound):
            continue
    return out


def import_profile(file: Path, home: Path | None = None, *, name: str | None = None, force: bool = False) -> LabProfile:
    """A colleague's exported profile, checked and stored (under ``name`` if given); an existing profile of that
    name is kept unless ``force``."""
    profile = read(Path(file))
    if name:
        profile = replace(profile, name=check_name(name), values=replace(profile.values, name=name))
    if path_of(profile.name, home).exists() and not force:
        raise Conflict(f"A lab profile '{profile.name}' exists already.",
                       hint="Pass --name NEW to keep both, or --force to replace it.")  # fmt: skip
    save(profile, home)
    return profile


def for_run(profile: LabProfile, rm) -> LabSet:
    """The profile's values for a loaded run; refused with one line when it was made with another checkpoint."""
    sha = rm.checkpoint_sha256()
    if sha != profile.checkpoint_sha256:
        raise ConfigError(f"The lab profile '{profile.name}' was made for run {profile.run} "
                          f"(checkpoint {profile.checkpoint_sha256[:12]}); this run's checkpoint is {sha[:12]}.",
                          hint=f"Make one for this run: cellmorphnet lab create {profile.name}-2 FOLDER --run RUN")
    return profile.values


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve(name: str | None, rm, home: Path | None = None) -> tuple[LabSet | None, bool]:
    """``--lab``: (the profile's values, False); ``none`` -> (None, True): the run's home preprocessing even for an
    adapted run; not given -> (None, False): each image on its own, or an adapted run's own lab (its profile's
    values where that profile, named after the run and made with its checkpoint, carries a conformal rule:
    ``train --init --calibrate`` or ``lab calibrate RUN``)."""
    if name is None:
        return _own_calibrated(rm, home), False
    if name == NONE:
        return None, True
    return for_run(load(name, home), rm), False


def _own_calibrated(rm, home: Path | None) -> LabSet | None:
    """An adapted run's own profile (named after the run, made with this checkpoint) where it has been calibrated."""
    if rm.record.inference.lab_set is None:
        return None
    try:
        path = path_of(rm.run_dir.name, home)  # (a run name a profile cannot take has none)
        profile = read(path) if path.is_file() else None
    except (ConfigError, InvalidData, NotFound):
        return None
    if profile is None or profile.values.conformal is None or profile.checkpoint_sha256 != rm.checkpoint_sha256():
        return None
    return profile.values
