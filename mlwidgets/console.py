"""What the CLI and the demo print: training progress, data summaries, tables."""

from __future__ import annotations

import sys
from typing import Any

from .errors import TrainingError, describe, printable
from .events import EventType, RunState
from .follow import SessionFollower

METRIC_COLUMNS = (("train_loss", "loss"), ("train_accuracy", "acc"),
                  ("valid_loss", "val loss"), ("valid_accuracy", "val acc"))


def follow(session: Any, job: Any) -> int:
    """Print each report while `job` trains; Ctrl-C pauses with a checkpoint. On a terminal,
    slow preparations (decoding images, extracting features) show a live progress bar."""
    live = sys.stdout.isatty()
    clear = "\r\033[K" if live else ""  # a line printed over the progress bar replaces it

    def show(event: dict[str, Any]) -> None:
        if event["type"] == EventType.PROGRESS and live:
            done, total = event.get("done", 0), max(1, event.get("total", 1))
            task = event.get("task", "preparing")
            if "iteration" in event:
                task += f", pass {event['iteration']}"
            bar = "#" * (20 * done // total)
            print(f"{clear}  {task} [{bar:<20}] {done}/{total} images", end="", flush=True)
        elif event["type"] == EventType.REPORT and event["phase"] == "extracting_features":
            print(f"{clear}  extracted features ({event['iteration']} passes over the images)"
                  f"  [{event['elapsed']:.1f} s]", flush=True)
        elif event["type"] == EventType.REPORT:
            metrics = "  ".join(f"{h} {format_metric(event['metrics'].get(k))}"
                                for k, h in METRIC_COLUMNS)
            phase = "" if event["phase"] == "training" else f"{event['phase']} "
            print(f"{clear}  {phase}iteration {event['iteration']:>3}/"
                  f"{event['total_iterations']}  {metrics}  [{event['elapsed']:.1f} s]",
                  flush=True)
        elif event["type"] == EventType.CHECKPOINT:
            print(f"{clear}    checkpoint {event['id']} committed", flush=True)

    # Events are read from the session, so a run in worker processes shows the same way.
    follower = SessionFollower(session, from_start=False)
    try:
        while not job.wait(0.5):
            for event in follower.poll():
                show(event)
    except KeyboardInterrupt:
        print("\npausing: committing a checkpoint…", flush=True)
        session.pause()
    finally:
        for event in follower.poll():
            show(event)
        follower.stop()
    if job.state is RunState.FAILED:
        cause = describe(job.error) if job.error is not None else "no reason recorded"
        raise TrainingError(f"training failed: {cause}", session.directory,
                            "fix the cause, then `mlwidgets resume` continues from the "
                            "last checkpoint")
    print(f"Training {job.state} after {session.elapsed:.1f} s; "
          f"{len(session.checkpoints)} checkpoint(s) in {session.directory}")
    return 0


def print_data_summary(data: Any) -> None:
    counts = ", ".join(f"{c} {n}" for c, n in data.summary()["images"].items())
    print(f"Data: {len(data)} images in {len(data.classes)} classes ({counts})")
    for path, reason in data.skipped[:10]:
        print(f"  skipped {printable(path)}: {printable(reason)}")
    if len(data.skipped) > 10:
        print(f"  … and {len(data.skipped) - 10} more skipped files")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def format_metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
