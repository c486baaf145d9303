"""A single file to download for an exported .mlpackage (a directory): a zip beside it."""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

from ..files import fsync_dir


def zip_for_download(package: Path) -> Path:
    """`<package>.zip` beside a package directory, published whole or not at all."""
    archive = download_archive_path(package)
    tmp = archive.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{archive.name}")
    try:
        # Stored, not deflated: weights barely compress, and zipping must not outlast exporting.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for file in sorted(package.rglob("*")):
                z.write(file, file.relative_to(package.parent).as_posix())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish(tmp, archive)
        fsync_dir(archive.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def _publish(tmp: Path, target: Path) -> None:
    """Give `tmp` the name `target`, never replacing a file that appeared meanwhile."""
    try:
        os.link(tmp, target)  # unlike rename, fails if the target exists
    except FileExistsError:
        raise FileExistsError(f"{target} already exists; choose another file name") from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise FileExistsError(f"{target} already exists; choose another file name") from None
        os.rename(tmp, target)


def download_archive_path(path: Path) -> Path:
    """Where `zip_for_download` puts the archive of `path`."""
    return path.with_name(path.name + ".zip")
