"""runner="process": training in a child process that outlives the kernel, controlled
through the session directory from this process, another one, or the command line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, TINY, seen_event

import mlwidgets as mw
from mlwidgets.events import RunState

# Runs until the test pauses or stops it: more iterations than any machine trains in the
# seconds a command line's start or a kernel restart takes (400 could end first).
LONG_ITERATIONS = 100_000
LONG = TINY.replace(max_iterations=LONG_ITERATIONS)


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlwidgets", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_a_process_run_is_paused_from_another_session_object_and_resumed(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, LONG, tmp_path / "s")
    job = session.start(runner="process")
    assert job.pid != os.getpid() and session.state is RunState.RUNNING
    reopened = mw.TrainingSession.restore(tmp_path / "s")  # as a restarted kernel would
    assert reopened.state is RunState.RUNNING and reopened.job is not None
    # Far enough ahead that the child reads the request (every 0.25 s) before that step.
    at_step = reopened.progress.step + 300
    checkpoint = reopened.pause(at_step=at_step, timeout=300)
    assert reopened.state is RunState.PAUSED and checkpoint.step_number == at_step
    assert checkpoint.partial and session.state is RunState.PAUSED
    # Finish the iteration it paused in, and stop there.
    job = session.resume(iterations=checkpoint.iteration + 1, runner="process")
    assert job.wait(300) and session.state is RunState.COMPLETED, job.error
    assert job.result.classes == session.classes
    assert not (tmp_path / "s" / "control.json").exists()


@pytest.mark.slow
def test_the_command_line_shows_pauses_and_stops_a_run_it_did_not_start(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, LONG, tmp_path / "s")
    session.start(runner="process")
    status = cli("status", "--session", tmp_path / "s")
    assert status.returncode == 0 and "running" in status.stdout
    # Past its start-up: a pause while it decodes images would have nothing to keep.
    assert seen_event(session, "checkpoint", 300)
    paused = cli("pause", "--session", tmp_path / "s", "--wait")
    assert paused.returncode == 0, paused.stderr
    assert "paused" in cli("status", "--session", tmp_path / "s").stdout
    # Paused where the request arrived: inside an iteration or at its end.
    assert session.state is RunState.PAUSED and session.latest_checkpoint is not None
    assert "not training" in cli("stop", "--session", tmp_path / "s").stdout
    session.resume(runner="process")
    stopped = cli("stop", "--session", tmp_path / "s", "--wait")
    assert stopped.returncode == 0 and session.state is RunState.CANCELLED


@pytest.mark.slow
def test_a_child_that_dies_is_reported_with_its_last_lines(tiny_data_dir, tmp_path):
    shutil.copytree(tiny_data_dir, tmp_path / "data")  # this test removes an image
    data = mw.DataSource.labeled_directories(tmp_path / "data")
    session = mw.TrainingSession.create(data, LONG, tmp_path / "s", image_cache_mb=0)
    job = session.start(runner="process")
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait(60)
    assert session.state is RunState.INTERRUPTED
    assert "stopped without saying why" in job.error
    # A run that fails: an image vanished. Its traceback comes back from train.log.
    session.split[0][0].path.rename(tmp_path / "elsewhere.png")
    job = session.resume(runner="process")
    assert job.wait(300) and session.state is RunState.FAILED
    missing = session.split[0][0].path.name
    assert missing in job.error and "DataNotFoundError" in job.error
    log = (tmp_path / "s" / "train.log").read_text()
    assert "Traceback" in log and missing in log
    status = cli("status", "--session", tmp_path / "s")
    assert "failed" in status.stdout and missing in status.stdout


KERNEL_STARTS = """
import mlwidgets as mw
from conftest import TINY
data = mw.DataSource.labeled_directories({data!r})
session = mw.TrainingSession.create(data, TINY.replace(max_iterations={iterations}), {dir!r})
session.start(runner="process")
print("started", session.job.pid)
"""
KERNEL_FOLLOWS = """
import threading
import mlwidgets as mw
studio = mw.Studio({dir!r})
before = max([e["step"] for e in studio.session.events if e["type"] == "report"], default=0)
grew = threading.Event()  # the Train tab shows reports newer than those on disk now
studio.dashboard.on_events(lambda events: any(
    e["type"] == "report" and e["step"] > before for e in events) and grew.set())
print("grew", grew.wait(300))
checkpoint = studio.session.pause(timeout=300)
# A pause inside an iteration commits a partial checkpoint; at its end, the whole one stands.
print("state", studio.session.state,
      "saved", checkpoint.step_number == studio.session.progress.step)
"""


@pytest.mark.slow
def test_the_run_outlives_a_kernel_restart_and_the_new_kernel_pauses_it(tiny_data_dir, tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(ROOT), env=env)
    try:
        out = run_cell(client, KERNEL_STARTS.format(data=str(tiny_data_dir),
                                                    dir=str(tmp_path / "s"),
                                                    iterations=LONG_ITERATIONS))
        pid = int(out.split()[-1])
        manager.restart_kernel(now=True)
        client.wait_for_ready(timeout=120)
        os.kill(pid, 0)  # the child outlived its kernel
        out = run_cell(client, KERNEL_FOLLOWS.format(dir=str(tmp_path / "s")))
        assert out.split() == ["grew", "True", "state", "paused", "saved", "True"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run_cell(client, code: str) -> str:
    reply = client.execute_interactive(textwrap.dedent(code), timeout=300,
                                       output_hook=(chunks := []).append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(m["content"].get("text", "") for m in chunks
                   if m["msg_type"] == "stream").strip()
