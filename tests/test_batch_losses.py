"""Per-batch losses recorded in the session, thinned to a bound, so the batch line of the
loss chart comes back when a session is reopened."""

from __future__ import annotations

import json

import pytest

from mlwidgets import side_schemas
from mlwidgets.batch_losses import BATCH_LOSSES_FILE, BatchLosses
from mlwidgets.errors import SessionError


def test_a_long_phase_stays_within_the_bound_and_keeps_its_shape(tmp_path):
    losses = BatchLosses()
    for step in range(1, 50_001):
        losses.add("training", step, 10 / step)
    points = losses.points()
    assert side_schemas.MAX_LOSS_POINTS // 2 <= len(points) <= side_schemas.MAX_LOSS_POINTS + 1
    steps = [s for s, _ in points]
    assert steps == sorted(steps) and steps[0] < 50 and steps[-1] > 49_000
    values = [v for _, v in points]
    assert values == sorted(values, reverse=True)  # still falling everywhere
    losses.save(tmp_path, losses.to_record())
    assert (tmp_path / BATCH_LOSSES_FILE).stat().st_size < 200_000
    assert BatchLosses.load(tmp_path).points() == points


def test_phases_are_kept_apart_and_a_resume_drops_what_is_trained_again(tmp_path):
    losses = BatchLosses()
    for step in range(1, 11):
        losses.add("training", step, 1.0)
    for step in range(11, 21):
        losses.add("fine_tuning", step, 0.5)
    losses.add("fine_tuning", 21, float("nan"))  # a diverged batch is no point
    losses.save(tmp_path, losses.to_record())
    reopened = BatchLosses.load(tmp_path)
    assert len(reopened.points()) == 20
    reopened.truncate(15)  # resumed from the checkpoint at step 15
    assert reopened.points()[-1] == (15, 0.5) and len(reopened.points()) == 15


@pytest.mark.parametrize("damage", [
    b"not json",
    json.dumps({"format": "mlwidgets.batch_losses/1", "max_points_per_phase": 2000,
                "phases": {"no_such_phase": {"stride": 1, "points": []}}}).encode(),
    json.dumps({"format": "mlwidgets.batch_losses/1", "max_points_per_phase": 2000,
                "phases": {"training": {"stride": 1, "points": [[1, "x"]]}}}).encode(),
])
def test_a_damaged_file_is_refused_by_its_schema_and_costs_only_the_line(tmp_path, damage):
    with pytest.raises(SessionError):
        side_schemas.load_batch_losses_record(damage, "batch_losses.json")
    (tmp_path / BATCH_LOSSES_FILE).write_bytes(damage)
    assert BatchLosses.load(tmp_path).points() == []


def test_a_trained_session_records_its_batch_losses(trained_dir):
    import mlwidgets as mw

    session = mw.TrainingSession.restore(trained_dir)
    points = session.batch_losses
    last = session.checkpoints[-1].step_number
    assert len(points) == last and points[-1][0] == last  # tiny: one point a batch
