"""Crash-safe file writing: the one home for fsync, atomic replace and JSON lines.

Everything the session directory holds is written through these, so a process
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder below a directory (an .mlpackage, say)."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, names in os.walk(path, topdown=False):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (no extra space), copying where links are impossible."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)


@contextmanager
def directory_committed_as(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to fill; then fsync it and rename it to `target`.

    On an error the temporary directory is removed. If `target` appeared meanwhile (another
    run wrote the same content first) it is kept and the temporary one removed.
    """
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, target)
            fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` through a temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes_durably(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file; a broken one raises ValueError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def append_json_line(path: Path, obj: Any) -> None:
    """Append one JSON object as a line; a crash can only cut the last line short."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        f.flush()


def read_json_lines(path: Path, start: int = 0) -> Iterator[tuple[int, Any]]:
    """Yield (offset after the line, object) for complete lines from byte `start`.

    A last line without its newline (a writer killed mid-write, or still writing) is
    not yielded, so a follower can come back for it from the returned offset.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        offset = start
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            try:
                yield offset, json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut by a crash, then appended after: skip it


def end_partial_line(path: Path) -> None:
    """Terminate a last line cut short by a crash, so the next append starts clean."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass
