"""What the notebook panels cost: training with a Studio attached vs without (target ratio
<= 1.03), the chart update per report, and timeline scrubbing over 1,000 checkpoints.

1. The demo's training (small_cnn on the shapes) in a TrainingSession, alone or with a
   Studio following it (charts, progress, timeline refreshes), interleaved, in one process;
   timed from start() until the job and the Studio are done.
2. TrainingCharts.add_events for one report, with a history of a long run behind it.
3. A session with 1,000 synthetic checkpoints: CheckpointTimeline.select over all of them.
Run: `make bench` (or `python benchmarks/ui.py --iterations 5 --repeats 8`).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    in_thread,
    interleaved,
    median,
    print_figures,
    print_table,
    print_timings,
    ratios,
)

import mlwidgets as mw  # noqa: E402

# The training loop's own cost: the whole network trained from scratch on images, as the
# demo did before the built-in extractor (the transfer benchmark measures that path).
SCRATCH = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", image_size=64)
from mlwidgets.ui import CheckpointTimeline, Studio, TrainingCharts  # noqa: E402

RUNS = itertools.count(1)  # session directory numbers


def training(data: mw.DataSource, params: mw.ModelParameters, work: Path, studio: bool,
             seconds: list[float], busy: list[float]):
    """One run: a new session (and a Studio on it); `seconds` gets start-to-finish time,
    `busy` the share of it the Studio's thread spent on the CPU."""
    def run() -> None:
        session = mw.TrainingSession.create(data, params, work / f"run-{next(RUNS)}")
        viewer = Studio(session) if studio else None  # opening it is not training time
        started = time.perf_counter()
        job = session.start()
        job.wait()
        if viewer is not None:
            viewer.dashboard.poll()  # what is left to show is part of the cost
        seconds.append(time.perf_counter() - started)
        assert job.state == "completed", job.error
        if viewer is not None:
            busy.append(viewer.dashboard.follower.busy_seconds / seconds[-1])
            viewer.close()
    return run


def chart_update_cost(reports: int, batches_per_report: int) -> dict[str, float]:
    """Seconds per add_events call of one report (+ its batches), as the history grows."""
    charts = TrainingCharts()
    costs, step = [], 0
    for i in range(reports):
        events = [{"type": "batch", "step": step + b, "loss": 1 / (step + b + 1)}
                  for b in range(batches_per_report)]
        step += batches_per_report
        metrics = {"train_loss": 1 / (i + 1), "valid_loss": 1 / (i + 1), "train_accuracy": 0.5,
                   "valid_accuracy": 0.5}
        events += [{"type": "report", "step": step, "iteration": i + 1, "metrics": metrics},
                   {"type": "checkpoint", "step": step, "iteration": i + 1, "id": f"{step:06d}"}]
        started = time.perf_counter()
        charts.add_events(events)
        costs.append(time.perf_counter() - started)
    return {"median_s": median(costs), "max_s": max(costs), "last_s": costs[-1],
            "points": charts.points}


def scrub_cost(data: mw.DataSource, work: Path, n: int) -> dict[str, float]:
    session = mw.TrainingSession.create(data, SCRATCH, work / "scrub")
    k = len(session.classes)
    for i in range(1, n + 1):
        session.store.commit(phase="training", iteration=i, step_number=i * 20,
                             metrics={"train_loss": 1 / i, "valid_loss": 1 / i + 0.01 * (i % 7),
                                      "train_accuracy": 1 - 1 / (i + 1),
                                      "valid_accuracy": 1 - 1 / (i + 2)},
                             model_state=None, confusion=[[i] * k for _ in range(k)])
    started = time.perf_counter()
    timeline = CheckpointTimeline(mw.TrainingSession.restore(session.directory))
    opened = time.perf_counter() - started
    costs = []
    for index in range(n):
        started = time.perf_counter()
        timeline.select(index)
        costs.append(time.perf_counter() - started)
    return {"open_s": opened, "median_s": median(costs), "max_s": max(costs),
            "total_s": sum(costs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=500)
    args = ap.parse_args()

    data = mw.datasets.shapes()
    params = SCRATCH.replace(max_iterations=args.iterations)
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-ui-bench-"))
    try:
        # Both sides in background threads, as sessions train (see common.in_thread).
        times: dict[str, list[float]] = {"session alone": [], "session + Studio": []}
        busy: list[float] = []
        in_thread(training(data, params, work, True, [], []))()  # imports, first touches
        contenders = {name: in_thread(training(data, params, work, "Studio" in name, seconds,
                                               busy))
                      for name, seconds in times.items()}
        interleaved(contenders, args.repeats)  # each run records its own training time
        charts = chart_update_cost(args.reports, 20)
        scrub = scrub_cost(data, work, args.checkpoints)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio, median_ratio = ratios(times, "session + Studio", "session alone")
    print(f"{len(data)} images, {params.architecture} at {params.image_size} px, "
          f"{args.iterations} iterations, {args.repeats} interleaved runs each\n")
    print_timings(times)
    print(f"\nStudio attached / alone (best runs): {ratio:.3f}   target <= 1.03"
          f"   (medians: {median_ratio:.3f})")
    print(f"the Studio's own thread was on the CPU for {median(busy):.2%} of the training time"
          f" (median)\n")
    print_table(["measure", "median ms", "max ms", "note"], [
        ["chart update, one report + 20 batches", charts["median_s"] * 1e3,
         charts["max_s"] * 1e3, f"{args.reports} reports, {charts['points']} points kept"],
        [f"timeline select, {args.checkpoints} checkpoints", scrub["median_s"] * 1e3,
         scrub["max_s"] * 1e3, f"opening the timeline: {scrub['open_s']:.2f} s"],
    ])
    print_figures({"studio_ratio": round(ratio, 4), "studio_median_ratio": round(median_ratio, 4),
                   "alone_s": round(min(times["session alone"]), 3),
                   "studio_s": round(min(times["session + Studio"]), 3),
                   "studio_cpu_share": round(median(busy), 5),
                   "chart_update_median_ms": round(charts["median_s"] * 1e3, 3),
                   "chart_update_max_ms": round(charts["max_s"] * 1e3, 3),
                   "scrub_median_ms": round(scrub["median_s"] * 1e3, 4),
                   "scrub_max_ms": round(scrub["max_s"] * 1e3, 3),
                   "timeline_open_s": round(scrub["open_s"], 3),
                   "checkpoints": args.checkpoints, "iterations": args.iterations})


if __name__ == "__main__":
    main()
