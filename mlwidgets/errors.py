"""The library's typed errors. Each names the file or value it is about.

`str(error)` reads `<what> (<file or value>): <what to do>`, the line the CLI prints after
"error: ". They subclass ValueError (or FileNotFoundError), so code that caught those keeps
working.
"""

from __future__ import annotations

import os
from typing import Any


class MlwidgetsError(Exception):
    """A failure the user can act on: `what` went wrong, `where` (a file or value), `hint`."""

    def __init__(self, what: str, where: Any = None, hint: str = ""):
        self.what = what
        self.where = None if where is None else printable(where)
        self.hint = hint
        super().__init__(what)

    def __str__(self) -> str:
        text = self.what
        if self.where is not None:
            text += f" ({self.where})"
        if self.hint:
            text += f": {self.hint}"
        return text


class CheckpointError(MlwidgetsError, ValueError):
    """A checkpoint file is missing, damaged, tampered with or unsafe (the message names it)."""


class SessionError(MlwidgetsError, ValueError):
    """A session's own files (session.json, data.json, events.jsonl...) are unusable."""


class SessionNotFoundError(SessionError, FileNotFoundError):
    """The folder is not a training session."""


class DataError(MlwidgetsError, ValueError):
    """Images or data folders that cannot be used (the message names the file or folder)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder or image file that does not exist."""


class UnsafeFileError(MlwidgetsError, ValueError):
    """A name or file inside a session that could lead a read or write elsewhere
    (a symlink, a special file, `..`, an absolute name) or is larger than allowed."""


class LimitError(MlwidgetsError, ValueError):
    """A size or count from a file or an argument is beyond the documented limits."""


def printable(value: Any) -> str:
    """`value` as text that any terminal can print: undecodable bytes of file names become
    backslash escapes instead of crashing a strict UTF-8 (or ASCII) stream."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, os.PathLike):
        text = os.fspath(value)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    try:  # surrogates stand for bytes that were not UTF-8 in a file name (PEP 383)
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate from elsewhere (a JSON escape, say)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    # Control characters would break the one error line or drive the terminal.
    return text.translate(_CONTROLS)


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


class TrainingError(MlwidgetsError, RuntimeError):
    """Training stopped on an error (the message says which, and where the session is)."""


_OS_HINTS = {
    FileNotFoundError: "check the path",
    PermissionError: "check its permissions",
    IsADirectoryError: "give a file, not a folder",
    NotADirectoryError: "give a folder",
    FileExistsError: "choose another name",
}


def describe(error: BaseException) -> str:
    """Any exception as one line, `<what> (<file or value>): <what to do>`, for a terminal."""
    if isinstance(error, MlwidgetsError):
        return _one_line(str(error))
    where: Any = None
    hint = ""
    text = _one_line(str(error))
    if isinstance(error, OSError):
        what = error.strerror or text or type(error).__name__
        where = error.filename
        hint = next((h for t, h in _OS_HINTS.items() if isinstance(error, t)),
                    "free some disk space" if error.errno == 28 else "check the file")
    elif isinstance(error, KeyError):
        key = error.args[0] if error.args else ""
        if isinstance(key, str) and " " in key:
            what = _one_line(key)
        else:
            what, hint = f"missing field {key!r}", "the file or value is incomplete or damaged"
    elif isinstance(error, MemoryError):
        what = "out of memory"
        hint = "use smaller images, a smaller batch size or fewer images"
    elif isinstance(error, (ValueError, RuntimeError)):
        what = text or type(error).__name__
    else:
        what = f"unexpected {type(error).__name__}" + (f": {text}" if text else "")
        hint = "run again with --debug and report the traceback"
    return _one_line(str(MlwidgetsError(what, where, hint)))


def _one_line(text: str) -> str:
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return printable(joined.replace(":; ", ": "))
