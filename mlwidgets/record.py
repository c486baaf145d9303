"""The session directory as data: readable and writable from any process, no threads.

```
session.json    id, parameters, classes, data fingerprint, versions, state
data.json       the exact training / validation split (paths and labels)
events.jsonl    progress reports, checkpoint commits and state changes, one per line
control.json    a pause or stop request for whichever process trains the session
train.log       what a training process of runner="process" printed (its errors)
.lock           held (flock) by the process that trains the session
checkpoints/    see checkpoints.py
```
The run state is stored in one place, session.json; `interrupted` is computed (a stored
running state whose lock nobody holds). A pause or stop is asked for through
control.json, so it reaches a trainer in this process or in any other.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import schemas, side_schemas
from .checkpoint_store import CheckpointStore
from .checkpoints import Checkpoint
from .data import DataSource, Item, recorded_split, split_items
from .errors import SessionError, UnsafeFileError
from .events import Observers, RunState
from .files import (
    append_json_line,
    end_partial_line,
    read_confined,
    read_json_lines,
    tail_confined,
    write_atomic,
    write_json_atomic,
)
from .parameters import AUTO_VALIDATION, ModelParameters, SessionParameters

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one trainer per session is then on the user
    fcntl = None  # type: ignore[assignment]

SESSION_FILE, DATA_FILE, EVENTS_FILE = "session.json", "data.json", "events.jsonl"
CONTROL_FILE, LOCK_FILE = "control.json", ".lock"
LOG_FILE = "train.log"  # what a training process of runner="process" printed
FORMAT = "mlwidgets.session/1"
DEFAULT_SESSIONS_DIR = Path("sessions")
CONTROL_ACTIONS = ("pause", "stop")


class SessionLock:
    """An advisory lock on `<session>/.lock`, held while a process trains the session.

    The operating system drops it when the process dies, so a session whose record
    says "running" but whose lock is free was interrupted.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        # Never through a symlink, never blocking on a FIFO: a lock file is ours or refused.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                           | getattr(os, "O_NONBLOCK", 0), 0o644)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = None
            raise UnsafeFileError("a special file where the lock file belongs", self.path,
                                  "remove it; only regular files are used")
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


def default_session_dir(kind: str = "session") -> Path:
    """Where a session goes when no directory is given: sessions/<kind>-<date>-<time>,
    with a short random suffix when that folder is taken (two sessions in one second)."""
    name = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = DEFAULT_SESSIONS_DIR / name
    while directory.exists():
        directory = DEFAULT_SESSIONS_DIR / f"{name}-{uuid.uuid4().hex[:6]}"
    return directory


