"""The Train tab without a browser: its buttons drive the session, the charts grow from
events (downsampled for display only), and a failure shows in the widget."""

import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, TINY

import mlwidgets as mw
from mlwidgets.ui.charts import MAX_POINTS, TrainingCharts, integer_dtick
from mlwidgets.ui.common import message
from mlwidgets.ui.dashboard import TrainingDashboard


def enabled(dashboard):
    return {name for name, b in dashboard.buttons.items() if not b.disabled}


def wait_for_state(dashboard, *states):
    """Wait until the dashboard has shown one of `states` (via its own follower)."""
    shown = threading.Event()
    dashboard.on_events(lambda events: any(e.get("state") in states for e in events)
                        and shown.set())
    if dashboard.shown_state in states:
        return
    assert shown.wait(300), dashboard.session.state


def test_start_makes_a_session_from_the_form_and_the_charts_grow(tiny_data, tmp_path):
    dashboard = TrainingDashboard(tiny_data, TINY, session_dir=tmp_path / "s",
                                  follow_interval=0.05)
    assert enabled(dashboard) == {"start"}
    dashboard.form.iterations.value = 2
    dashboard.form.flip.value = True
    dashboard.buttons["start"].click()
    session = dashboard.session
    assert session.directory == tmp_path / "s"
    assert session.parameters.max_iterations == 2 and session.parameters.augmentation.flip
    assert dashboard.form.architecture.disabled  # a session's parameters are fixed
    wait_for_state(dashboard, "completed")
    dashboard.poll()
    assert enabled(dashboard) == {"more"}
    assert "completed" in dashboard.progress_text.value and dashboard.progress_bar.value == 1
    valid = dashboard.charts.history["valid_loss"]
    assert valid[1] == [c.metrics["valid_loss"] for c in session.checkpoints]
    assert list(dashboard.charts._markers[0].x) == [c.step_number for c in session.checkpoints]

    dashboard.more.value = 1
    dashboard.buttons["more"].click()
    wait_for_state(dashboard, "completed")
    assert session.checkpoints[-1].iteration == 3
    dashboard.close()


def test_pause_and_resume_buttons(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=6), tmp_path / "s")
    dashboard = TrainingDashboard(session, follow_interval=0.05)
    first = threading.Event()
    session.on_event(lambda e: e["type"] == "report" and first.set())
    dashboard.buttons["start"].click()
    assert enabled(dashboard) == {"pause", "stop"}
    assert first.wait(300)
    dashboard.buttons["pause"].click()
    assert session.job.wait(300) and session.state == "paused"
    wait_for_state(dashboard, "paused")
    assert enabled(dashboard) == {"resume", "more"}
    dashboard.buttons["resume"].click()
    wait_for_state(dashboard, "completed")
    assert session.checkpoints[-1].iteration == 6
    dashboard.close()


