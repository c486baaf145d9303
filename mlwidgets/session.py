"""Training sessions and jobs (Create ML's `MLTrainingSession` and `MLJob`).

A session is a directory; everything a viewer needs is written there:

```
session.json    id, parameters, classes, data fingerprint, versions, state
data.json       the exact training / validation split (paths and labels)
events.jsonl    progress reports, checkpoint commits and state changes, one per line
checkpoints/    see checkpoints.py
```
`TrainingSession.restore(dir)` in any process gives the session back, and can resume it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import Checkpoint, CheckpointStore
from .data import DataSource, Item, split_items
from .files import append_json_line, end_partial_line, read_json, read_json_lines, write_json_atomic
from .job import Job, SessionLock
from .parameters import AUTO_VALIDATION, ModelParameters, SessionParameters

log = logging.getLogger(__name__)

SESSION_FILE, DATA_FILE, EVENTS_FILE = "session.json", "data.json", "events.jsonl"
FORMAT = "mlwidgets.session/1"
Observer = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Progress:
    """Where training stands (Create ML's `MLJob.progress`)."""

    state: str
    phase: str
    iteration: int
    total_iterations: int
    step: int
    elapsed: float
    metrics: dict[str, float | None] = field(default_factory=dict)
    remaining: float | None = None  # seconds, estimated from this run's pace

    @property
    def fraction_completed(self) -> float:
        return min(1.0, self.iteration / self.total_iterations) if self.total_iterations else 0.0


class TrainingSession:
    """A training session stored in `directory`. Make one with `create` or `restore`."""

    def __init__(self, directory: Path, record: dict[str, Any], split: tuple[list, list]):
        self.directory = directory
        self._record = record
        self.split: tuple[list[Item], list[Item]] = split
        self.store = CheckpointStore(directory / "checkpoints", record["id"])
        self.parameters = ModelParameters.from_dict(record["parameters"])
        self.session_parameters = SessionParameters.from_dict(record["session_parameters"])
        self._observers: list[Observer] = []
        self.observer_errors: list[str] = []
        self.events: list[dict[str, Any]] = [e for _, e in read_json_lines(self.events_path)]
        self.job: Job | None = None
        self._feature_key: dict[str, Any] | None = None

    # -- making and reopening ---------------------------------------------------------

    @classmethod
    def create(cls, data: DataSource, parameters: ModelParameters | None = None,
               session_dir: str | os.PathLike | None = None, *, report_interval: int = 1,
               checkpoint_interval: int = 1, iterations: int | None = None,
               keep_last: int | None = None, keep_best: int = 0,
               best_metric: str = "valid_loss",
               image_cache_mb: float | None = None) -> TrainingSession:
        """A new session for `data` in `session_dir` (which must be new or empty)."""
        parameters = parameters or ModelParameters()
        session_parameters = SessionParameters(
            report_interval=report_interval, checkpoint_interval=checkpoint_interval,
            iterations=iterations or parameters.max_iterations, keep_last=keep_last,
            keep_best=keep_best, best_metric=best_metric, image_cache_mb=image_cache_mb)
        directory = _new_session_dir(session_dir)
        train, valid = split_for(data, parameters)
        session_id = f"session-{uuid.uuid4().hex[:12]}"
        record = {
            "format": FORMAT, "id": session_id, "created_at": time.time(),
            "parameters": parameters.to_dict(),
            "session_parameters": session_parameters.to_dict(), "classes": data.classes,
            "data": {"origin": data.origin, "fingerprint": data.fingerprint(),
                     "train": len(train), "valid": len(valid), "skipped": len(data.skipped)},
            "versions": _versions(), "state": "initialized", "elapsed": 0.0,
        }
        write_json_atomic(directory / DATA_FILE, {
            "classes": data.classes,
            "train": [[str(i.path), i.label] for i in train],
            "valid": [[str(i.path), i.label] for i in valid],
            "skipped": [[str(p), reason] for p, reason in data.skipped],
        })
        write_json_atomic(directory / SESSION_FILE, record)  # last: its presence means complete
        return cls(directory, record, (train, valid))

    @classmethod
    def restore(cls, session_dir: str | os.PathLike) -> TrainingSession:
        """Reopen a session written by this or any other process."""
        directory = Path(session_dir).expanduser()
        record_path = directory / SESSION_FILE
        if not record_path.is_file():
            what = "does not exist" if not directory.exists() else f"has no {SESSION_FILE}"
            raise FileNotFoundError(f"{directory} {what}: it is not a training session")
        record = read_json(record_path)
        if record.get("format") != FORMAT:
            raise ValueError(f"{record_path} has unknown format {record.get('format')!r}")
        data = read_json(directory / DATA_FILE)
        split = ([Item(Path(p), label) for p, label in data["train"]],
                 [Item(Path(p), label) for p, label in data["valid"]])
        return cls(directory, record, split)

    # -- what the session holds ---------------------------------------------------------

    @property
    def id(self) -> str:
        return self._record["id"]

    @property
    def classes(self) -> list[str]:
        return list(self._record["classes"])

    @property
    def iterations(self) -> int:
        """The total iteration budget (raise it with `resume(iterations=...)`)."""
        return self.session_parameters.iterations or self.parameters.max_iterations

    def phase_budget(self, phase: str) -> int:
        """Iterations of `phase`. The main phase's budget is `iterations`."""
        p = self.parameters
        if phase == "extracting_features":  # train and validation passes, then the views
            return 2 + (p.feature_views if p.augmentation.enabled else 0)
        if phase == "fine_tuning" and p.algorithm == "transfer_learning":
            return p.fine_tune_iterations
        return self.iterations

    @property
    def is_complete(self) -> bool:
        """True when the last phase has trained all its iterations."""
        latest = self.latest_checkpoint
        last = self.parameters.phases[-1]
        return (latest is not None and latest.phase == last
                and latest.iteration >= self.phase_budget(last))

    def feature_key(self) -> dict[str, Any]:
        """What this session's extracted features depend on (see features.py)."""
        from .features import feature_key

        if self._feature_key is None:  # hashes the weights file: once per session
            self._feature_key = feature_key(self.parameters, self._record["data"]["fingerprint"])
        return self._feature_key

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

    @property
    def data_origin(self) -> str:
        """Where the images came from (a folder, for labelled directories)."""
        return self._record.get("data", {}).get("origin", "")

    def verification_images(self, limit: int = 50) -> list[Path]:
        """Up to `limit` validation images, spread evenly (training images if none), to
        check an export against."""
        train, valid = self.split
        items = valid or train
        step = max(1, len(items) // limit)
        return [item.path for item in items[::step]][:limit]

    @property
    def events_path(self) -> Path:
        return self.directory / EVENTS_FILE

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(s) for s in read_json(self.directory / DATA_FILE)["skipped"]]

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return self.store.all()

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self.store.latest()

    def best_checkpoint(self, metric: str = "valid_loss") -> Checkpoint:
        return self.store.best(metric)

    def checkpoint(self, which: str = "latest") -> Checkpoint:
        """A checkpoint by id, or "latest", or "best" (lowest validation loss)."""
        if which == "latest":
            found = self.latest_checkpoint
            if found is None:
                raise ValueError(f"session {self.directory} has no checkpoints yet")
            return found
        if which == "best":
            return self.best_checkpoint(self.session_parameters.best_metric)
        return self.store.get(which)

    @property
    def elapsed(self) -> float:
        run = self.job.run if self.job else None
        if run is not None and self.job.state == "running":
            return run.elapsed
        reports = [e["elapsed"] for e in self.events if "elapsed" in e]
        return max([self._record.get("elapsed", 0.0), *reports])

    @property
    def state(self) -> str:
        """initialized, running, paused, completed, cancelled, failed, or interrupted
        (a process died while training; resume continues from the last checkpoint)."""
        if self.job is not None:
            return self.job.state
        state = self._record["state"]
        if state == "running" and not SessionLock(self.directory).is_held():
            return "interrupted"
        return state

    @property
    def progress(self) -> Progress:
        run = self.job.run if self.job else None
        if run is not None and self.job.state == "running":
            done_here = run.completed_iterations - run.start_iteration
            remaining = None
            if done_here > 0:
                pace = (run.elapsed - run.elapsed_before) / done_here
                remaining = pace * (run.total_iterations - run.completed_iterations)
            return Progress("running", run.phase, run.completed_iterations,
                            run.total_iterations, run.step, run.elapsed, dict(run.metrics),
                            remaining)
        latest = self.latest_checkpoint
        state = self.state
        phase = "done" if state == "completed" else (latest.phase if latest else "initialized")
        total = self.phase_budget(latest.phase if latest else self.parameters.phases[0])
        return Progress(state, phase, latest.iteration if latest else 0, total,
                        latest.step_number if latest else 0, self.elapsed,
                        dict(latest.metrics) if latest else {})

    def refresh(self) -> None:
        """Re-read session.json and events.jsonl (for a session another process trains)."""
        self._record = read_json(self.directory / SESSION_FILE)
        self.session_parameters = SessionParameters.from_dict(self._record["session_parameters"])
        self.events = [e for _, e in read_json_lines(self.events_path)]

    # -- observing ---------------------------------------------------------------------

    def on_event(self, callback: Observer) -> Callable[[], None]:
        """Call `callback(event)` for every event; returns a function that unsubscribes.

        Events are dicts with a "type": "batch" (streamed loss, throttled), "progress"
        (decoding images or extracting features: task, done, total; throttled), "report",
        "checkpoint" or "state". A failing observer is logged and never stops training.
        """
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def emit(self, event: dict[str, Any], persist: bool = True) -> None:
        event = {**event, "time": time.time()}
        if persist:
            append_json_line(self.events_path, event)
            self.events.append(event)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception as e:  # an observer must never stop training
                log.exception("session observer %r failed", observer)
                self.observer_errors.append(f"{observer!r}: {type(e).__name__}: {e}")

    # -- training ---------------------------------------------------------------------

    def start(self) -> Job:
        """Train in a background thread from the latest checkpoint; returns the Job at once."""
        if self.job is not None and self.job.state == "running":
            raise RuntimeError("this session is already training; pause() or cancel() it first")
        if self.is_complete:
            raise ValueError(
                f"session {self.directory} has already trained all {self.iterations} iterations;"
                f" call resume(iterations={self.iterations + 5}) to train 5 more")
        end_partial_line(self.events_path)
        self.job = Job(self)
        self.job.start()
        return self.job

    def resume(self, iterations: int | None = None) -> Job:
        """Continue from the latest checkpoint; `iterations` raises the total budget."""
        if iterations is not None and iterations != self.iterations:
            latest = self.latest_checkpoint
            done = latest.iteration if latest else 0
            if iterations <= done:
                raise ValueError(f"iterations={iterations} is not more than the {done} "
                                 "iterations already trained")
            self.session_parameters = self.session_parameters.replace(iterations=iterations)
            self._record["session_parameters"] = self.session_parameters.to_dict()
            self.save_record()
        return self.start()

    def pause(self, wait: bool = True, timeout: float | None = None) -> Checkpoint | None:
        """Stop at the next batch, commit a checkpoint, and return it (when `wait`)."""
        if self.job is None or self.job.state != "running":
            return self.latest_checkpoint
        self.job.run.request_stop("pause")
        if wait:
            self.job.wait(timeout)
        return self.latest_checkpoint

    def cancel(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop at the next batch without a new checkpoint (committed ones stay)."""
        if self.job is not None:
            self.job.cancel()
            if wait:
                self.job.wait(timeout)

    def save_record(self, **changes: Any) -> None:
        self._record.update(changes)
        write_json_atomic(self.directory / SESSION_FILE, self._record)

    def __repr__(self) -> str:
        return (f"TrainingSession({str(self.directory)!r}, {self.state}, "
                f"{len(self.checkpoints)} checkpoints, classes={self.classes})")


def _new_session_dir(session_dir: str | os.PathLike | None) -> Path:
    if session_dir is None:
        session_dir = Path("sessions") / time.strftime("session-%Y%m%d-%H%M%S")
    directory = Path(session_dir).expanduser()
    if (directory / SESSION_FILE).exists():
        raise FileExistsError(
            f"{directory} already holds a training session; reopen it with "
            "TrainingSession.restore(...) or choose a new directory")
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty; choose a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def split_for(data: DataSource, parameters: ModelParameters) -> tuple[list[Item], list[Item]]:
    """The training / validation split `TrainingSession.create` makes for `parameters`."""
    v = parameters.validation
    if isinstance(v, DataSource):
        unknown = sorted(set(v.classes) - set(data.classes))
        if unknown:
            raise ValueError(f"validation data has classes the training data lacks: {unknown}")
        return list(data.items), list(v.items)
    if v == "none":
        return list(data.items), []
    fraction = AUTO_VALIDATION if v == "auto" else float(v)
    return split_items(data.items, fraction, parameters.seed)


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("mlwidgets", "torch", "torchvision", "fastai"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
