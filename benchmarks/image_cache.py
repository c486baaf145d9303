"""Decoded-image cache vs streaming from disk, and glibc malloc tuning on vs off.

From-scratch training as the demo did before it learned by transfer (small_cnn at 64 px,
12 iterations, on the generated shapes, whose files are 256 px as photos are larger than
the training size): a plain fastai Learner, built as
trainer.py builds it, runs `fit_one_cycle` in a background thread with DataLoaders from
`make_dataloaders(cache_mb=0)` (every image decoded and resized on every pass) or from the
default (decoded once into RAM; its fit time includes the decoding).
1. In this process, malloc tuned as training processes are: the two loaders interleaved,
   on the demo's files (target: epochs >= 3x faster with the cache) and on the same shapes
   saved at --small-size px, where decoding costs little and the model's compute dominates.
2. Malloc tuning is process-wide, so each side runs in fresh processes, taking turns:
   epoch time and minor page faults per epoch for both loaders, tuned and untuned.
Run: `make bench` (or `python benchmarks/image_cache.py --iterations 3 --repeats 3`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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
from mlwidgets.data import split_items  # noqa: E402
from mlwidgets.datasets import SHAPES_FILE_SIZE  # noqa: E402
from mlwidgets.loaders import make_dataloaders  # noqa: E402
from mlwidgets.malloc import tune_for_training  # noqa: E402
from mlwidgets.models import build_model  # noqa: E402

# What is timed: a small CNN trained from scratch on images (transfer learning trains on
# extracted features, where no image is decoded after the first pass).
SCRATCH = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", image_size=64,
                             max_iterations=12)

LOADERS = {"stream": 0, "cache": None}  # name: cache_mb


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Fit:
    """One fit: DataLoaders made, a Learner fitted; it keeps epoch wall times and faults."""

    def __init__(self, data: mw.DataSource, params: mw.ModelParameters, cache_mb: float | None):
        self.data, self.params, self.cache_mb = data, params, cache_mb
        self.train, self.valid = split_items(data.items, 0.2, params.seed)  # "auto" split
        self.epochs: list[float] = []
        self.faults: list[int] = []

    def __call__(self) -> None:
        import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
        import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
        import torch
        from fastai.callback.core import Callback
        from fastai.learner import Learner
        from fastai.optimizer import Adam
        from fastai.torch_core import set_seed

        p, fit = self.params, self

        class EpochClock(Callback):
            def before_epoch(self) -> None:
                self.start, self.faults = time.perf_counter(), minor_faults()

            def after_epoch(self) -> None:
                fit.epochs.append(time.perf_counter() - self.start)
                fit.faults.append(minor_faults() - self.faults)

        dls = make_dataloaders(self.train, self.valid, self.data.classes, p.image_size,
                               p.batch_size, cache_mb=self.cache_mb)
        learn = Learner(dls, build_model(p, len(self.data.classes)),
                        loss_func=torch.nn.CrossEntropyLoss(), opt_func=Adam, cbs=EpochClock())
        set_seed(p.seed)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(p.max_iterations, lr_max=p.learning_rate)

    @property
    def images_per_epoch(self) -> int:
        bs = self.params.batch_size  # the last partial training batch is dropped
        return len(self.train) // bs * bs + len(self.valid)

    def images_per_s(self) -> float:
        return self.images_per_epoch / min(self.epochs)


def compare_loaders(data: mw.DataSource, params: mw.ModelParameters,
                    repeats: int) -> tuple[dict[str, list[float]], dict[str, Fit]]:
    fits = {name: Fit(data, params, cache_mb) for name, cache_mb in LOADERS.items()}
    in_thread(Fit(data, params.replace(max_iterations=1), 0))()  # warm-up: imports, pages
    return interleaved({name: in_thread(fit) for name, fit in fits.items()}, repeats), fits


def demo_epochs(iterations: int = 3, repeats: int = 3) -> dict[str, float]:
    """The demo's best epoch time with each loader, and the speedup (for other benchmarks)."""
    _, fits = compare_loaders(mw.datasets.shapes(),
                              SCRATCH.replace(max_iterations=iterations),
                              repeats)
    epoch = {name: min(fit.epochs) for name, fit in fits.items()}
    return {"stream_epoch_s": round(epoch["stream"], 3), "cache_epoch_s": round(epoch["cache"], 3),
            "cache_epoch_speedup": round(epoch["stream"] / epoch["cache"], 2)}


def worker(tuned: bool, iterations: int) -> None:
    """One side of the malloc comparison, in a fresh process: prints one JSON line."""
    changed = tune_for_training() if tuned else False
    times, fits = compare_loaders(mw.datasets.shapes(),
                                  SCRATCH.replace(max_iterations=iterations), 1)
    print(json.dumps({"tuned": changed, **{
        name: {"fit_s": times[name][0], "epoch_s": min(fit.epochs),
               "faults_per_epoch": median(fit.faults)} for name, fit in fits.items()}}))


