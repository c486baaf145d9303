"""Create ML's session calls that are not training itself: create-or-restore, and removing
checkpoints. Thin rules over `TrainingSession` (passed in, so this module sits below it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .checkpoint_styles import find
from .data import DataSource
from .parameters import ModelParameters, SessionParameters

SESSION_FILE = "session.json"


def create_or_restore(cls: Any, data: DataSource, parameters: ModelParameters,
                      session_parameters: SessionParameters) -> Any:
    """A new session in `session_parameters.session_directory`, or the one already there
    (Create ML's `makeTrainingSession`: "creates or restores").

    Restoring checks that the session was made with the same parameters and data; a
    different request is refused (ValueError naming what differs) instead of silently
    training something else. A restored session keeps its own session parameters.
    """
    directory = Path(session_parameters.session_directory or "")
    if not session_parameters.session_directory or not (directory / SESSION_FILE).is_file():
        sp = session_parameters
        return cls.create(data, parameters, sp.session_directory,
                          report_interval=sp.report_interval,
                          checkpoint_interval=sp.checkpoint_interval, iterations=sp.iterations,
                          keep_last=sp.keep_last, keep_best=sp.keep_best,
                          best_metric=sp.best_metric, image_cache_mb=sp.image_cache_mb)
    session = cls.restore(directory)
    require_same_training(session.parameters, parameters, directory)
    stored = session.data_fingerprint
    if stored and stored != data.fingerprint():
        raise ValueError(f"{directory} holds a session trained on other data than "
                         f"{data.origin} (or the images changed since); choose a new "
                         "session_directory, or restore this one with restore_training_session")
    return session


def require_same_training(stored: ModelParameters, asked: ModelParameters, where: Any) -> None:
    """ValueError naming the parameters that differ between a stored session and a request."""
    a, b = stored.to_dict(), asked.to_dict()
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} asked" for k in differ[:4])
        raise ValueError(f"{where} already holds a session with other parameters ({shown}); "
                         "choose a new session_directory, or restore it as it is")


def remove_checkpoints(session: Any, which: Callable[[Any], bool] | Iterable[Any]) -> list[str]:
    """Delete the checkpoints `which` selects: a predicate on each Checkpoint (Create ML's
    `removeCheckpoints(_:)`), or identifiers as `session.checkpoint` takes them.

    Refused while the session trains. Returns the ids removed; nothing else is touched.
    """
    if session.job is not None and session.job.state == "running":
        raise RuntimeError("this session is training; pause() it before removing checkpoints")
    found = session.checkpoints
    if callable(which):
        doomed = [c for c in found if which(c)]
    else:
        if isinstance(which, (str, int)):
            which = [which]
        doomed = [find(found, w, _best(session), str(session.directory))
                  for w in which]
    removed: list[str] = []
    for checkpoint in doomed:
        if checkpoint.id not in removed:
            session.store.delete(checkpoint.id)
            removed.append(checkpoint.id)
    return removed


def _best(session: Any) -> Callable[[], Any]:
    return lambda: session.best_checkpoint(session.session_parameters.best_metric)
