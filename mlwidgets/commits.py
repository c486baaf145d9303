"""Checkpoint commits off the training thread, at most one in flight.

Training hands over a snapshot (tensors copied in memory) and goes on; a writer thread
serializes, hashes, writes, fsyncs and renames it (CheckpointStore.commit keeps every
guarantee: atomic, verified, listed only when whole). The next commit waits for the one
in flight, which bounds memory to one snapshot; `wait()` is called before anything reads
the checkpoints back (a new phase, a pause, the end of the run), and re-raises a failed
commit there, so a failure is never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class BackgroundCommits:
    """Run commit functions one at a time in a writer thread."""

    def __init__(self, name: str = "mlwidgets-commit"):
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, commit: Callable[[], Any]) -> None:
        """Wait for the commit in flight (raising its error), then start `commit`."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(commit,), name=self._name,
                                        daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until no commit is in flight; raise the error of one that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, commit: Callable[[], Any]) -> None:
        try:
            commit()
        except BaseException as e:  # re-raised by the next submit() or wait()
            self._error = e


def snapshot_of(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of tensors that training goes on changing in place."""
    return {k: v.detach().clone() for k, v in state.items()}


def optimizer_snapshot_of(state: dict[str, Any]) -> dict[str, Any]:
    """fastai's optimizer state, its tensors copied (the optimizer updates them in place)."""
    import torch

    return {"state": [{k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                       for k, v in s.items()} for s in state["state"]],
            "hypers": [dict(h) for h in state["hypers"]]}
