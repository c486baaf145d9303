"""Training sessions (Create ML's `MLTrainingSession`): the facade a user talks to.

A session is a directory (see record.py for what it holds). `TrainingSession.create`
makes one, `TrainingSession.restore(dir)` reopens it in any process, and `start`,
`pause`, `resume`, `cancel` and `train_more` run it through a `Job` (job.py), which
trains with a `TrainingRun` (trainer.py). The state is stored in the directory, so a
viewer in another process sees the same states.

Run states (`mlwidgets.events.RunState`) and what each allows:

| state        | meaning                                         | allows              |
| ------------ | ----------------------------------------------- | ------------------- |
| initialized  | made, never trained                             | start               |
| running      | a job trains it                                 | pause, stop         |
| pausing      | a pause was asked; its checkpoint is on the way | stop                |
| paused       | stopped with a checkpoint; resume continues     | resume, train_more  |
| completed    | every phase trained its budget                  | train_more          |
| cancelled    | stopped without a new checkpoint                | resume, train_more  |
| failed       | an exception ended the run (see the error)      | resume, train_more  |
| interrupted  | the training process died (computed, not stored)| resume, train_more  |

Exact resume: every session is seeded (`ModelParameters.seed`, default 0). On a CPU, a
run paused at any batch and resumed, in this process or after a restart, ends with the
same weights, checkpoints and metrics as a run that was never paused (the same number
of training processes and torch threads; a GPU's nondeterministic kernels break it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .checkpoint_store import CheckpointStore
from .checkpoint_styles import find
from .checkpoints import Checkpoint
from .data import DataSource, Item
from .events import Observer, Progress, RunState
from .job import Job
from .parameters import ModelParameters, SessionParameters
from .process_job import ProcessJob
from .record import SessionRecord
from .session_insight import SessionInsight
from .session_setup import remove_checkpoints, restore_if_same

# Where training runs: a thread of this process, or a child process that outlives it.
RUNNERS = ("thread", "process")
MAX_PROCESSES = 256  # data-parallel workers on one machine


class TrainingSession(SessionInsight):
    """A training session stored in `directory`. Make one with `create` or `restore`."""

    def __init__(self, record: SessionRecord):
        self.record = record
        self.job: Job | ProcessJob | None = None

    # -- making and reopening ---------------------------------------------------------

    @classmethod
    def create(cls, data: DataSource, parameters: ModelParameters | None = None,
               session_dir: str | os.PathLike | SessionParameters | None = None, *,
               report_interval: int = 1,
               checkpoint_interval: int = 1, iterations: int | None = None,
               keep_last: int | None = None, keep_best: int = 0,
               best_metric: str = "valid_loss",
               image_cache_mb: float | None = None) -> TrainingSession:
        """A session for `data` in `session_dir`: a new one (in a new or empty directory;
        default: under sessions/), or the one already there, as Create ML's
        `makeTrainingSession` creates or restores. An existing session made with other
        parameters or data is refused (FileExistsError naming the difference).

        `session_dir` may be a SessionParameters (Create ML's
        `MLTrainingSessionParameters`): its `session_directory` and settings are used, and
        the keyword settings here are ignored. A restored session keeps its own settings.
        """
        parameters = parameters or ModelParameters()
        if isinstance(session_dir, SessionParameters):
            session_parameters = session_dir
        else:
            session_parameters = SessionParameters(
                session_directory=None if session_dir is None else str(session_dir),
                report_interval=report_interval, checkpoint_interval=checkpoint_interval,
                iterations=iterations, keep_last=keep_last, keep_best=keep_best,
                best_metric=best_metric, image_cache_mb=image_cache_mb)
        directory = session_parameters.session_directory
        existing = restore_if_same(cls, data, parameters, directory)
        if existing is not None:
            return existing
        # The directory is where the session lives, not a setting stored inside it.
        session_parameters = session_parameters.replace(
            session_directory=None,
            iterations=session_parameters.iterations or parameters.max_iterations)
        return cls(SessionRecord.create(data, parameters, session_parameters, directory))

    @classmethod
    def restore(cls, session_dir: str | os.PathLike | SessionParameters,
                data_root: str | os.PathLike | None = None) -> TrainingSession:
        """Reopen a session written by this or any other process (`session_dir` may be a
        SessionParameters naming its `session_directory`).

        Image paths must lie in the data folders recorded when the session was made;
        `data_root` takes the images from another folder instead (they moved, or someone
        sent you the session): paths below their recorded folder are taken from it."""
        if isinstance(session_dir, SessionParameters):
            if session_dir.session_directory is None:
                raise ValueError("restore needs SessionParameters(session_directory=...)")
            session_dir = session_dir.session_directory
        session = cls(SessionRecord.open(session_dir, data_root))
        session.job = ProcessJob.attach(session.record)  # a run another process does
        return session

    def refresh(self) -> None:
        """Re-read the session's files (for a session another process trains)."""
        self.record.refresh()

    # -- what the session holds ---------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self.record.directory

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def parameters(self) -> ModelParameters:
        return self.record.parameters

    @property
    def session_parameters(self) -> SessionParameters:
        """How it reports and checkpoints; `session_directory` is where it is now."""
        return self.record.session_parameters.replace(session_directory=str(self.directory))

    @property
    def split(self) -> tuple[list[Item], list[Item]]:
        return self.record.split

    @property
    def store(self) -> CheckpointStore:
        return self.record.store

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.record.events

    @property
    def batch_losses(self) -> list[tuple[float, float]]:
        """(step, loss) of the training batches so far, thinned to at most 2,000 points a
        phase (see batch_losses.py), as committed with the latest checkpoint."""
        from .batch_losses import BatchLosses

        return BatchLosses.load(self.directory).points()

    @property
    def events_path(self) -> Path:
        return self.record.events_path

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.record.skipped

    @property
    def data_origin(self) -> str:
        """Where the images came from (a folder, for labelled directories)."""
        return self.record.data_origin

    @property
    def data_fingerprint(self) -> str:
        return self.record.fingerprint

    @property
    def iterations(self) -> int:
        """The total iteration budget (raise it with `train_more(n)` or `resume(iterations=)`)."""
        return self.record.iterations

    def phase_budget(self, phase: str) -> int:
        return self.record.phase_budget(phase)

    @property
    def is_complete(self) -> bool:
        return self.record.is_complete

    def feature_key(self) -> dict[str, Any]:
        return self.record.feature_key()

    def reuse_extracted_features(self, source: TrainingSession | str | os.PathLike) -> None:
        """Take `source`'s extracted features instead of extracting them again.

        Create ML's `reuseExtractedFeatures(from:)`: only before this session has any
        checkpoint, and only features of the same data, backbone, weights, image size and
        augmented views (anything else would train on the wrong features).
        """
        from . import features

        if self.checkpoints:
            raise ValueError(f"{self.directory} already has checkpoints; features can only be "
                             "reused before a session starts training")
        if not isinstance(source, TrainingSession):
            source = TrainingSession.restore(source)
        found = features.find(source.directory / features.FEATURES_DIR, self.feature_key())
        if found is None:
            raise ValueError(f"{source.directory} has no features extracted from the same "
                             "data, backbone, weights, image size and augmented views as "
                             f"{self.directory}")
        features.copy_into(found, self.directory / features.FEATURES_DIR)

    def verification_images(self, limit: int = 50) -> list[Path]:
        """Up to `limit` validation images, spread evenly (training images if none), to
        check an export against."""
        train, valid = self.split
        items = valid or train
        step = max(1, len(items) // limit)
        return [item.path for item in items[::step]][:limit]

    # -- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return self.store.all()

    @property
    def damaged_checkpoints(self) -> dict[str, str]:
        """The checkpoints that cannot be used, by id, each with one line saying why and
        naming the file: a viewer lists them as damaged instead of hiding them."""
        return self.checkpoint_listing()[1]

    def checkpoint_listing(self) -> tuple[list[Checkpoint], dict[str, str]]:
        """`checkpoints` and `damaged_checkpoints` from one look at the folder."""
        usable = self.store.all()
        return usable, {name: str(error) for name, error in sorted(self.store.damaged.items())}

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self.store.latest()

    def best_checkpoint(self, metric: str | None = None) -> Checkpoint:
        """The best whole checkpoint by `metric` (default: the session's best_metric)."""
        return self.store.best(metric or self.session_parameters.best_metric)

    def checkpoint(self, which: str | int = "latest") -> Checkpoint:
        """A checkpoint by any identifier the checkpoint styles print: its id (the OpenAI
        `id` too), the OpenAI `fine_tuned_model_checkpoint`, its Create ML `url`, an
        iteration number, "latest", or "best" (by the session's best_metric)."""
        checkpoints = self.checkpoints
        if str(which) in self.store.damaged:  # damaged, not unknown: say so, naming the file
            raise self.store.damaged[str(which)]
        return find(checkpoints, which, self.best_checkpoint, str(self.directory))

    def remove_checkpoints(self, which: Callable[[Checkpoint], bool] | Iterable[str | int]
                           ) -> list[str]:
        """Delete the checkpoints `which` selects: a predicate on each checkpoint (Create
        ML's `removeCheckpoints(_:)`), or identifiers as `checkpoint` takes them. Refused
        while training; returns the ids removed."""
        return remove_checkpoints(self, which)

    # -- state and progress ---------------------------------------------------------------

    @property
    def trains_here(self) -> bool:
        """Whether a thread of this process has trained it since it was opened: its state
        and counters are then live here; otherwise another process may change them."""
        return isinstance(self.job, Job)

    @property
    def state(self) -> RunState:
        """Where training stands (see the table in this module's docstring)."""
        if not self.trains_here:  # another process may have changed it
            self.record.refresh(events=False)
        return self.record.state

    @property
    def elapsed(self) -> float:
        if self.trains_here and not self.job.done:
            return self.job.run.elapsed
        return self.record.elapsed

    @property
    def progress(self) -> Progress:
        if self.job is not None and not self.job.done:
            return self.job.progress
        latest = self.latest_checkpoint
        state = self.state
        phase = "done" if state is RunState.COMPLETED else (
            latest.phase if latest else "initialized")
        total = self.phase_budget(latest.phase if latest else self.parameters.phases[0])
        return Progress(state, phase, latest.iteration if latest else 0, total,
                        latest.step_number if latest else 0, self.elapsed,
                        dict(latest.metrics) if latest else {})

    def on_event(self, callback: Observer) -> Callable[[], None]:
        """Call `callback(event)` for every event; returns a function that unsubscribes.

        Events are dicts typed in `mlwidgets.events`: "batch" (streamed loss, throttled),
        "progress" (decoding images or extracting features; throttled), "report",
        "checkpoint" and "state". A failing observer is logged (and kept in
        `observer_errors`) and never stops training or the other observers.
        """
        return self.record.observers.subscribe(callback)

    @property
    def observer_errors(self) -> list[str]:
        return self.record.observers.errors

    # -- training ---------------------------------------------------------------------

    def start(self, runner: str = "thread", processes: int = 1) -> Job | ProcessJob:
        """Train from the latest checkpoint; returns the job at once.

        `runner="thread"` (the default) trains in a background thread of this process;
        `runner="process"` in a child process that outlives this kernel (see process_job.py):
        the same controls, through the session directory. `processes=N` (with
        runner="process") trains data-parallel in N worker processes (see distributed.py).
        """
        if not isinstance(processes, int) or not 1 <= processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be a whole number from 1 to {MAX_PROCESSES}, "
                             f"got {processes!r}")
        if processes > 1 and runner != "process":
            raise ValueError("data-parallel training runs in worker processes: pass "
                             f'runner="process" with processes={processes}')
        if runner not in RUNNERS:
            raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
        if self.job is not None and not self.job.done:
            raise RuntimeError("this session is already training; pause() or cancel() it first")
        if self.is_complete:
            raise ValueError(
                f"session {self.directory} has already trained all {self.iterations} iterations;"
                " call train_more(5) to train 5 more")
        job = Job(self.record) if runner == "thread" else ProcessJob(self.record,
                                                                     processes=processes)
        job.start()
        self.job = job
        return job

    def resume(self, iterations: int | None = None, runner: str = "thread",
               processes: int = 1) -> Job | ProcessJob:
        """Continue from the latest checkpoint (exactly where a pause stopped);
        `iterations` sets a new total budget for the main phase."""
        if iterations is not None and iterations != self.iterations:
            latest = self.latest_checkpoint
            done = latest.iteration if latest and latest.phase == self._main_phase else 0
            if iterations <= done:
                raise ValueError(f"iterations={iterations} is not more than the {done} "
                                 "iterations already trained")
            self.record.set_iterations(iterations)
        return self.start(runner, processes)

    def train_more(self, iterations: int, runner: str = "thread") -> Job | ProcessJob:
        """Raise the main phase's budget by `iterations` and continue training."""
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"train_more needs a whole number of iterations >= 1, "
                             f"got {iterations!r}")
        latest = self.latest_checkpoint
        done = latest.iteration if latest and latest.phase == self._main_phase else 0
        return self.resume(iterations=max(self.iterations, done) + iterations, runner=runner)

    @property
    def _main_phase(self) -> str:
        """The phase whose budget is `iterations` (training, or fine-tuning for fine_tune)."""
        phases = self.parameters.phases
        return "fine_tuning" if phases == ["fine_tuning"] else "training"

    def pause(self, wait: bool = True, timeout: float | None = None,
              at_step: int | None = None) -> Checkpoint | None:
        """Stop after the next batch (or right after optimizer step `at_step`) and commit a
        checkpoint there; returns it when `wait` (the latest checkpoint otherwise).

        A session trained by another process is asked through its control file."""
        if self.job is not None and not self.job.done:
            self.job.pause(at_step)
            if wait:
                self.job.wait(timeout)
            return self.latest_checkpoint
        self.refresh()
        if self.state is RunState.RUNNING:  # trained elsewhere: ask through the directory
            self.record.request("pause", at_step)
            return None
        return self.latest_checkpoint

    def cancel(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the next batch without a new checkpoint (committed ones stay)."""
        if self.job is not None and not self.job.done:
            self.job.cancel()
            if wait:
                self.job.wait(timeout)
            return
        self.refresh()
        if self.state.is_active:
            self.record.request("stop")

    def __repr__(self) -> str:
        return (f"TrainingSession({str(self.directory)!r}, {self.state}, "
                f"{len(self.checkpoints)} checkpoints, classes={self.classes})")
