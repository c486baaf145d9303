"""Checkpoint commits off the training thread, at most one in flight.

Training hands over a snapshot (tensors copied in memory) and goes on; a writer thread
serializes, hashes, writes, fsyncs and renames it (CheckpointStore.commit keeps every
guarantee: atomic, verified, listed only when whole). The next commit waits for the one
in flight, which bounds memory to one snapshot (a small snapshot is written at once, on the
training thread: see SMALL_SNAPSHOT_BYTES); `wait()` is called before anything reads
the checkpoints back (a new phase, a pause, the end of the run), and re-raises a failed
commit there, so a failure is never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# A snapshot this small is written faster than it is handed over: a writer thread takes
# the GIL back after each of a commit's ~30 system calls, up to 5 ms each (Python's switch
# interval) while training holds it, so a 30 kB classifier head took 15-20 ms in the
# background and 2 ms written at once.
SMALL_SNAPSHOT_BYTES = 1 << 20


def snapshot_bytes(*states: dict[str, Any]) -> int:
    """The bytes of the tensors in snapshots (nested in lists and dicts too)."""
    import torch

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(state) for state in states)


class BackgroundCommits:
    """Run commit functions one at a time in a writer thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, commit: Callable[[], Any], nbytes: int | None = None) -> None:
        """Wait for the commit in flight (raising its error), then start `commit`; one of
        a snapshot under SMALL_SNAPSHOT_BYTES (`nbytes`) runs here and now instead."""
        self.wait()
        if nbytes is not None and nbytes < SMALL_SNAPSHOT_BYTES:
            commit()
            return
        self._thread = threading.Thread(target=self._run, args=(commit,), name="mlwidgets-commit",
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
    """A copy, in host memory, of tensors that training goes on changing in place (on a
    GPU, a copy there would cost GPU memory and be copied to the host again to be written)."""
    return {k: _host_copy(v) for k, v in state.items()}


def optimizer_snapshot_of(state: dict[str, Any]) -> dict[str, Any]:
    """fastai's optimizer state, its tensors copied (the optimizer updates them in place)."""
    import torch

    return {"state": [{k: _host_copy(v) if isinstance(v, torch.Tensor) else v
                       for k, v in s.items()} for s in state["state"]],
            "hypers": [dict(h) for h in state["hypers"]]}


def _host_copy(tensor: Any) -> Any:
    return tensor.detach().to("cpu", copy=True)
