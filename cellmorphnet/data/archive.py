"""Safe extraction of untrusted zip archives."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from cellmorphnet.errors import InvalidData, UnsafeArchive


def check_members(zf: zipfile.ZipFile) -> None:
    """Refuse any member with an absolute path, a drive, or a ``..`` component."""
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise UnsafeArchive(
                f"Refusing archive member '{info.filename}': it would be written outside the target folder.",
                hint="The archive is damaged or was crafted; download it again from the official source.",
            )


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` after checking every member; return ``target``.

    Extraction goes to a temporary sibling folder that is renamed into place at the end, so an
    interrupted or refused extraction never leaves a half-filled ``target``.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidData(f"{archive} is not a readable zip archive ({e}).") from None
    with zf:
        check_members(zf)
        tmp = target.with_name(target.name + ".extracting")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            for info in zf.infolist():
                dest = (tmp / info.filename).resolve()
                if not dest.is_relative_to(tmp.resolve()):  # defence in depth after check_members
                    raise UnsafeArchive(f"Refusing archive member '{info.filename}'.")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
