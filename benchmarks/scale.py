"""Bigger runs, side by side on the same data and iterations: the thread runner, the process
runner (one worker), and two data-parallel workers (one thread each, gloo).

Prints images/s per contender, the process runner's overhead over the thread runner
(target <= 1.10: it pays for starting a Python process with torch), and two workers'
speed-up over one. With GPUs, the same script trains one worker per GPU (NCCL) and
reports the scaling; without them it says it skips that part.
Run: `make bench` (or `python benchmarks/scale.py --iterations 3 --repeats 2`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from common import print_figures, print_table  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets.demo import demo_data  # noqa: E402


def timed_run(data: mw.DataSource, params: mw.ModelParameters, root: Path, runner: str,
              processes: int) -> float:
    directory = root / f"{runner}-{processes}-{time.monotonic_ns()}"
    session = mw.TrainingSession.create(data, params, directory)
    started = time.perf_counter()
    job = session.start(runner, processes)
    assert job.wait(3600) and session.state == "completed", job.error
    seconds = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images-per-class", type=int, default=60)
    args = parser.parse_args()
    data = demo_data("shapes", args.images_per_class)
    params = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                                image_size=args.image_size, max_iterations=args.iterations)
    contenders = {"thread runner": ("thread", 1), "process runner, 1 worker": ("process", 1),
                  "process runner, 2 workers": ("process", 2)}
    root = Path(tempfile.mkdtemp())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for repeat in range(args.repeats):
            names = list(contenders)
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                times[name].append(timed_run(data, params, root, *contenders[name]))
        gpus = torch.cuda.device_count()
        if gpus > 1:
            times[f"{gpus} GPUs"] = [timed_run(data, params, root, "process", gpus)
                                     for _ in range(args.repeats)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    images = round(len(data) * 0.8) * args.iterations
    best = {name: min(t) for name, t in times.items()}
    print(f"{len(data)} shapes at {args.image_size} px, small_cnn from scratch, "
          f"{args.iterations} iterations, {args.repeats} repeats (start to finish)")
    print_table(["contender", "best s", "images/s"],
                [[name, t, images / t] for name, t in best.items()])
    if gpus <= 1:
        print(f"{gpus} GPU(s): skipping per-GPU scaling")
    figures = {
        "process_over_thread": round(best["process runner, 1 worker"] / best["thread runner"], 3),
        "two_workers_speedup": round(best["process runner, 1 worker"]
                                     / best["process runner, 2 workers"], 3),
        "target_process_over_thread": 1.10, "gpus": gpus}
    print_figures(figures)


if __name__ == "__main__":
    main()