class SessionRecord:
    """One session directory: its record, split, checkpoints, events and control file."""

    def __init__(self, directory: Path, record: dict[str, Any], split: tuple[list, list]):
        self.directory = directory
        self._record = record
        self.data_root: Path | None = None  # where the images were rebased to, if anywhere
        self.split: tuple[list[Item], list[Item]] = split
        self.store = CheckpointStore(directory / "checkpoints", record["id"])
        self.parameters = ModelParameters.from_dict(record["parameters"])
        self.session_parameters = SessionParameters.from_dict(record["session_parameters"])
        self.observers = Observers()
        self.events: list[dict[str, Any]] = [
            e for _, e in read_json_lines(self.events_path, parse=schemas.event_from_line)]
        self._feature_key: dict[str, Any] | None = None
        self._saving = threading.Lock()  # the trainer's thread and the caller's both save

    # -- making and reopening ---------------------------------------------------------

    @classmethod
    def create(cls, data: DataSource, parameters: ModelParameters,
               session_parameters: SessionParameters,
               session_dir: str | os.PathLike | None = None) -> SessionRecord:
        directory = _new_session_dir(session_dir)
        train, valid = split_for(data, parameters)
        # The folders the images come from: reopening refuses image paths outside them.
        roots = [str(r) for r in data.roots]
        if isinstance(parameters.validation, DataSource):
            roots += [str(r) for r in parameters.validation.roots if str(r) not in roots]
        record = {
            "format": FORMAT, "id": f"session-{uuid.uuid4().hex[:12]}",
            "created_at": time.time(), "parameters": parameters.to_dict(),
            "session_parameters": session_parameters.to_dict(), "classes": data.classes,
            "data": {"origin": data.origin, "fingerprint": data.fingerprint(),
                     "train": len(train), "valid": len(valid), "skipped": len(data.skipped),
                     "roots": roots},
            "versions": _versions(), "state": RunState.INITIALIZED.value, "elapsed": 0.0,
        }
        write_atomic(directory / DATA_FILE, schemas.encode_record({
            "classes": data.classes,
            "train": [[str(i.path), i.label] for i in train],
            "valid": [[str(i.path), i.label] for i in valid],
            "skipped": [[str(p), reason] for p, reason in data.skipped],
            "roots": roots,
        }))
        # Last: its presence means complete.
        write_atomic(directory / SESSION_FILE, schemas.encode_record(record))
        return cls(directory, record, (train, valid))

    @classmethod
    def open(cls, session_dir: str | os.PathLike,
             data_root: str | os.PathLike | None = None) -> SessionRecord:
        """The session in `session_dir`, written by this or any other process.

        Its files are validated (schemas.py) and its image paths confined to the data
        folders recorded when it was made; `data_root` takes them from another folder."""
        directory = Path(session_dir).expanduser()
        record = schemas.read_session_record(directory)
        data = schemas.read_data_record(directory)
        if data["classes"] != record["classes"]:  # both were written from the same source
            raise SessionError("its classes differ from session.json's", directory / DATA_FILE,
                               "the session is damaged")
        split = recorded_split(data, data_root, directory / DATA_FILE)
        opened = cls(directory, record, split)
        opened.data_root = None if data_root is None else Path(data_root)
        return opened

    def refresh(self, events: bool = True) -> None:
        """Re-read session.json and (when `events`) events.jsonl, for a session another
        process trains."""
        self._record = schemas.read_session_record(self.directory)
        self.session_parameters = SessionParameters.from_dict(self._record["session_parameters"])
        if events:
            self.events = [e for _, e in read_json_lines(self.events_path,
                                                         parse=schemas.event_from_line)]

    # -- what the session holds -------------------------------------------------------

    @property
    def id(self) -> str:
        return self._record["id"]

    @property
    def classes(self) -> list[str]:
        return list(self._record["classes"])

    @property
    def fingerprint(self) -> str:
        return self._record["data"]["fingerprint"]

    @property
    def data_origin(self) -> str:
        return self._record.get("data", {}).get("origin", "")

    @property
    def events_path(self) -> Path:
        return self.directory / EVENTS_FILE

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(s) for s in schemas.read_data_record(self.directory).get("skipped", [])]

    @property
    def iterations(self) -> int:
        """The main phase's iteration budget."""
        return self.session_parameters.iterations or self.parameters.max_iterations

    def phase_budget(self, phase: str) -> int:
        """Iterations of `phase`. The main phase's budget is `iterations`."""
        p = self.parameters
        if phase == "extracting_features":  # train and validation passes, then the views
            return 2 + (p.feature_views if p.augmentation.enabled else 0)
        if phase == "fine_tuning" and p.algorithm == "transfer_learning":
            return p.fine_tune_iterations
        return self.iterations

    def set_iterations(self, iterations: int) -> None:
        self.session_parameters = self.session_parameters.replace(iterations=iterations)
        self.save(session_parameters=self.session_parameters.to_dict())

    def feature_key(self) -> dict[str, Any]:
        """What this session's extracted features depend on (see features.py)."""
        from .features import feature_key

        if self._feature_key is None:  # hashes the weights file: once per session
            self._feature_key = feature_key(self.parameters, self.fingerprint)
        return self._feature_key

    # -- checkpoints -------------------------------------------------------------------

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self.store.latest()

    @property
    def is_complete(self) -> bool:
        """True when the last phase has trained all its iterations."""
        latest = self.latest_checkpoint
        last = self.parameters.phases[-1]
        return (latest is not None and latest.phase == last and not latest.partial
                and latest.iteration >= self.phase_budget(last))

    def checkpoint(self, which: str = "latest") -> Checkpoint:
        """A checkpoint by id, or "latest", or "best" (by the session's best_metric)."""
        if which == "latest":
            found = self.latest_checkpoint
            if found is None:
                raise ValueError(f"session {self.directory} has no checkpoints yet")
            return found
        if which == "best":
            return self.store.best(self.session_parameters.best_metric)
        return self.store.get(which)

    # -- run state ---------------------------------------------------------------------

    @property
    def stored_state(self) -> RunState:
        return RunState(self._record["state"])

    @property
    def state(self) -> RunState:
        """The stored state, or `interrupted` where it says running but nobody trains."""
        state = self.stored_state
        if state.is_active and not SessionLock(self.directory).is_held():
            return RunState.INTERRUPTED
        return state

    @property
    def trainer_pid(self) -> int | None:
        """The process id of the process that trains the session, as it recorded."""
        return self._record.get("pid")

    @property
    def elapsed(self) -> float:
        """Seconds trained, as last recorded."""
        reports = [e["elapsed"] for e in self.events if "elapsed" in e]
        return max([self._record.get("elapsed", 0.0), *reports])

    def save(self, **changes: Any) -> None:
        """Change fields of session.json and write it atomically."""
        with self._saving:
            self._record.update(changes)
            write_atomic(self.directory / SESSION_FILE, schemas.encode_record(self._record))

    # -- events --------------------------------------------------------------------------

    def publish(self, event: dict[str, Any], persist: bool = True) -> None:
        """Stamp `event`, append it to events.jsonl (when `persist`), tell the observers."""
        event = {**event, "time": time.time()}
        if persist:
            append_json_line(self.events_path, event)
            self.events.append(event)
        self.observers.dispatch(event)

    def end_partial_event_line(self) -> None:
        end_partial_line(self.events_path)

    # -- control: how any process asks the trainer to pause or stop ---------------------

    @property
    def control_path(self) -> Path:
        return self.directory / CONTROL_FILE

    def request(self, action: str, at_step: int | None = None) -> None:
        """Ask whichever process trains this session to pause or stop."""
        if action not in CONTROL_ACTIONS:
            raise ValueError(f"unknown request {action!r}; choose one of {CONTROL_ACTIONS}")
        write_json_atomic(self.control_path,
                          {"action": action, "at_step": at_step, "time": time.time()})

    def read_request(self) -> tuple[str, int | None] | None:
        """The pending (action, at_step), or None."""
        try:  # confined and bounded: a link, FIFO or huge file is no request
            found = side_schemas.control_from_bytes(read_confined(
                self.directory, CONTROL_FILE, max_size=side_schemas.MAX_CONTROL_BYTES))
        except (OSError, ValueError):
            return None
        if found is None or found["action"] not in CONTROL_ACTIONS:
            return None
        return found["action"], found.get("at_step")

    def log_tail(self, lines: int = 12) -> list[str]:
        """The last `lines` lines a training process of runner="process" printed."""
        return tail_confined(self.directory, LOG_FILE).splitlines()[-lines:]

    def clear_request(self) -> None:
        try:
            self.control_path.unlink()
        except FileNotFoundError:
            pass


def _new_session_dir(session_dir: str | os.PathLike | None) -> Path:
    directory = Path(session_dir or default_session_dir()).expanduser()
    if (directory / SESSION_FILE).exists():
        raise FileExistsError(
            f"{directory} already holds a training session; reopen it with "
            f"TrainingSession.restore({str(directory)!r}) or mw.Studio({str(directory)!r}), "
            "or choose a new directory")
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
