"""What a TrainingSession costs on top of bare fastai: target wall-time ratio <= 1.05.

Same data, model, seed and epochs: fastai `fit_one_cycle` on a plain Learner, against a
TrainingSession that commits a checkpoint every iteration with an observer attached.
Run: `make bench` (or `python benchmarks/overhead.py --iterations 5 --repeats 3`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import in_thread, interleaved, print_figures, print_timings, ratios  # noqa: E402

import mlwidgets as mw  # noqa: E402

# The training loop's own cost: the whole network trained from scratch on images, as the
# demo did before the built-in extractor (the transfer benchmark measures that path).
SCRATCH = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", image_size=64)
from mlwidgets.loaders import make_dataloaders  # noqa: E402
from mlwidgets.models import build_model  # noqa: E402


def bare_fastai(session_like: mw.TrainingSession, params: mw.ModelParameters) -> None:
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
    import torch
    from fastai.learner import Learner
    from fastai.optimizer import Adam
    from fastai.torch_core import set_seed

    train, valid = session_like.split
    dls = make_dataloaders(train, valid, session_like.classes, params.image_size,
                           params.batch_size)
    learn = Learner(dls, build_model(params, len(session_like.classes)),
                    loss_func=torch.nn.CrossEntropyLoss(), opt_func=Adam)
    set_seed(params.seed)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(params.max_iterations, lr_max=params.learning_rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    data = mw.datasets.shapes()
    params = SCRATCH.replace(max_iterations=args.iterations)
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-bench-"))
    reference = mw.TrainingSession.create(data, params, work / "reference")  # the same split
    runs = {"n": 0}
    observed = []

    def session() -> None:
        runs["n"] += 1
        s = mw.TrainingSession.create(data, params, work / f"run-{runs['n']}")
        s.on_event(observed.append)
        job = s.start()
        job.wait()
        assert job.state == "completed", job.error

    try:
        # Bare fastai runs in a background thread too: sessions train in one (see in_thread).
        bare = in_thread(lambda: bare_fastai(reference, params))
        bare()  # warm-up: imports, first-touch allocations
        times = interleaved({"bare fastai fit_one_cycle": bare, "TrainingSession": session},
                            args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio, median_ratio = ratios(times, "TrainingSession", "bare fastai fit_one_cycle")
    print(f"{len(data)} images, {params.architecture} at {params.image_size} px, "
          f"{args.iterations} iterations, {args.repeats} interleaved runs each\n")
    print_timings(times)
    print(f"\noverhead ratio (session / bare fastai, best runs): {ratio:.3f}   target <= 1.05"
          f"   (medians: {median_ratio:.3f})")
    print_figures({"overhead_ratio": round(ratio, 4), "median_ratio": round(median_ratio, 4),
                   "bare_fastai_s": round(min(times["bare fastai fit_one_cycle"]), 3),
                   "session_s": round(min(times["TrainingSession"]), 3),
                   "iterations": args.iterations, "images": len(data),
                   "checkpoints_per_run": args.iterations})

if __name__ == "__main__":
    main()
