"""Crash-safe, confined file access: the one home for fsync, atomic replace and JSON lines.

Everything the session directory holds is written through these, so a process
killed at any moment leaves either the old file or the new one, never half of one.

Nothing inside a session folder is trusted, so reads and writes there are confined
(`open_confined`, `read_confined`, `append_json_line`...): every component below the root
is opened without following symlinks, only regular files are read (a FIFO or a device is
refused at once, never waited on), `..` and absolute names are refused, and sizes are
checked before anything is read. The root itself is the user's choice and may be a link.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .errors import LimitError, UnsafeFileError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
MAX_JSON_LINE_BYTES = 1 << 20  # a longer events.jsonl line is damage: skipped, never held
MAX_JSON_LINES_BYTES = 1 << 30  # a larger events.jsonl is refused (a million reports fit)


# -- confinement -------------------------------------------------------------------------


def confined_parts(name: str | os.PathLike) -> tuple[str, ...]:
    """The components of a relative name inside a session; `..`, absolute names, empty
    or hidden-parent tricks and NUL bytes raise UnsafeFileError."""
    text = os.fspath(name)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    path = PurePosixPath(text.replace("\\", "/"))
    if not text or "\x00" in text or path.is_absolute() or text.startswith("/"):
        raise UnsafeFileError("an absolute or empty name inside a session", text,
                              "names in a session must stay inside it")
    parts = path.parts
    if any(part in ("..", ".", "") for part in parts):
        raise UnsafeFileError("a name that leaves its folder", text,
                              "names in a session must stay inside it")
    return parts


def _open_below(root: Path, parts: tuple[str, ...], flags: int, mode: int = 0o644) -> int:
    """os.open of root/parts[0]/.../parts[-1], following no symlink below `root`."""
    dir_fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC,
                                  dir_fd=dir_fd)
            except OSError as e:
                _refuse_link(e, root, parts, part)
                raise
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            return os.open(parts[-1], flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, mode,
                           dir_fd=dir_fd)
        except OSError as e:
            _refuse_link(e, root, parts, parts[-1])
            raise
    finally:
        os.close(dir_fd)


def _refuse_link(e: OSError, root: Path, parts: tuple[str, ...], part: str) -> None:
    import errno

    where = root.joinpath(*parts[:parts.index(part) + 1])
    if e.errno in (errno.ELOOP, errno.ENOTDIR, getattr(errno, "EMLINK", -1)) and \
            os.path.islink(where):
        raise UnsafeFileError("a symlink inside the session", where,
                              "sessions must hold their own files; nothing is followed "
                              "out of them") from None
    if e.errno == errno.ENXIO:  # opening a FIFO without a reader for writing
        raise UnsafeFileError("a special file (a FIFO) inside the session", where,
                              "only regular files are read or written") from None
    e.filename = str(where)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a folder" if stat.S_ISDIR(mode) else "a socket or special file"


def _require_regular(fd: int, where: Path, max_size: int | None,
                     expected_size: int | None) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{_kind(st.st_mode)} where a file belongs", where,
                              "only regular files are read or written")
    if expected_size is not None and st.st_size != expected_size:
        raise UnsafeFileError(f"its size is {st.st_size} bytes, not the {expected_size} "
                              "recorded", where, "the file was changed or damaged")
    if max_size is not None and st.st_size > max_size:
        raise LimitError(f"the file is larger than {max_size} bytes", where,
                         "it cannot be a file this library wrote")
    return st.st_size


def open_confined(root: str | os.PathLike, name: str | os.PathLike, *,
                  max_size: int | None = None, expected_size: int | None = None) -> IO[bytes]:
    """A regular file below `root`, opened for reading: no symlink, FIFO, device, `..` or
    absolute name, and its size checked (against `expected_size`, at most `max_size`)."""
    root, parts = Path(root), confined_parts(name)
    fd = _open_below(root, parts, os.O_RDONLY)
    try:
        _require_regular(fd, root.joinpath(*parts), max_size, expected_size)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_confined(root: str | os.PathLike, name: str | os.PathLike, *,
                  max_size: int, expected_size: int | None = None) -> bytes:
    """The bytes of a confined regular file, its size checked before it is read."""
    with open_confined(root, name, max_size=max_size, expected_size=expected_size) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(size + 1)
    if len(data) != size:
        raise UnsafeFileError("the file changed while it was read",
                              Path(root).joinpath(*confined_parts(name)), "try again")
    return data


def check_confined(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """root/name after checking that nothing below `root` on the way is a symlink or a
    special file (what does not exist yet is fine): for paths handed to other libraries."""
    root, parts = Path(root), confined_parts(name)
    path = root
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return root.joinpath(*parts)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeFileError("a symlink inside the session", path,
                                  "sessions must hold their own files; nothing is followed "
                                  "out of them")
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise UnsafeFileError("a special file inside the session", path,
                                  "only regular files and folders are used")
    return path


def mkdir_confined(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """Make (or find) the folder root/name, refusing symlinks and files on the way."""
    path = check_confined(root, name)
    path.mkdir(parents=True, exist_ok=True)
    return check_confined(root, name)


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
    """Write a new file (never through a symlink or into a FIFO) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _NONBLOCK
                 | _CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        _require_regular(fd, Path(path), None, None)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def synced_file_record(path: Path) -> dict[str, Any]:
    """fsync a file just written (by a library, through its path) and return its
    {sha256, size}, hashed from what is on disk; never through a symlink."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        size = _require_regular(fd, Path(path), None, None)
        os.fsync(fd)
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"sha256": digest, "size": size}


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (no extra space), copying where links are impossible."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)
    fsync_tree(target)  # a copy must be durable before its folder is committed


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


def write_cache_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` through a temporary sibling and a rename, without fsync:
    for caches whose readers verify what they read (a hash in a record) and recompute
    anything missing or damaged, so a crash can cost a recomputation, never a wrong value."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _NONBLOCK
                     | _CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON (the rename replaces a symlink, never follows it)."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, max_size: int = 64 << 20) -> Any:
    """Read a JSON file (a regular file, not through a symlink, at most `max_size` bytes);
    a broken one raises ValueError naming the file."""
    path = Path(path)
    data = read_confined(path.parent, path.name, max_size=max_size)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: str | os.PathLike) -> str:
    """The sha256 of a regular file, read 1 MiB at a time (a FIFO or device is refused at
    once, never waited on or read without end)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # refused without even opening it
        raise UnsafeFileError(f"{_kind(mode)} where a file belongs", path,
                              "only regular files are read")
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        _require_regular(fd, Path(path), None, None)
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def append_json_line(path: Path, obj: Any) -> None:
    """Append one JSON object as a line; a crash can only cut the last line short.
    Never appends through a symlink or into a FIFO or device."""
    path = Path(path)
    line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    fd = _open_below(path.parent, (path.name,), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as f:
        _require_regular(fd, path, None, None)
        f.write(line)
        f.flush()


def open_for_append_confined(root: str | os.PathLike, name: str) -> int:
    """A file descriptor appending to root/name (created if missing): never through a
    symlink, never into a FIFO or device (a child process's log, say)."""
    root, parts = Path(root), confined_parts(name)
    fd = _open_below(root, parts, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        _require_regular(fd, root.joinpath(*parts), None, None)
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def tail_confined(root: str | os.PathLike, name: str, max_bytes: int = 16 << 10) -> str:
    """The last `max_bytes` of a confined text file ("" when it does not exist)."""
    try:
        with open_confined(root, name) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def json_object(raw: bytes) -> dict[str, Any] | None:
    """A line's JSON object, or None for anything else (garbage, NUL bytes, a list...)."""
    if b"\x00" in raw:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_json_lines(path: Path, start: int = 0,
                    parse: Callable[[bytes], Any] = json_object
                    ) -> Iterator[tuple[int, Any]]:
    """Yield (offset after the line, parse(line)) for complete lines from byte `start`.

    A last line without its newline (a writer killed mid-write, or still writing) is
    not yielded, so a follower can come back for it from the returned offset. Lines that
    `parse` turns into None (damage: garbage, NUL bytes, a value that is not an object,
    a line over MAX_JSON_LINE_BYTES) are skipped. The file must be a regular file, not a
    symlink, of at most MAX_JSON_LINES_BYTES.
    """
    path = Path(path)
    try:
        f = open_confined(path.parent, path.name, max_size=MAX_JSON_LINES_BYTES)
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        offset = start
        while True:
            raw = f.readline(MAX_JSON_LINE_BYTES + 1)
            if not raw.endswith(b"\n"):
                if len(raw) <= MAX_JSON_LINE_BYTES:
                    return  # the end, or a line still being written
                offset += len(raw) + _skip_line(f)  # too long: damage, skipped unread
                continue
            offset += len(raw)
            value = parse(raw)
            if value is not None:
                yield offset, value


def _skip_line(f: IO[bytes]) -> int:
    """Read past the rest of an overlong line, 16 MiB at a time; the bytes skipped."""
    skipped = 0
    while True:
        start = f.tell()
        chunk = f.read(16 << 20)
        end = chunk.find(b"\n")
        if end >= 0:
            f.seek(start + end + 1)
            return skipped + end + 1
        skipped += len(chunk)
        if not chunk:
            return skipped


def end_partial_line(path: Path) -> None:
    """Terminate a last line cut short by a crash, so the next append starts clean."""
    path = Path(path)
    try:
        fd = _open_below(path.parent, (path.name,), os.O_RDWR)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb+") as f:
        _require_regular(fd, path, None, None)
        if f.seek(0, os.SEEK_END) == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
