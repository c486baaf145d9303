"""A running training (Create ML's `MLJob`) and the lock that lets only one run at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .malloc import tune_for_training

if TYPE_CHECKING:
    from .classifier import ImageClassifier
    from .session import Progress, TrainingSession

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one trainer per session is then on the user
    fcntl = None  # type: ignore[assignment]


class SessionLock:
    """An advisory lock on `<session>/.lock`, held while a process trains the session.

    The operating system drops it when the process dies, so a session whose record
    says "running" but whose lock is free was interrupted.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RuntimeError(
                f"{self.path.parent} is being trained by another process or thread; "
                "wait for it or stop it first") from None

    @property
    def acquired(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def is_held(self) -> bool:
        if fcntl is None or not self.path.exists():
            return False
        probe = SessionLock(self.path.parent)
        try:
            probe.acquire()
        except RuntimeError:
            return True
        probe.release()
        return False


class Job:
    """One training run in a background thread: `wait`, `cancel`, `state`, `progress`, `result`."""

    def __init__(self, session: TrainingSession):
        # Imported here, in the caller's thread, so fastai loads before training starts.
        from .trainer import TrainingRun

        self.session = session
        self.run = TrainingRun(session)
        self.error: BaseException | None = None
        self._state = "running"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"mlwidgets-train-{session.id}")

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> str:
        """running, then paused, completed, cancelled or failed."""
        return self._state

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def progress(self) -> Progress:
        return self.session.progress

    @property
    def model(self) -> Any:
        """The live network being trained (None before the run builds it)."""
        return self.run.model

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or `timeout` seconds pass (False)."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        self.run.request_stop("cancel")

    def pause(self) -> None:
        self.run.request_stop("pause")

    @property
    def result(self) -> ImageClassifier:
        """The classifier of the session's latest checkpoint, once the job has ended."""
        from .classifier import ImageClassifier

        if not self.done:
            raise RuntimeError("the job is still running; call job.wait() first")
        if self.error is not None:
            raise RuntimeError(f"training failed: {self.error}") from self.error
        return ImageClassifier.from_checkpoint(self.session.checkpoint("latest"))

    def __repr__(self) -> str:
        p = self.progress
        return f"Job({self.state}, iteration {p.iteration}/{p.total_iterations}, step {p.step})"

    def _main(self) -> None:
        lock = SessionLock(self.session.directory)
        state, error = "failed", None
        try:
            lock.acquire()
            tune_for_training()  # fewer page faults per batch on Linux (see malloc.py)
            self.session.store.open_for_writing()
            self.session.save_record(state="running", pid=os.getpid())
            self.session.emit(self._state_event("running"))
            self.run.run()
            state = {"pause": "paused", "cancel": "cancelled"}.get(self.run.stop_reason or "",
                                                                    "completed")
        except BaseException as e:  # reported through state, event and job.error
            error = e
        finally:
            self._finish(state, error, lock)

    def _finish(self, state: str, error: BaseException | None, lock: SessionLock) -> None:
        try:
            if lock.acquired:
                self.session.save_record(state=state, pid=None, elapsed=self.run.elapsed)
            self.error, self._state = error, state
            event = self._state_event(state)
            if error is not None:
                event["error"] = f"{type(error).__name__}: {error}"
            self.session.emit(event, persist=lock.acquired)
        finally:
            lock.release()
            self._done.set()

    def _state_event(self, state: str) -> dict[str, Any]:
        run = self.run
        return {"type": "state", "state": state, "phase": run.phase,
                "iteration": run.completed_iterations, "total_iterations": run.total_iterations,
                "step": run.step, "elapsed": round(run.elapsed, 3)}
