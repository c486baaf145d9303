"""Per-batch training losses kept in the session, thinned to a bound, so that the loss chart's
batch line comes back when the session is reopened (after a kernel restart, in Voila, in
another process).

`batch_losses.json` (format in side_schemas.py) holds, for each phase, at most
`side_schemas.MAX_LOSS_POINTS` (2,000) points `[step, loss]`. Each point is the mean of `stride`
consecutive batches: a phase starts at one batch a point, and whenever its list passes the
bound, neighbouring pairs are merged into their means and the stride doubles. So a phase of
any length keeps its shape in 1,000 to 2,000 points, and the file stays under ~100 kB a
phase. It is written with the checkpoints (at most once a second, and at a pause and at the
run's end; without fsync: it only draws a line); a resumed run drops the points after the
step it resumes from (they are trained again).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import schemas, side_schemas
from .errors import MlwidgetsError
from .files import check_confined, read_confined, write_cache_atomic

BATCH_LOSSES_FILE = "batch_losses.json"


class _Phase:
    def __init__(self, points: list[list[float]] | None = None, stride: int = 1):
        self.points = points or []
        self.stride = stride
        self._pending: list[tuple[float, float]] = []  # batches of the point being made

    def add(self, step: float, loss: float, bound: int) -> None:
        self._pending.append((step, loss))
        if len(self._pending) < self.stride:
            return
        self.points.append(_mean(self._pending))
        self._pending = []
        if len(self.points) > bound:  # halve: neighbours merged, each point twice the batches
            pairs = [self.points[i:i + 2] for i in range(0, len(self.points), 2)]
            self.points = [_mean(pair) for pair in pairs]
            self.stride *= 2

    def truncate(self, step: float) -> None:
        self.points = [p for p in self.points if p[0] <= step]
        self._pending = [p for p in self._pending if p[0] <= step]

    def shown(self) -> list[list[float]]:
        """The points, with the batches of a point not yet complete as one more."""
        return self.points + ([_mean(self._pending)] if self._pending else [])


def _mean(points: list[Any]) -> list[float]:
    n = len(points)
    return [round(sum(p[0] for p in points) / n, 2), sum(p[1] for p in points) / n]


class BatchLosses:
    """The thinned per-batch losses of one session, by phase."""

    def __init__(self, bound: int = side_schemas.MAX_LOSS_POINTS):
        self.bound = bound
        self._phases: dict[str, _Phase] = {}

    def add(self, phase: str, step: int, loss: float) -> None:
        if math.isfinite(loss):  # a diverged batch has no point on a chart (nor in JSON)
            self._phases.setdefault(phase, _Phase()).add(step, float(loss), self.bound)

    def truncate(self, step: int) -> None:
        """Forget the points after `step` (a run resumed from an earlier checkpoint)."""
        for phase in self._phases.values():
            phase.truncate(step)

    def points(self) -> list[tuple[float, float]]:
        """Every phase's points as (step, loss), in step order."""
        return sorted((p[0], p[1]) for phase in self._phases.values() for p in phase.shown())

    def to_record(self) -> dict[str, Any]:
        return {"format": side_schemas.BATCH_LOSSES_FORMAT, "max_points_per_phase": self.bound,
                "phases": {name: {"stride": p.stride, "points": p.shown()}
                           for name, p in self._phases.items()}}

    @staticmethod
    def save(directory: Path, record: dict[str, Any]) -> None:
        """Write `record` (a `to_record()` taken earlier: the training thread takes it,
        the checkpoint writer writes it)."""
        # No fsync: a lost or damaged file costs the chart's line, never the session.
        write_cache_atomic(check_confined(directory, BATCH_LOSSES_FILE),
                           schemas.encode_record(record))

    @classmethod
    def load(cls, directory: Path) -> BatchLosses:
        """The session's recorded losses; none when the file is missing or damaged (they
        only draw a line: a damaged file costs the line, never the session)."""
        losses = cls()
        try:
            data = read_confined(directory, BATCH_LOSSES_FILE,
                                 max_size=side_schemas.MAX_BATCH_LOSSES_BYTES)
            record = side_schemas.load_batch_losses_record(
                data, Path(directory) / BATCH_LOSSES_FILE)
        except (OSError, MlwidgetsError):
            return losses
        for name, phase in record["phases"].items():
            losses._phases[name] = _Phase([list(p) for p in phase["points"]], phase["stride"])
        return losses
