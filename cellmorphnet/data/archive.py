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


# --- fetching archive sources (BCCD, LISC) --------------------------------------------------------


def obtain_archive(info, folder: Path, source: Path | None, force: bool, progress) -> tuple[Path, str, bool]:
    """Return ``(zip or folder, origin, is_download)`` for an archive source: ``source`` if given, else downloaded."""
    from cellmorphnet.data.download import download

    if source is not None:
        return source, str(source.resolve()), False
    url, filename = info.extra["url"], info.extra["filename"]
    dest = folder / filename
    if force and dest.exists():
        dest.unlink()
    if not dest.exists():
        hint = (
            f"Download {url} by hand (or from {info.homepage}), then import it with: "
            f"cellmorphnet fetch {info.name} --from PATH (the zip or the unpacked folder)"
        )
        download(url, dest, progress=progress, manual_hint=hint)
    return dest, url, True


def unpack(src: Path, target: Path) -> Path:
    """Extract a zip, or copy a folder, into ``target`` (replaced atomically at the end)."""
    if src.is_dir():
        tmp = target.with_name(target.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
    return safe_extract(src, target)


def promote(checked: Path, final: Path) -> Path:
    """Move a verified folder into its place in the cache, replacing what was there."""
    shutil.rmtree(final, ignore_errors=True)
    checked.rename(final)
    return final


def find_dir(root: Path, predicate, what: str) -> Path:
    """The first folder at or below ``root`` (sorted) for which ``predicate`` holds."""
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for c in candidates:
        if predicate(c):
            return c
    raise InvalidData(f"Could not find {what} in the given archive or folder.")
