"""The command line, as a user types it: `python -m mlwidgets ...`."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

OPENAI_KEYS = {"object", "id", "created_at", "fine_tuned_model_checkpoint", "step_number",
               "fine_tuning_job_id", "metrics"}


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mlwidgets", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_checkpoints_table_and_json_styles(trained_dir):
    table = cli("checkpoints", "--session", trained_dir)
    assert table.returncode == 0, table.stderr
    assert "000" in table.stdout and "best" in table.stdout and "val acc" in table.stdout
    listed = cli("checkpoints", "--session", trained_dir, "--json", "--style", "openai")
    objects = json.loads(listed.stdout)
    assert len(objects) == 3 and all(set(o) == OPENAI_KEYS for o in objects)
    assert {o["object"] for o in objects} == {"fine_tuning.job.checkpoint"}
    createml = json.loads(cli("checkpoints", "--session", trained_dir, "--json",
                              "--style", "createml").stdout)
    assert createml[0]["url"].startswith("file://") and createml[0]["phase"] == "training"


def test_evaluate_and_predict(trained_dir, tiny_data_dir, tiny_data):
    evaluated = cli("evaluate", "--session", trained_dir, tiny_data_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert 0 <= report["accuracy"] <= 1 and report["checkpoint"]
    image = tiny_data.items[0].path
    predicted = cli("predict", "--session", trained_dir, "--checkpoint", "latest", image,
                    "--json")
    assert predicted.returncode == 0, predicted.stderr
    [row] = json.loads(predicted.stdout)
    assert row["label"] in tiny_data.classes and row["image"] == str(image)
    readable = cli("predict", "--session", trained_dir, image)
    assert str(image) in readable.stdout and "confidence" in readable.stdout


def test_train_then_resume_from_the_terminal(tiny_data_dir, tmp_path):
    session = tmp_path / "cli-session"
    trained = cli("train", tiny_data_dir, "--session", session, "--architecture", "small_cnn",
                  "--image-size", "32", "--iterations", "2", "--batch-size", "16")
    assert trained.returncode == 0, trained.stderr
    assert "iteration   2/2" in trained.stdout and "completed" in trained.stdout
    resumed = cli("resume", "--session", session, "--iterations", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "iteration   3/3" in resumed.stdout


@pytest.mark.parametrize("args, needle", [
    (["checkpoints", "--session", "/no/such/session"], "/no/such/session"),
    (["train", "/no/such/data", "--session", "/tmp/x"], "/no/such/data"),
    (["predict", "--session", "{trained}", "--checkpoint", "999999-nothing", "a.png"],
     "999999-nothing"),
])
def test_errors_are_one_clear_line_without_traceback(args, needle, trained_dir):
    result = cli(*[a.replace("{trained}", str(trained_dir)) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_during_training_pauses_with_a_checkpoint(tiny_data_dir, tmp_path):
    import signal

    session = tmp_path / "interrupted"
    # More iterations than any machine trains before the Ctrl-C below lands (the command
    # prints what it sees every 0.5 s): the run is still training when it does.
    iterations = 100_000
    child = subprocess.Popen([sys.executable, "-m", "mlwidgets", "train", str(tiny_data_dir),
                              "--session", str(session), "--architecture", "small_cnn",
                              "--image-size", "32", "--iterations", str(iterations)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in child.stdout:  # wait for the first committed checkpoint, then press Ctrl-C
        if "checkpoint" in line:
            child.send_signal(signal.SIGINT)
            break
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "pausing" in out and "Training paused" in out
    listed = json.loads(cli("checkpoints", "--session", session, "--json").stdout)
    assert listed and listed[-1]["iteration"] < iterations


@pytest.mark.slow
def test_export_with_verify_prints_the_file_and_the_check(trained_dir, tmp_path):
    out = tmp_path / "My Model ✓.mlpackage"
    result = cli("export", "--session", trained_dir, "--out", out, "--verify")
    assert result.returncode == 0, result.stderr
    assert out.is_dir() and str(out) in result.stdout
    assert "verify" in result.stdout and "top-1 agreement 100.0%" in result.stdout


@pytest.mark.slow
def test_demo_trains_exports_verifies_and_summarises(tmp_path):
    session = tmp_path / "demo"
    # The demo's own transfer learning on the built-in extractor, small and quick.
    result = cli("demo", "--session", session, "--iterations", "2", "--image-size", "64",
                 "--images-per-class", "10")
    assert result.returncode == 0, result.stderr
    assert "transfer learning on efficientnet_lite0 at 64 px" in result.stdout
    for line in ("best checkpoint", "validation accuracy", "Core ML model", "verified"):
        assert line in result.stdout
    assert (session / "exports" / "shapes.mlpackage").is_dir()
    listed = json.loads(cli("checkpoints", "--session", session, "--json", "--style",
                            "openai").stdout)
    # extracting_features, then training iterations 1 and 2
    assert [c["object"] for c in listed] == ["fine_tuning.job.checkpoint"] * 3
