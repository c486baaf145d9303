"""Transfer learning on a CPU: fastai's frozen-body epochs vs our two phases vs the floor.

Offline and reproducible: generated shapes at 224 px, resnet18 whose weights come from
a local file this script makes by briefly training it on the built-in digits (so its
features mean something). Side by side, the same iterations each:
1. fastai's way: `vision_learner` with the frozen body, `fit_one_cycle` (every epoch
   runs the backbone over every image again),
2. mlwidgets: a TrainingSession, extracting features once, then training the classifier,
3. the floor: one plain-PyTorch forward pass over the images, then a plain-PyTorch
   linear head loop on the features.
Targets: (1)/(2) >= 30 and (2)/(3) <= 1.2. Then the demo's from-scratch epoch time with
and without the decoded-image cache (from image_cache.py; target >= 3x faster). Run: `make bench` or
`python benchmarks/transfer.py [--iterations 25] [--image-size 224]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import in_thread, print_figures, print_table  # noqa: E402
from image_cache import demo_epochs  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets.datasets import SHAPES_FILE_SIZE, cache_dir  # noqa: E402
from mlwidgets.loaders import ImageDataset, make_dataloaders  # noqa: E402
from mlwidgets.models import Normalize, build_model  # noqa: E402


def backbone_weights() -> Path:
    """resnet18 trained for two iterations on the digits; made once, then cached."""
    from safetensors.torch import save_file

    path = cache_dir() / "weights" / "resnet18-digits.safetensors"
    if path.exists():
        return path
    params = mw.ModelParameters(architecture="resnet18", image_size=64, max_iterations=2,
                                learning_rate=3e-3)
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-backbone-"))
    try:
        session = mw.TrainingSession.create(mw.datasets.digits(), params, work / "s")
        job = session.start()
        job.wait()
        if job.state != "completed":
            raise RuntimeError(f"training the backbone failed: {job.error}")
        state = session.latest_checkpoint.load_model_state()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # torchvision's own names: body.0 -> conv1, body.1 -> bn1, body.4..7 -> layer1..4.
    names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    renamed = {}
    for key, value in state.items():
        if key.startswith("body."):
            index, rest = key[5:].split(".", 1)
            renamed[f"{names[index]}.{rest}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(path))
    return path


def fastai_way(session: mw.TrainingSession, weights: Path, iterations: int) -> float:
    """vision_learner with the frozen body: every epoch runs the backbone again."""
    import fastai.callback.progress  # noqa: F401
    import fastai.callback.schedule  # noqa: F401
    import torch
    from fastai.vision.learner import vision_learner
    from safetensors.torch import load_file
    from torchvision.models import resnet18

    p, (train, valid) = session.parameters, session.split
    dls = make_dataloaders(train, valid, session.classes, p.image_size, p.batch_size)
    learn = vision_learner(dls, resnet18, n_out=len(session.classes), pretrained=False,
                           normalize=False, loss_func=torch.nn.CrossEntropyLoss())
    net = resnet18()
    net.load_state_dict(load_file(str(weights)), strict=False)  # its fc is not used
    # The same backbone weights, behind the normalization they were trained with.
    learn.model[0] = torch.nn.Sequential(Normalize(), *list(net.children())[:-2])
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
    return float(session.latest_checkpoint.metrics["valid_accuracy"])


def floor(session: mw.TrainingSession, iterations: int) -> float:
    """The least any tool must do: one forward pass, then a linear head on the features."""
    import torch
    from torch.utils.data import DataLoader

    p, (train, valid) = session.parameters, session.split
    model = build_model(p, len(session.classes)).eval()
    features = torch.nn.Sequential(model.normalize, model.body, model.head[0], model.head[1])

    def extract(items):
        xs, ys = [], []
        loader = DataLoader(ImageDataset(items, session.classes, p.image_size),
                            batch_size=p.batch_size * 2)
        with torch.no_grad():
            for x, y in loader:
                xs.append(features(x))
                ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    (xt, yt), (xv, yv) = extract(train), extract(valid)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images-per-class", type=int, default=200)
    ap.add_argument("--demo-iterations", type=int, default=3, help="epochs a demo fit")
    ap.add_argument("--demo-repeats", type=int, default=3, help="interleaved demo fits")
    args = ap.parse_args()

    data = mw.datasets.shapes(images_per_class=args.images_per_class, image_size=args.image_size,
                              classes=("circle", "square", "triangle"))
    weights = backbone_weights()
    params = mw.ModelParameters(architecture="resnet18", image_size=args.image_size,
                                weights_file=str(weights), max_iterations=args.iterations,
                                learning_rate=1e-2)
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-transfer-bench-"))
    reference = mw.TrainingSession.create(data, params, work / "reference")  # the same split
    n_train, n_valid = (len(items) for items in reference.split)
    results: dict[str, tuple[float, float]] = {}

    def timed(name: str, run) -> None:
        box: dict[str, float] = {}
        started = time.perf_counter()
        in_thread(lambda: box.setdefault("accuracy", run()))()
        results[name] = (time.perf_counter() - started, box["accuracy"])

    try:
        timed("1. fastai frozen body", lambda: fastai_way(reference, weights, args.iterations))
        timed("2. mlwidgets two-phase", lambda: ours(work / "ours", data, params))
        timed("3. floor (plain PyTorch)", lambda: floor(reference, args.iterations))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    images = (n_train + n_valid) * args.iterations
    print(f"\n{len(data)} images ({n_train} training, {n_valid} validation) in "
          f"{len(data.classes)} classes at {args.image_size} px, resnet18, "
          f"{args.iterations} iterations each\n")
    print_table(["contender", "wall s", "images/s", "val accuracy"], [
        [name, t, images / t, f"{acc:.3f}"] for name, (t, acc) in results.items()])
    (t1, _), (t2, _), (t3, _) = results.values()
    print(f"\n(1)/(2) = {t1 / t2:.1f}   target >= 30")
    print(f"(2)/(3) = {t2 / t3:.2f}   target <= 1.2")
    demo = demo_epochs(args.demo_iterations, args.demo_repeats)
    print(f"\ndemo from scratch (small_cnn, {SHAPES_FILE_SIZE} px files at 64 px), best epoch: "
          f"{demo['stream_epoch_s']:.3f} s streaming from disk, {demo['cache_epoch_s']:.3f} s "
          f"from the decoded-image cache = {demo['cache_epoch_speedup']:.2f}x   target >= 3")
    print_figures({"fastai_s": round(t1, 2), "mlwidgets_s": round(t2, 2), "floor_s": round(t3, 2),
                   "fastai_over_ours": round(t1 / t2, 2), "ours_over_floor": round(t2 / t3, 3),
                   "accuracy": {name: round(acc, 4) for name, (_, acc) in results.items()},
                   "images": len(data), "iterations": args.iterations,
                   "image_size": args.image_size, "demo": demo})


if __name__ == "__main__":
    main()
