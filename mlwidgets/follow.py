"""Following a session as it trains, in this process or in any other.

Recorded events (reports, checkpoints, state changes) are read from the session's
events.jsonl, so a viewer sees the same history whoever writes it: a thread of this
kernel, another kernel, or `mlwidgets train` in a terminal. Live events that are never
recorded (streamed batch loss, preparation progress) come from this process's trainer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import LIVE_ONLY, EventType, RunState
from .files import read_json_lines
from .schemas import event_from_line

if TYPE_CHECKING:
    from .session import TrainingSession

log = logging.getLogger(__name__)

Event = dict[str, Any]


class SessionFollower:
    """Collects a session's new events; `poll()` returns those not seen yet, oldest first."""

    def __init__(self, session: TrainingSession, from_start: bool = True):
        self.session = session
        self._offset = 0
        if not from_start:
            for offset, _ in read_json_lines(session.events_path):
                self._offset = offset
        self._live: deque[Event] = deque()
        # Events of this process arrive twice (live, and from the file): the first is kept.
        self._seen_once: set[tuple[str, float]] = set()
        self._unsubscribe = session.on_event(self._live.append)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the polling thread and a caller may poll at once
        self.busy_seconds = 0.0  # CPU time the polling thread spent reading and delivering
        self._active = False  # the last state seen was running or pausing

    def poll(self) -> list[Event]:
        """New events since the last poll: recorded ones from the file, plus live ones."""
        with self._lock:
            return self._new_events()

    def _new_events(self) -> list[Event]:
        events: list[Event] = []
        live = [self._live.popleft() for _ in range(len(self._live))]
        for event in live:
            if event["type"] in LIVE_ONLY or self._first_sighting(event):
                events.append(event)
        for offset, event in read_json_lines(self.session.events_path, self._offset,
                                             parse=event_from_line):
            self._offset = offset
            if self._first_sighting(event):
                events.append(event)
        trained_here = self.session.trains_here
        if any(e["type"] == EventType.STATE for e in events) and not trained_here:
            self.session.refresh()  # another process changed session.json
        events.sort(key=lambda e: e.get("time", 0.0))
        if not trained_here:
            self._notice_death(events)
        return events

    def _notice_death(self, events: list[Event]) -> None:
        """A process that dies writes no last state: say `interrupted` (once, unrecorded)
        when the session says it runs but nobody holds its lock any more."""
        states = [e for e in events if e["type"] == EventType.STATE]
        if states:
            self._active = RunState(states[-1]["state"]).is_active
        if self._active and self.session.state is RunState.INTERRUPTED:
            self._active = False
            last = events[-1] if events else {}
            events.append({"type": EventType.STATE.value, "state": RunState.INTERRUPTED.value,
                           "phase": last.get("phase", "initialized"),
                           "step": last.get("step", 0), "time": time.time()})

    def _first_sighting(self, event: Event) -> bool:
        key = _key(event)
        if key in self._seen_once:
            self._seen_once.discard(key)
            return False
        self._seen_once.add(key)
        return True

    def start(self, deliver: Callable[[list[Event]], None], interval: float = 0.5) -> None:
        """Poll every `interval` seconds in a daemon thread; `deliver(events)` when any."""
        if self._thread is not None:
            raise RuntimeError("this follower is already running")

        def loop() -> None:
            while not self._stopping.wait(interval):
                started = time.thread_time()
                try:
                    events = self.poll()
                    if events:
                        deliver(events)
                except Exception:  # a viewer's failure must not end the following
                    log.exception("delivering session events failed")
                self.busy_seconds += time.thread_time() - started

        self._thread = threading.Thread(target=loop, name="mlwidgets-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread and stop listening to the session."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._unsubscribe()


def _key(event: Event) -> tuple[str, float]:
    # The time stamp is written with full float precision, so it identifies an event.
    return event.get("type", ""), float(event.get("time", 0.0))
