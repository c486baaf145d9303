"""The Studio without a browser: tabs in the order of the work, a session made by Start,
checkpoints appearing as they are committed, and Restore feeding Evaluate and Preview."""

from conftest import TINY

import mlwidgets as mw
from mlwidgets.ui import Studio


def test_the_studio_trains_a_folder_and_restores_a_checkpoint(tiny_data_dir, tmp_path):
    studio = mw.Studio(tiny_data_dir, TINY.replace(max_iterations=2),
                       session_dir=tmp_path / "s", follow_interval=0.05)
    assert [studio.get_title(i) for i in range(5)] == \
        ["Data", "Train", "Checkpoints", "Evaluate", "Preview"]
    assert studio.timeline is None and studio.session is None
    studio.dashboard.buttons["start"].click()
    assert studio.wait(300)  # training done, and every tab shows it
    assert studio.dashboard.shown_state == "completed"
    assert studio.session.directory == tmp_path / "s"
    assert [c.id for c in studio.timeline.checkpoints] == \
        [c.id for c in studio.session.checkpoints]
    assert studio.children[2].children == (studio.timeline,)

    studio.show("Checkpoints")
    studio.timeline.select(0)
    studio.timeline.restore()
    first = studio.session.checkpoints[0]
    assert studio.classifier is not None and studio.classifier.checkpoint.id == first.id
    metrics = studio.evaluation.evaluate()  # on the session's validation images
    assert len(metrics.labels) == len(studio.session.split[1])
    predictions = studio.prediction.predict_examples(3)
    assert len(predictions) == 3
    first_three = studio.prediction.examples[:3]
    assert {p.parent.name for p in first_three} == set(studio.session.classes)  # in turn
    studio.close()


def test_a_studio_on_a_session_directory_shows_it_and_can_resume(trained_copy):
    studio = Studio(str(trained_copy), follow_interval=0.05)  # e.g. after a kernel restart
    session = studio.session
    assert studio.timeline is not None
    assert len(studio.dashboard.charts.history["valid_loss"][0]) == len(session.checkpoints)
    assert not studio.dashboard.buttons["more"].disabled
    job = session.job
    studio.dashboard.train_more(1)
    assert session.job is not job and session.job.wait(300) and session.state == "completed"
    studio.dashboard.poll()  # the follower's work, done now
    assert studio.timeline.checkpoints[-1].iteration == 3  # hidden: it catches up when shown
    studio.show("Checkpoints")
    assert studio.timeline.checkpoints[-1].iteration == 4
    assert studio.timeline.slider.max == len(session.checkpoints) - 1
    studio.close()


def test_training_under_a_studio_prints_nothing(tiny_data, tmp_path, capfd):
    """Output from the training or follower thread would land in whichever cell runs next."""
    studio = Studio(tiny_data, TINY.replace(max_iterations=2), session_dir=tmp_path / "s",
                    follow_interval=0.05)
    capfd.readouterr()
    studio.dashboard.start()
    assert studio.wait(300) and studio.session.state == "completed"
    studio.close()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_a_studio_given_data_and_a_used_session_dir_reopens_that_session(tiny_data,
                                                                         trained_copy):
    """After a kernel restart the notebook's Studio cell runs again on the same folder."""
    studio = Studio(tiny_data, TINY.replace(max_iterations=5), session_dir=trained_copy,
                    follow_interval=0.05)
    session, dashboard = studio.session, studio.dashboard
    assert session.directory == trained_copy and len(studio.timeline.checkpoints) == 3
    # One line says the stored parameters are used, not the ones passed.
    assert "Reopened" in dashboard.status.value and "max_iterations" in dashboard.status.value
    assert len(dashboard.charts.history["batch_loss"][0]) > 0  # the batch line is back
    assert dashboard.form.iterations.value == session.iterations == 3
    start = dashboard.buttons["start"]
    assert start.disabled and "started already" in start.tooltip  # says why
    assert not dashboard.buttons["more"].disabled
    studio.close()
    same = Studio(tiny_data, TINY, session_dir=trained_copy, follow_interval=0.05)
    assert same.session.directory == trained_copy and same.dashboard.status.value == ""
    same.close()
