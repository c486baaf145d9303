"""Pause at any batch, resume exactly: a paused and resumed run ends with the weights,
checkpoints and metrics of a run that was never paused, in every phase, in this process
and after a SIGKILL and a restore in a new one. Pause steps are drawn by a seeded RNG
(`pause(at_step=...)`), never by timing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

import mlwidgets as mw

SCRATCH = mw.ModelParameters(
    algorithm="from_scratch", architecture="small_cnn", image_size=16, batch_size=8,
    max_iterations=3, learning_rate=1e-2, augmentation=mw.Augmentation(flip=True, rotation=10.0))
TOLERANCE = 1e-6


def train(data, params, directory, pauses=()):
    """Train to the end, pausing after each optimizer step in `pauses` and reopening the
    session from disk after each pause (as a new kernel would)."""
    session = mw.TrainingSession.create(data, params, directory)
    for at_step in pauses:
        session.start() if session.state == "initialized" else session.resume()
        checkpoint = session.pause(at_step=at_step, timeout=300)
        assert session.state == "paused", session.job.error
        assert checkpoint.step_number == at_step and checkpoint.partial
        session = mw.TrainingSession.restore(directory)
    job = session.start() if session.state == "initialized" else session.resume()
    assert job.wait(300) and job.state == "completed", job.error
    return session


def assert_same_run(reference, resumed):
    """Same final weights; the same finished checkpoints (plus the pause ones) and metrics."""
    a = reference.latest_checkpoint.load_model_state()
    b = resumed.latest_checkpoint.load_model_state()
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= TOLERANCE
    whole = [c for c in resumed.checkpoints if not c.partial]
    assert [(c.phase, c.iteration, c.step_number) for c in reference.checkpoints] == \
           [(c.phase, c.iteration, c.step_number) for c in whole]
    for x, y in zip(reference.checkpoints, whole):
        assert x.metrics.keys() == y.metrics.keys()
        for key, value in x.metrics.items():
            assert value == pytest.approx(y.metrics[key], abs=TOLERANCE), (x.id, key)
        assert x.confusion == y.confusion


def steps_of(session, phase):
    return [c.step_number for c in session.checkpoints if c.phase == phase]


@pytest.mark.slow
def test_from_scratch_paused_at_seeded_steps_resumes_exactly(tiny_data, tmp_path):
    reference = train(tiny_data, SCRATCH, tmp_path / "reference")
    last = reference.latest_checkpoint.step_number
    pauses = sorted(random.Random(10).sample(range(1, last), 3))
    # The end of an iteration (after its last batch, before validating) is a pause point too.
    pauses = sorted(set(pauses) | {steps_of(reference, "training")[0]})
    resumed = train(tiny_data, SCRATCH, tmp_path / "resumed", pauses)
    assert_same_run(reference, resumed)
    paused = [c for c in resumed.checkpoints if c.partial]
    assert [c.step_number for c in paused] == pauses
    assert resumed.best_checkpoint().partial is False


@pytest.mark.slow
def test_head_and_fine_tuning_phases_resume_exactly(tiny_data, backbone, tmp_path):
    params = SCRATCH.replace(algorithm="transfer_learning", weights_file=backbone,
                             fine_tune_iterations=2, augmentation=mw.Augmentation())
    reference = train(tiny_data, params, tmp_path / "reference")
    head, tune = steps_of(reference, "training"), steps_of(reference, "fine_tuning")
    rng = random.Random(11)
    pauses = sorted([rng.randrange(1, head[-1]), rng.randrange(head[-1] + 1, tune[-1])])
    resumed = train(tiny_data, params, tmp_path / "resumed", pauses)
    assert_same_run(reference, resumed)
    assert [c.phase for c in resumed.checkpoints if c.partial] == ["training", "fine_tuning"]


CHILD = textwrap.dedent("""
    import sys, threading
    import mlwidgets as mw
    from test_exact_resume import SCRATCH
    data = mw.DataSource.labeled_directories(sys.argv[1])
    session = mw.TrainingSession.create(data, SCRATCH, sys.argv[2])
    session.start()
    checkpoint = session.pause(at_step=int(sys.argv[3]), timeout=300)
    print(session.state, checkpoint.step_number, flush=True)
    threading.Event().wait(600)  # killed here
""")


@pytest.mark.slow
def test_a_pause_survives_sigkill_and_resumes_exactly_in_a_new_process(
        tiny_data, tiny_data_dir, tmp_path):
    reference = train(tiny_data, SCRATCH, tmp_path / "reference")
    at_step = random.Random(12).randrange(1, reference.latest_checkpoint.step_number)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tiny_data_dir), str(tmp_path / "resumed"),
         str(at_step)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert child.stdout.readline().split() == ["paused", str(at_step)]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(60)
    session = mw.TrainingSession.restore(tmp_path / "resumed")
    assert session.state == "paused"
    assert session.resume().wait(300) and session.state == "completed"
    assert_same_run(reference, session)


def test_pausing_while_extracting_features_says_what_will_be_redone(
        tiny_data, backbone, tmp_path):
    params = SCRATCH.replace(algorithm="transfer_learning", weights_file=backbone,
                             max_iterations=1, augmentation=mw.Augmentation())
    session = mw.TrainingSession.create(tiny_data, params, tmp_path / "s")

    def pause_once_extracting(event):
        if event["type"] == "progress" and event.get("task") == "extracting features":
            session.pause(wait=False)

    session.on_event(pause_once_extracting)
    session.start().wait(300)
    assert session.state == "paused" and session.checkpoints == []
    stopped = [e for e in session.events if e["type"] == "state"][-1]
    assert "extraction starts again on resume" in stopped["note"]


def test_seeding_draws_what_torch_manual_seed_draws_and_queues_nothing_for_cuda():
    import torch

    from mlwidgets.resume import seed_everything

    queued = len(getattr(torch.cuda, "_queued_calls", []))  # torch's lazy CUDA calls
    seed_everything(1234)
    ours = torch.rand(5), random.random()
    torch.manual_seed(1234)
    random.seed(1234)
    assert torch.equal(ours[0], torch.rand(5)) and ours[1] == random.random()
    if not torch.cuda.is_available():  # one queued call (and stack trace) an iteration
        assert len(getattr(torch.cuda, "_queued_calls", [])) == queued
