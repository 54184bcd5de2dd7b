"""Safe extraction of zip archives (no absolute paths, no '..', no links, bounded size)."""
from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputUnreadableError, InvalidInputError

MAX_UNPACKED_BYTES = 8 * 1024 ** 3  # 8 GiB: far above any knee series, well below a zip bomb


def check_member_name(name: str, archive: str = "The zip archive") -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidInputError("%s contains an absolute path: %r." % (archive, name[:200]),
                                hint="Re-create the archive with relative paths only.")
    if any(part == ".." for part in p.parts):
        raise InvalidInputError("%s contains a path that leaves the archive folder: %r." % (archive, name[:200]),
                                hint="Re-create the archive without '..' in its paths.")
    return p


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``zip_path`` into ``dest`` after checking every member; returns ``dest``."""
    dest = Path(dest)
    archive = "The zip archive %s" % Path(zip_path).name   # messages name the zip, never the temp folder
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputUnreadableError("Cannot open zip archive %s: %s." % (Path(zip_path).name, exc),
                                   hint="Check that the archive is complete and not corrupt.") from exc
    with zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            check_member_name(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidInputError("%s contains a symbolic link: %r." % (archive, info.filename[:200]),
                                        hint="Re-create the archive without links.")
            total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise InvalidInputError("%s would unpack to %.1f GB." % (archive, total / 1e9),
                                    hint="Zip one DICOM series only.")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for info in infos:
            target = (dest / check_member_name(info.filename, archive)).resolve()
            if root not in target.parents and target != root:
                raise InvalidInputError("Zip member %r would be written outside the extraction folder." % info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InputUnreadableError("Member %r of %s is corrupt or truncated (%s)."
                                           % (info.filename[:200], Path(zip_path).name, type(exc).__name__),
                                           hint="Check that the archive is complete and not corrupt.") from exc
    return dest