def malloc_side(tuned: bool, iterations: int) -> dict:
    command = [sys.executable, __file__, "--worker", "tuned" if tuned else "default",
               "--iterations", str(iterations)]
    env = {**os.environ, "MLWIDGETS_MALLOC_TUNING": "1" if tuned else "0"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tuned"] == tuned, result
    return result


def report_loaders(title: str, times: dict[str, list[float]], fits: dict[str, Fit]) -> float:
    speedup, median_speedup = (1 / r for r in ratios(times, "cache", "stream"))
    epoch = {name: min(fit.epochs) for name, fit in fits.items()}
    print(f"{title}\n")
    print_timings(times)
    print()
    print_table(["loader", "best epoch s", "images/s", "faults/epoch"], [
        [name, epoch[name], round(fit.images_per_s()), round(median(fit.faults))]
        for name, fit in fits.items()])
    print(f"\ncache speedup per epoch (stream / cache, best epochs): "
          f"{epoch['stream'] / epoch['cache']:.2f}   target >= 3   (whole fits, decoding "
          f"included: best {speedup:.2f}, medians {median_speedup:.2f})\n")
    return speedup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3, help="epochs a fit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-size", type=int, default=64,
                    help="size of the small files in part 1b (0: skip them)")
    ap.add_argument("--worker", choices=["tuned", "default"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker == "tuned", args.iterations)

    tune_for_training()  # as a training process does (part 2 measures the other side)
    params = SCRATCH.replace(max_iterations=args.iterations)
    data = mw.datasets.shapes()
    print(f"{len(data)} images, {params.architecture} at {params.image_size} px, batch "
          f"{params.batch_size}, {args.iterations} epochs a fit, {args.repeats} interleaved "
          f"runs each, fits in a background thread\n")
    times, fits = compare_loaders(data, params, args.repeats)
    speedup = report_loaders(f"1. demo files ({SHAPES_FILE_SIZE} px PNG), trained at "
                             f"{params.image_size} px, malloc tuned", times, fits)
    figures: dict[str, object] = {
        "cache_speedup": round(speedup, 3),
        "cache_median_speedup": round(1 / ratios(times, "cache", "stream")[1], 3),
        "cache_epoch_speedup": round(min(fits["stream"].epochs) / min(fits["cache"].epochs), 3),
        "cache_images_per_s": round(fits["cache"].images_per_s()),
        "stream_images_per_s": round(fits["stream"].images_per_s()),
        "cache_epoch_s": round(min(fits["cache"].epochs), 3),
        "stream_epoch_s": round(min(fits["stream"].epochs), 3),
    }
    if args.small_size:
        small = mw.datasets.shapes(image_size=args.small_size)  # made once, then reused
        times, fits = compare_loaders(small, params, args.repeats)
        speedup = report_loaders(f"1b. the same shapes as {args.small_size} px PNG files, "
                                 f"trained at {params.image_size} px, malloc tuned", times, fits)
        figures.update({
            "small_source_px": args.small_size, "small_cache_speedup": round(speedup, 3),
            "small_cache_epoch_speedup": round(
                min(fits["stream"].epochs) / min(fits["cache"].epochs), 3),
            "small_cache_images_per_s": round(fits["cache"].images_per_s()),
            "small_stream_images_per_s": round(fits["stream"].images_per_s()),
        })

    sides: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.repeats):  # taking turns, so machine noise hits both alike
        for name in sides:
            sides[name].append(malloc_side(name == "tuned", args.iterations))
    per_epoch = Fit(data, params, None).images_per_epoch
    rows, best = [], {}
    for loader in LOADERS:
        for side, results in sides.items():
            epoch = min(r[loader]["epoch_s"] for r in results)
            faults = median([r[loader]["faults_per_epoch"] for r in results])
            best[loader, side] = epoch, faults
            rows.append([f"{loader}, malloc {side}", epoch, round(per_epoch / epoch),
                         round(faults), " ".join(f"{r[loader]['fit_s']:.2f}" for r in results)])
    print("2. demo files, each side in its own processes\n")
    print_table(["loader, malloc", "best epoch s", "images/s", "faults/epoch", "fits (s)"], rows)
    print()
    for loader in LOADERS:
        (default_s, default_faults), (tuned_s, tuned_faults) = (best[loader, "default"],
                                                                best[loader, "tuned"])
        print(f"malloc tuning, {loader}: page faults per epoch {default_faults:.0f} -> "
              f"{tuned_faults:.0f}, best epoch {default_s / tuned_s:.2f}x faster")
        figures.update({
            f"malloc_{loader}_epoch_speedup": round(default_s / tuned_s, 3),
            f"malloc_{loader}_faults_per_epoch_default": round(default_faults),
            f"malloc_{loader}_faults_per_epoch_tuned": round(tuned_faults),
        })
    figures.update({"iterations": args.iterations, "images": len(data)})
    print_figures(figures)


if __name__ == "__main__":
    main()