def test_a_training_failure_shows_in_the_widget(tiny_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    session = mw.TrainingSession.create(mw.DataSource.labeled_directories(data_dir), TINY,
                                        tmp_path / "s")
    shutil.rmtree(data_dir / "circle")  # the data changes after the session was made
    dashboard = TrainingDashboard(session, follow_interval=0.05)
    dashboard.start()
    wait_for_state(dashboard, "failed")
    dashboard.poll()
    assert "Training failed" in dashboard.status.value and "circle" in dashboard.status.value
    assert enabled(dashboard) == {"resume", "more"}  # the widget lives on
    dashboard.close()


def test_a_refused_action_is_shown_in_the_widget_and_raised_to_code(trained_copy):
    dashboard = TrainingDashboard(mw.TrainingSession.restore(trained_copy))
    dashboard.buttons["resume"].disabled = False  # as if clicked before the state arrived
    dashboard.buttons["resume"].click()  # a completed session refuses, with advice
    assert "train 5 more" in dashboard.status.value
    with pytest.raises(ValueError, match="already trained"):
        dashboard.resume()
    dashboard.close()


def test_a_session_trained_elsewhere_is_followed_and_paused_from_here(tiny_data, tmp_path):
    # Long enough that the Pause click arrives while the other process still trains.
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=200),
                                        tmp_path / "s")
    # The first committed checkpoint: the other process is past start-up and training, so
    # the pause below cannot land before its first batch (that pause has nothing to keep).
    running = threading.Event()
    dashboard = TrainingDashboard(mw.TrainingSession.restore(session.directory),
                                  follow_interval=0.05)
    dashboard.on_events(lambda events: any(e.get("type") == "checkpoint" for e in events)
                        and running.set())
    trainer = subprocess.Popen([sys.executable, "-m", "mlwidgets", "resume", "--session",
                                str(session.directory)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert running.wait(300)
    assert enabled(dashboard) == {"pause", "stop"}
    assert "another process" in dashboard.progress_text.value
    dashboard.buttons["pause"].click()  # reaches the other process through control.json
    wait_for_state(dashboard, "paused")
    out, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 0, err
    # Paused where the request arrived: inside an iteration (a partial checkpoint) or at
    # an iteration's end (its whole checkpoint stands).
    assert "Training paused" in out and session.latest_checkpoint is not None
    assert enabled(dashboard) == {"resume", "more"}
    dashboard.close()


def test_long_histories_are_downsampled_for_display_only():
    charts = TrainingCharts()
    charts.add_events([{"type": "batch", "step": i, "loss": 1 / (i + 1)} for i in range(5000)])
    drawn = charts._traces["batch_loss"]
    assert len(drawn.x) == MAX_POINTS and drawn.x[-1] == 4999 and drawn.y[-1] == 1 / 5000
    assert len(charts.history["batch_loss"][0]) == 5000
    assert charts.redraws == 1  # one redraw per batch of events


def test_a_failing_listener_stops_neither_the_charts_nor_the_other_panels(trained_copy):
    # The follower's own thread waits an hour: this test's poll() delivers the event.
    dashboard = TrainingDashboard(mw.TrainingSession.restore(trained_copy),
                                  follow_interval=3600)
    seen = []
    dashboard.on_events(lambda events: 1 / 0)
    dashboard.on_events(seen.append)
    report = {"type": "report", "phase": "training", "iteration": 4, "total_iterations": 4,
              "step": 99, "elapsed": 1.0, "metrics": {"valid_loss": 0.5}}
    mw.TrainingSession.restore(trained_copy).record.publish(report)  # as another process
    shown = dashboard.poll()
    assert [e["step"] for e in shown] == [99] and seen == [shown]
    assert dashboard.charts.history["valid_loss"][0][-1] == 99
    dashboard.close()


@pytest.mark.slow
def test_the_train_tab_runs_a_separate_process_and_reports_its_death(tiny_data, tmp_path):
    dashboard = TrainingDashboard(tiny_data, TINY.replace(max_iterations=400),
                                  session_dir=tmp_path / "s", runner="process")
    dashboard.buttons["start"].click()
    job = dashboard.session.job
    assert job.pid != os.getpid() and dashboard.runner.disabled
    assert enabled(dashboard) == {"pause", "stop"}
    os.kill(job.pid, signal.SIGKILL)  # the child dies (out of memory, say)
    wait_for_state(dashboard, "interrupted")
    assert "The training process stopped" in dashboard.status.value
    assert enabled(dashboard) == {"resume", "more"}
    dashboard.close()


def test_an_earlier_runs_error_never_outlives_it_and_disabled_buttons_say_why(trained_copy):
    dashboard = TrainingDashboard(mw.TrainingSession.restore(trained_copy),
                                  follow_interval=0.05)
    assert dashboard.shown_state == "completed"
    dashboard.status.value = message("Training failed: from an earlier run", "error")
    dashboard._show_state()  # what every batch of events the follower shows ends with
    assert dashboard.status.value == ""
    for name in ("start", "pause", "resume", "stop"):
        b = dashboard.buttons[name]
        assert b.disabled and b.tooltip and b.tooltip != b.description, name
    assert dashboard.form.iterations.disabled and "fixed" in dashboard.form.iterations.tooltip
    assert dashboard.form.iterations.value == 3  # the session's budget, not the form's
    dashboard.close()


def test_charts_start_empty_with_a_note_then_use_whole_number_steps():
    charts = TrainingCharts()
    assert not charts.loss.layout.xaxis.visible and "Press Start" in \
        charts.loss.layout.annotations[0].text  # no placeholder axes from -1 to 6
    charts.add_events([{"type": "batch", "step": s, "loss": 1 / s, "phase": "training",
                        "time": 0.0, "iteration": 1} for s in range(1, 40)])
    assert charts.loss.layout.xaxis.visible and not charts.loss.layout.annotations
    assert charts.loss.layout.xaxis.dtick == integer_dtick(39) == 10
    assert [integer_dtick(n) for n in (1, 6, 13, 240)] == [1, 1, 5, 50]
    charts.clear()
    assert not charts.loss.layout.xaxis.visible


def test_start_on_a_used_session_dir_names_the_widget_level_fix(tiny_data, trained_copy):
    dashboard = TrainingDashboard(tiny_data, TINY.replace(max_iterations=5),
                                  session_dir=trained_copy)
    with pytest.raises(FileExistsError, match=r"mw\.Studio\("):
        dashboard.start()
    assert "mw.Studio(" in dashboard.status.value and dashboard.session is None
    dashboard.close()
