"""A running training (Create ML's `MLJob`): the lock, the thread, and the run-state changes.

The state lives in the session record (session.json); the job is the only writer of
state changes while it runs. Requests reach the run in memory from this process, and
through the session's control file from any other (see record.py).

States of one run:  running -> completed
                    running -> pausing -> paused
                    running -> cancelled            (stop)
                    running -> failed               (an exception; the error is kept)
A process that dies leaves `running`, which readers see as `interrupted`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import EventType, Progress, RunState
from .malloc import tune_for_training
from .record import SessionLock

if TYPE_CHECKING:
    from .classifier import ImageClassifier
    from .record import SessionRecord


class Job:
    """One training run in a background thread: `wait`, `pause`, `cancel`, `state`,
    `progress`, `result`."""

    # How `result` builds the classifier from a checkpoint. ImageClassifier sits above the
    # job (it trains through sessions), so classifier.py sets this when it is imported
    # instead of the job importing it: the layers stay one-way.
    make_result: Callable[[Any], ImageClassifier] | None = None

    def __init__(self, record: SessionRecord):
        # Imported here, in the caller's thread, so fastai loads before training starts.
        from .trainer import TrainingRun

        self.record = record
        self.run = TrainingRun(record)
        self.run.on_request = self._requested_elsewhere
        self.error: BaseException | None = None
        self._lock = SessionLock(record.directory)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"mlwidgets-train-{record.id}")

    def start(self) -> None:
        """Take the session's lock (an error here if another process trains it), then train."""
        self._lock.acquire()
        try:
            self.record.store.open_for_writing()
            self.record.clear_request()  # a request left from an earlier run is stale
            self.record.end_partial_event_line()
            self._change_state(RunState.RUNNING, pid=os.getpid())
        except BaseException:
            self._lock.release()
            raise
        self._thread.start()

    @property
    def state(self) -> RunState:
        return self.record.stored_state

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def progress(self) -> Progress:
        return self.run.progress(self.state)

    @property
    def model(self) -> Any:
        """The live network being trained (None before the run builds it)."""
        return self.run.model

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or `timeout` seconds pass (False)."""
        return self._done.wait(timeout)

    def pause(self, at_step: int | None = None) -> None:
        """Stop after the next batch (or after optimizer step `at_step`) with a checkpoint."""
        if self.state is not RunState.RUNNING:
            return
        self.run.request_stop("pause", at_step)
        self._change_state(RunState.PAUSING)

    def _requested_elsewhere(self, reason: str) -> None:
        if reason == "pause" and self.state is RunState.RUNNING:
            self._change_state(RunState.PAUSING)

    def cancel(self) -> None:
        """Stop after the next batch without a new checkpoint (committed ones stay)."""
        if not self.done:
            self.run.request_stop("cancel")

    @property
    def result(self) -> ImageClassifier:
        """The classifier of the session's latest checkpoint, once the job has ended."""
        if not self.done:
            raise RuntimeError("the job is still running; call job.wait() first")
        if self.error is not None:
            raise RuntimeError(f"training failed: {_describe(self.error)}") from self.error
        if Job.make_result is None:  # only when mlwidgets.classifier was never imported
            raise RuntimeError("import mlwidgets.classifier to build the job's classifier")
        return Job.make_result(self.record.checkpoint("latest"))

    def __repr__(self) -> str:
        p = self.progress
        return f"Job({self.state}, iteration {p.iteration}/{p.total_iterations}, step {p.step})"

    def _main(self) -> None:
        error = None
        try:
            tune_for_training()  # fewer page faults per batch on Linux (see malloc.py)
            self.run.run()
        except BaseException as e:  # reported through state, event and job.error
            error = e
        self._finish(error)

    def _final_state(self, error: BaseException | None) -> RunState:
        if error is not None:
            return RunState.FAILED
        if self.record.is_complete:
            return RunState.COMPLETED
        reason = self.run.stop_reason
        return RunState.CANCELLED if reason == "cancel" else RunState.PAUSED \
            if reason == "pause" else RunState.COMPLETED

    def _finish(self, error: BaseException | None) -> None:
        try:
            self.error = error
            extra: dict[str, Any] = {}
            if error is not None:
                extra["error"] = _describe(error)
            if self.run.note and self.run.stop_reason:
                extra["note"] = self.run.note
            self._change_state(self._final_state(error), pid=None,
                               elapsed=self.run.elapsed, **extra)
        finally:
            self.record.clear_request()
            self._lock.release()
            self._done.set()

    def _change_state(self, state: RunState, **fields: Any) -> None:
        run = self.run
        record_fields = {k: v for k, v in fields.items() if k in ("pid", "elapsed")}
        self.record.save(state=state.value, **record_fields)
        event = {"type": EventType.STATE.value, "state": state.value, "phase": run.phase,
                 "iteration": run.completed_iterations,
                 "total_iterations": run.total_iterations, "step": run.step,
                 "elapsed": round(run.elapsed, 3)}
        event.update({k: v for k, v in fields.items() if k in ("error", "note")})
        self.record.publish(event)


def _describe(error: BaseException) -> str:
    """`Type: message`, never an empty message."""
    text = str(error).strip() or repr(error)
    return f"{type(error).__name__}: {text}"
