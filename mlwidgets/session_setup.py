"""Create ML's session rules that are not training itself: restoring instead of creating,
and removing checkpoints. Used by `TrainingSession` (passed in: this module sits below it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .data import DataSource
from .parameters import ModelParameters

SESSION_FILE = "session.json"


def restore_if_same(cls: Any, data: DataSource, parameters: ModelParameters,
                    directory: str | os.PathLike | None) -> Any:
    """The session already in `directory` (restored with `cls`), or None when there is none:
    Create ML's `makeTrainingSession` "creates or restores".

    The session must have been made with the same parameters and data; a different request
    is refused (FileExistsError naming what differs) instead of silently training
    something else, or replacing what is there.
    """
    if directory is None or not (Path(directory).expanduser() / SESSION_FILE).is_file():
        return None
    session = cls.restore(directory)
    require_same_training(session.parameters, parameters, session.directory)
    if session.data_fingerprint != data.fingerprint():
        raise FileExistsError(
            f"{session.directory} already holds a training session on other data than "
            f"{data.origin} (or its images changed since); choose a new session directory, "
            "or reopen it as it is with TrainingSession.restore(...)")
    return session


def require_same_training(stored: ModelParameters, asked: ModelParameters, where: Any) -> None:
    """FileExistsError naming the parameters that differ between a stored session and a request."""
    a, b = stored.to_dict(), asked.to_dict()
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} asked" for k in differ[:4])
        raise FileExistsError(
            f"{where} already holds a training session with other parameters ({shown}); "
            "choose a new session directory, or reopen it as it is with "
            "TrainingSession.restore(...)")


def remove_checkpoints(session: Any, which: Callable[[Any], bool] | Iterable[Any]) -> list[str]:
    """Delete the checkpoints `which` selects: a predicate on each Checkpoint (Create ML's
    `removeCheckpoints(_:)`), or identifiers as `session.checkpoint` takes them.

    Refused while the session trains. Returns the ids removed; nothing else is touched.
    """
    if session.state.is_active:
        raise RuntimeError(f"{session.directory} is training; pause it before removing "
                           "checkpoints")
    if callable(which):
        doomed = [c for c in session.checkpoints if which(c)]
    else:
        if isinstance(which, (str, int)):
            which = [which]
        doomed = [session.checkpoint(w) for w in which]
    removed: list[str] = []
    for checkpoint in doomed:
        if checkpoint.id not in removed:
            session.store.delete(checkpoint.id)
            removed.append(checkpoint.id)
    return removed

