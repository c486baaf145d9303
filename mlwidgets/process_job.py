"""Training in a child process that outlives the kernel (`runner="process"`).

The child (`python -m mlwidgets.worker DIR`) runs in its own session and process group,
so restarting or losing the notebook's kernel does not stop it. Everything between the
two goes through the session directory, as for any other viewer: the state in
session.json, progress in events.jsonl, pause and stop requests in control.json, and
what the child prints in train.log. `ProcessJob` gives the same controls as `Job`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .distributed import launcher_command
from .events import EventType, Progress, RunState
from .files import open_for_append_confined
from .job import Job
from .record import LOG_FILE, SessionLock

if TYPE_CHECKING:
    from .record import SessionRecord

STARTUP_TIMEOUT = 300.0  # seconds for the child to import torch and take the session's lock
POLL_INTERVAL = 0.1  # seconds between looks at another process's lock and record


def worker_command(session_dir: str, data_root: str | None, processes: int) -> list[str]:
    """The command that trains `session_dir` in `processes` worker processes."""
    if processes > 1:
        return launcher_command(processes, session_dir, data_root)
    command = [sys.executable, "-m", "mlwidgets.worker", session_dir]
    return command + (["--data-root", data_root] if data_root else [])


class TrainingProcessError(RuntimeError):
    """The training process failed or died; the message holds its last lines."""


class ProcessJob:
    """A run in another process: `wait`, `pause`, `cancel`, `state`, `progress`, `result`.

    Made by `session.start(runner="process")`, or by `ProcessJob.attach(record)` for a run
    that some other process started (a kernel that was restarted, a terminal).
    """

    def __init__(self, record: SessionRecord, process: subprocess.Popen | None = None,
                 processes: int = 1):
        self.record = record
        self.process = process
        self.processes = processes  # data-parallel workers (see distributed.py)
        self.run = None  # no live run in this process

    @classmethod
    def attach(cls, record: SessionRecord) -> ProcessJob | None:
        """The job of a run another process is doing on `record`'s session, if any."""
        record.refresh()
        return cls(record) if record.state.is_active else None

    def start(self) -> None:
        """Start the child and return once it holds the session (or raise with its output)."""
        directory = self.record.directory
        if SessionLock(directory).is_held():
            raise RuntimeError(f"{directory} is being trained by another process or thread; "
                               "wait for it or stop it first")
        data_root = None if self.record.data_root is None else str(self.record.data_root)
        command = worker_command(str(directory), data_root, self.processes)
        self.record.refresh()
        runs_before = self._runs_started()
        log = open_for_append_confined(directory, LOG_FILE)
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        finally:
            os.close(log)
        threading.Thread(target=self.process.wait, daemon=True,  # reaps it: no zombie
                         name="mlwidgets-reap-child").start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._taken():
            if self.process.poll() is not None:
                self.record.refresh()
                if self._runs_started() > runs_before:  # it ran, and ended before we looked
                    return
                raise TrainingProcessError(self._failure("the training process ended at once"))
            if time.monotonic() > deadline:
                self.process.kill()
                raise TrainingProcessError(self._failure(
                    f"the training process did not start within {STARTUP_TIMEOUT:.0f} s"))
            time.sleep(POLL_INTERVAL)

    def _runs_started(self) -> int:
        return sum(1 for e in self.record.events
                   if e.get("type") == EventType.STATE and e.get("state") == RunState.RUNNING)

    def _taken(self) -> bool:
        """True once the child holds the lock and has said it runs."""
        if not SessionLock(self.record.directory).is_held():
            return False
        self.record.refresh()
        return self.record.stored_state.is_active or self.record.stored_state in (
            RunState.COMPLETED, RunState.PAUSED, RunState.CANCELLED, RunState.FAILED)

    @property
    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return self.record.trainer_pid

    @property
    def state(self) -> RunState:
        self.record.refresh()
        return self.record.state

    @property
    def done(self) -> bool:
        """True once nobody trains the session (the child releases its lock as its run
        ends, before it exits)."""
        return not SessionLock(self.record.directory).is_held()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        self.record.refresh()
        return True

    def pause(self, at_step: int | None = None) -> None:
        """Ask the child to stop after the next batch (or step `at_step`) with a checkpoint."""
        self.record.request("pause", at_step)

    def cancel(self) -> None:
        self.record.request("stop")

    @property
    def error(self) -> str | None:
        """Why the run failed or died, with the child's last lines; None if it did not."""
        state = self.state if self.done else RunState.RUNNING
        if state is RunState.FAILED:
            failed = [e for e in self.record.events if e.get("type") == EventType.STATE]
            return self._failure(failed[-1].get("error", "training failed") if failed
                                 else "training failed")
        if state is RunState.INTERRUPTED:
            return self._failure("the training process stopped without saying why")
        return None

    def _failure(self, what: str) -> str:
        tail = self.record.log_tail()
        return what + (":\n" + "\n".join(tail) if tail else "")

    @property
    def progress(self) -> Progress:
        self.record.refresh()
        reports = [e for e in self.record.events
                   if e.get("type") in (EventType.REPORT, EventType.CHECKPOINT, EventType.STATE)]
        last: dict[str, Any] = reports[-1] if reports else {}
        return Progress(self.record.state, last.get("phase", "initialized"),
                        last.get("iteration", 0), last.get("total_iterations", 0),
                        last.get("step", 0), last.get("elapsed", 0.0),
                        dict(last.get("metrics") or {}))

    @property
    def result(self) -> Any:
        """The classifier of the session's latest checkpoint, once the run has ended."""
        if not self.done:
            raise RuntimeError("the job is still running; call job.wait() first")
        error = self.error
        if error is not None:
            raise TrainingProcessError(f"training failed: {error}")
        if Job.make_result is None:
            raise RuntimeError("import mlwidgets.classifier to build the job's classifier")
        return Job.make_result(self.record.checkpoint("latest"))

    def __repr__(self) -> str:
        p = self.progress
        return (f"ProcessJob(pid {self.pid}, {p.state}, iteration {p.iteration}/"
                f"{p.total_iterations}, step {p.step})")
