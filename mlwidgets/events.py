"""Run states, event types, progress, and the one observer dispatcher.

Everything that watches training (the CLI, `follow.py`, the charts, the dashboard)
reads these types instead of spelling states and event keys by hand. Events stay plain
dicts with a `type` and a `time` (and the `phase` and `step` they happened at). The
recorded kinds (report, checkpoint, state: JSON lines in events.jsonl) are described,
with their bounds, by schemas.ReportEvent and schemas.StateEvent, which every line read
back must match; the live-only kinds by EventType below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)


class RunState(str, Enum):
    """Where a session's training stands; stored in session.json (except `interrupted`).

    `interrupted` is never stored: it is what a stored `running` or `pausing` means when
    no process holds the session's lock (the trainer died); resume continues from the
    last checkpoint.
    """

    INITIALIZED = "initialized"
    RUNNING = "running"
    PAUSING = "pausing"  # a pause was asked for; the checkpoint is being committed
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_active(self) -> bool:
        """True while a trainer is working on the session."""
        return self in (RunState.RUNNING, RunState.PAUSING)

    def allows(self, action: str) -> bool:
        """Whether `action` (one of ACTIONS) makes sense in this state."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
        return action in _ALLOWED[self]

    @property
    def actions(self) -> frozenset[str]:
        return _ALLOWED[self]


# What a user can ask for: start a new run, pause or stop one, resume, or raise the budget.
ACTIONS = ("start", "pause", "stop", "resume", "train_more")
_AFTER_A_RUN = frozenset({"resume", "train_more"})
_ALLOWED: dict[RunState, frozenset[str]] = {
    RunState.INITIALIZED: frozenset({"start"}),
    RunState.RUNNING: frozenset({"pause", "stop"}),
    RunState.PAUSING: frozenset({"stop"}),
    RunState.PAUSED: _AFTER_A_RUN,
    RunState.COMPLETED: frozenset({"train_more"}),
    RunState.CANCELLED: _AFTER_A_RUN,
    RunState.FAILED: _AFTER_A_RUN,
    RunState.INTERRUPTED: _AFTER_A_RUN,
}


class EventType(str, Enum):
    BATCH = "batch"  # streamed training loss (iteration, loss), throttled, never recorded
    # decoding images / extracting features (task, done, total; iteration: the extraction
    # pass), throttled, never recorded
    PROGRESS = "progress"
    REPORT = "report"  # an iteration's metrics (every report_interval iterations)
    CHECKPOINT = "checkpoint"  # a checkpoint was committed
    STATE = "state"  # the run state changed

    def __str__(self) -> str:
        return self.value


LIVE_ONLY = (EventType.BATCH, EventType.PROGRESS)


def is_kind(event: dict[str, Any], kind: EventType | str) -> bool:
    return event.get("type") == kind


@dataclass(frozen=True)
class Progress:
    """Where training stands (Create ML's `MLJob.progress`)."""

    state: RunState
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


Observer = Callable[[dict[str, Any]], None]


class Observers:
    """Callbacks for events, with one error policy: a failing observer is logged and
    recorded in `errors`, and never stops training or the observers after it."""

    def __init__(self) -> None:
        self._callbacks: list[Observer] = []
        self.errors: list[str] = []

    def subscribe(self, callback: Observer) -> Callable[[], None]:
        """Call `callback(event)` for every event; returns a function that unsubscribes."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def dispatch(self, event: dict[str, Any]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception as e:  # an observer must never stop training
                log.exception("observer %r failed", callback)
                self.errors.append(f"{callback!r}: {type(e).__name__}: {e}")

    def __len__(self) -> int:
        return len(self._callbacks)
