"""Guards for the hostile-input tests: what a case may not do, checked from outside it.

- `Guard` is an audit hook (installed once per process, armed per case) that records every
  unpickling (`pickle.find_class`), process creation, exec of code that is not a file, and
  every `open` that resolves into a forbidden place (the case's "elsewhere" folder,
  /dev/zero, /etc/passwd, /etc/shadow).
- `within(seconds, fn)` runs `fn` in a thread and fails the test if it has not returned in
  time (a FIFO that blocks a read, say), with the guard armed meanwhile.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

ALWAYS_FORBIDDEN = ("/dev/zero", "/etc/passwd", "/etc/shadow")
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn",
                  "os.fork", "os.forkpty", "pty.spawn")


class Guard:
    def __init__(self) -> None:
        self.armed = False
        self.forbidden: list[str] = []
        self.violations: list[tuple[str, str]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed:
            return
        try:
            if event == "open":
                flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
                self._check_open(args[0], flags)
            elif event == "pickle.find_class":
                self.violations.append((event, f"{args[0]}.{args[1]}"))
            elif event in PROCESS_EVENTS:
                self.violations.append((event, repr(args)[:200]))
            elif event == "exec":
                filename = getattr(args[0], "co_filename", "")
                if not os.path.isfile(filename) and not _making_code():
                    self.violations.append((event, filename))
        except Exception:  # a guard must never change what it watches
            pass

    def _check_open(self, path: Any, flags: int) -> None:
        if isinstance(path, int) or path is None:
            return
        text = os.fsdecode(os.fspath(path))
        if not os.path.isabs(text):
            return  # relative to a directory fd: confined opens (checked by behaviour)
        if flags & getattr(os, "O_NOFOLLOW", 0) and os.path.islink(text):
            # The kernel refuses to follow a last component that is a link: only the
            # folders on the way are followed.
            real = os.path.join(os.path.realpath(os.path.dirname(text)), os.path.basename(text))
        else:
            real = os.path.realpath(text)
        for place in (*ALWAYS_FORBIDDEN, *self.forbidden):
            if real == place or real.startswith(place.rstrip("/") + "/"):
                self.violations.append(("open", f"{text} -> {real}"))


# Where the standard library compiles code of its own (imports, dataclasses, namedtuples):
# exec from there is not a payload.
_CODE_MAKERS = ("importlib", "dataclasses.py", "collections/__init__.py", "typing.py",
                "enum.py", "functools.py")


def _making_code() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if any(maker in frame.f_code.co_filename for maker in _CODE_MAKERS):
            return True
        frame = frame.f_back
    return False


GUARD = Guard()


def within(seconds: float, fn: Callable[[], Any], forbidden: tuple[str, ...] = ()
           ) -> tuple[Any, BaseException | None]:
    """(result, exception) of `fn()`, run with the guard armed; fails after `seconds`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as e:  # reported to the test, never raised in the thread
            outcome["error"] = e

    GUARD.violations.clear()
    GUARD.forbidden = [os.path.realpath(p) for p in forbidden]
    GUARD.armed = True
    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(seconds)
    finally:
        GUARD.armed = False
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    assert not GUARD.violations, f"forbidden actions: {GUARD.violations}"
    return outcome.get("result"), outcome.get("error")
