"""Keep / relabel / exclude decisions on a session's images, kept in its directory.

fastai's `ImageClassifierCleaner` forgets what a user decided when they switch category;
here every decision is written at once to `<session>/decisions.json` (atomically, validated
by side_schemas.DecisionsRecord, read confined), one per image path, so decisions survive a
kernel restart, a category switch and another process. `DataSource.with_decisions(...)`
applies them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import schemas, side_schemas
from .errors import MlwidgetsError, SessionError
from .files import check_confined, read_confined, write_atomic

DECISIONS_FILE = "decisions.json"
ACTIONS = ("keep", "relabel", "exclude")
_writing = threading.Lock()


class Decisions:
    """The decisions stored in `session_dir`; every read sees the file as it is now."""

    def __init__(self, session_dir: str | os.PathLike):
        self.directory = Path(session_dir)

    @property
    def path(self) -> Path:
        return self.directory / DECISIONS_FILE

    def all(self) -> dict[str, dict[str, Any]]:
        """{image path: {"action": ..., "label": ...}}; empty when nothing was decided.

        A damaged or unsafe file raises SessionError naming it (decisions are never
        silently dropped)."""
        try:
            data = read_confined(self.directory, DECISIONS_FILE,
                                 max_size=side_schemas.MAX_DECISIONS_BYTES)
        except FileNotFoundError:
            return {}
        except (MlwidgetsError, OSError) as e:
            raise SessionError(f"cannot read the decisions: {e}", self.path,
                               "move the file away to start the decisions again") from None
        return dict(side_schemas.load_decisions_record(data, self.path)["decisions"])

    def get(self, path: str | os.PathLike) -> dict[str, Any] | None:
        return self.all().get(str(path))

    def decide(self, path: str | os.PathLike, action: str, label: str | None = None
               ) -> dict[str, Any]:
        """Record `action` ("keep", "relabel" with `label`, or "exclude") for one image."""
        if action not in ACTIONS:
            raise ValueError(f"unknown decision {action!r}; choose one of {ACTIONS}")
        if (action == "relabel") != (label is not None):
            raise ValueError("relabel needs a label, and only relabel takes one")
        decision: dict[str, Any] = {"action": action, "time": time.time()}
        if label is not None:
            decision["label"] = str(label)
        with _writing:
            found = self.all()
            found[str(path)] = decision
            self._write(found)
        return decision

    def forget(self, path: str | os.PathLike) -> None:
        """Remove the decision on one image (it is undecided again)."""
        with _writing:
            found = self.all()
            if found.pop(str(path), None) is not None:
                self._write(found)

    def _write(self, decisions: dict[str, dict[str, Any]]) -> None:
        record = {"format": side_schemas.DECISIONS_FORMAT, "decisions": decisions}
        data = schemas.encode_record(record)
        side_schemas.load_decisions_record(data, self.path)  # never write what cannot be read
        write_atomic(check_confined(self.directory, DECISIONS_FILE), data)

    def __len__(self) -> int:
        return len(self.all())

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())

    def __repr__(self) -> str:
        found = self.all()
        counts = {a: sum(d["action"] == a for d in found.values()) for a in ACTIONS}
        return f"Decisions({self.path}: " + ", ".join(f"{n} {a}" for a, n in counts.items()) + ")"
