"""What understanding a session costs and how well it finds label errors (issue 16).

1. Compare from cache: a session with `--checkpoints` checkpoints (one trained head, the
   others its perturbed copies, all on the same frozen backbone and cached features),
   every checkpoint's predictions cached; then `session.compare(a, b)` for random pairs,
   the listing loaded, each pair read from the on-disk cache (target median <= 100 ms).
2. First prediction: a checkpoint's predictions computed and cached for the first time
   vs the plain batched computation of the same probabilities (the head over the cached
   features; a forward pass over the images for a from-scratch session); target <= 1.1x.
3. Data-problem scan on `--images` shapes with cached features (EfficientNet-Lite0, the
   built-in extractor): the first call (cleanlab's import included), then the best of 3
   (target <= 5 s).
4. Label errors: 5% of those labels flipped; precision@k and recall@k of the ranking at
   k = flipped and k = 2 x flipped (target recall >= 0.8 at 2 x flipped).
Run: `make bench` (or `python benchmarks/understand.py`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, median, print_figures, print_table  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets import features as feats  # noqa: E402
from mlwidgets.checkpoints import BODY_FILE  # noqa: E402
from mlwidgets.models import small_cnn  # noqa: E402
from mlwidgets.predictions import PredictionCache, head_probabilities  # noqa: E402
from mlwidgets.problems import file_hashes, find_problems, precision_recall_at  # noqa: E402
from mlwidgets.scan import extract_features  # noqa: E402


def head_session(data: mw.DataSource, work: Path, n: int, image_size: int):
    """A transfer-learning session with `n` checkpoints sharing one frozen body."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    body, _ = small_cnn()
    weights = work / "backbone.safetensors"
    save_file(body.state_dict(), str(weights))
    params = mw.ModelParameters(weights_file=str(weights), image_size=image_size,
                                max_iterations=1)
    session = mw.TrainingSession.create(data, params, work / "heads")
    job = session.start()
    assert job.wait() and job.state == "completed", job.error
    trained = session.checkpoints[-1]
    state = trained.load_tensors()
    cached = feats.find(session.directory / feats.FEATURES_DIR, session.feature_key())
    generator = torch.Generator().manual_seed(1)
    for i in range(2, n + 1):
        noisy = {k: v + 0.05 * torch.randn(v.shape, generator=generator)
                 for k, v in state.items()}
        session.store.commit(phase="training", iteration=i, step_number=i * 10,
                             metrics={"valid_loss": 1 / i}, model_state=noisy,
                             model=trained.model, linked_files={BODY_FILE: cached.body_file})
    return mw.TrainingSession.restore(session.directory), cached


def first_prediction_features(session, cached, k: int) -> tuple[float, float]:
    """(cached first computation s, plain head computation s), best of `k` checkpoints."""
    checkpoints = session.checkpoints[1:k + 1]
    valid_x = cached.tensors["valid_x"]
    it = iter(checkpoints)
    it_plain = iter(checkpoints)

    # One cache, as a session has (its features loaded once, not measured); each run
    # asks for another checkpoint, so nothing comes from memory.
    cache = PredictionCache(session.directory, session.classes, session.split[1],
                            session.feature_key())
    cache._features = cached

    def ours() -> None:
        cache.probabilities(next(it))

    def plain() -> None:
        head_probabilities(next(it_plain), valid_x)

    times = interleaved({"cached": ours, "plain": plain}, len(checkpoints))
    return min(times["cached"]), min(times["plain"])  # best runs (see common.py)


def first_prediction_images(data: mw.DataSource, work: Path, image_size: int,
                            repeats: int) -> tuple[float, float]:
    """(cached first computation s, ImageClassifier.probabilities s) for a from-scratch
    checkpoint over the validation images."""
    params = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                                image_size=image_size, max_iterations=repeats)
    session = mw.TrainingSession.create(data, params, work / "scratch")
    job = session.start()
    assert job.wait() and job.state == "completed", job.error
    paths = [i.path for i in session.split[1]]
    ours_it, plain_it = iter(session.checkpoints), iter(session.checkpoints)

    cache = PredictionCache(session.directory, session.classes, session.split[1])

    def ours() -> None:
        cache.probabilities(next(ours_it))

    def plain() -> None:
        mw.ImageClassifier.from_checkpoint(next(plain_it)).probabilities(paths)

    times = interleaved({"cached": ours, "plain": plain}, repeats)
    return min(times["cached"]), min(times["plain"])  # best runs (see common.py)


def compare_cost(session, pairs: int) -> list[float]:
    for c in session.checkpoints:  # every checkpoint's predictions, cached on disk
        if c.has_model:
            session.predictions(c)
    session.prediction_cache.flush()
    fresh = mw.TrainingSession.restore(session.directory)
    ids = [c.id for c in fresh.checkpoints if c.has_model]  # the listing loaded
    fresh.prediction_cache  # noqa: B018  (opened once, as a panel does)
    rng = random.Random(0)
    costs = []
    for _ in range(pairs):
        a, b = rng.choice(ids), rng.choice(ids)
        fresh.prediction_cache._memory.clear()  # read from disk, not from memory
        started = time.perf_counter()
        fresh.compare(a, b)
        costs.append(time.perf_counter() - started)
    return costs


def scan_and_flips(images: int, image_size: int, work: Path) -> dict[str, float]:
    classes = ("circle", "square", "triangle", "star")
    data = mw.datasets.shapes(work / "scan", images_per_class=images // len(classes),
                              image_size=max(64, image_size))
    started = time.perf_counter()
    x = extract_features(data.items, data.classes, "efficientnet_lite0", image_size)
    extract_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    labels = data.labels
    flipped = rng.choice(len(labels), max(1, round(0.05 * len(labels))), replace=False)
    for i in flipped:
        others = [c for c in classes if c != labels[i]]
        labels[i] = others[int(rng.integers(len(others)))]
    paths = [i.path for i in data.items]
    hashes = file_hashes(paths)
    times = []
    for _ in range(4):  # the first call imports cleanlab and scikit-learn's models
        started = time.perf_counter()
        report = find_problems(x, labels, data.classes, paths, hashes=hashes)
        times.append(time.perf_counter() - started)
    truth = set(int(i) for i in flipped)
    k = len(truth)
    p1, r1 = precision_recall_at(report.ranking, truth, k)
    p2, r2 = precision_recall_at(report.ranking, truth, 2 * k)
    flagged = {i.index for i in report.label_issues}
    return {"images": len(labels), "extract_s": extract_s, "scan_cold_s": times[0],
            "scan_s": min(times[1:]), "scan_median_s": median(times[1:]), "flipped": k,
            "precision_at_k": p1, "recall_at_k": r1,
            "precision_at_2k": p2, "recall_at_2k": r2,
            "flagged": len(flagged), "flagged_true": len(flagged & truth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--images-per-class", type=int, default=50, help="for 1. and 2.")
    ap.add_argument("--image-size", type=int, default=64, help="for 1. and 2.")
    ap.add_argument("--scan-image-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlwidgets-understand-bench-"))
    try:
        data = mw.datasets.shapes(work / "shapes", images_per_class=args.images_per_class,
                                  image_size=64)
        session, cached = head_session(data, work, args.checkpoints, args.image_size)
        ours_f, plain_f = first_prediction_features(session, cached,
                                                    min(args.repeats * 4, args.checkpoints - 1))
        ours_i, plain_i = first_prediction_images(data, work, args.image_size, args.repeats)
        costs = compare_cost(session, args.pairs)
        scan = scan_and_flips(args.images, args.scan_image_size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    valid = len(session.split[1])
    print(f"{args.checkpoints} checkpoints, {valid} validation images; scan on "
          f"{scan['images']} images ({args.scan_image_size} px EfficientNet-Lite0 features)\n")
    print_table(["measure", "value", "target", "note"], [
        ["compare from cache, median ms", median(costs) * 1e3, "<= 100",
         f"max {max(costs) * 1e3:.1f} ms over {len(costs)} random pairs"],
        ["first prediction / plain (features)", ours_f / plain_f, "<= 1.1",
         f"{ours_f * 1e3:.1f} ms vs {plain_f * 1e3:.1f} ms (best runs)"],
        ["first prediction / plain (images)", ours_i / plain_i, "<= 1.1",
         f"{ours_i:.2f} s vs {plain_i:.2f} s (best runs)"],
        ["data-problem scan, s (best of 3)", scan["scan_s"], "<= 5",
         f"median {scan['scan_median_s']:.2f} s, first call {scan['scan_cold_s']:.2f} s; "
         f"extraction {scan['extract_s']:.1f} s"],
        ["label flips: precision@k", scan["precision_at_k"], "", f"k = {scan['flipped']}"],
        ["label flips: recall@k", scan["recall_at_k"], "", f"k = {scan['flipped']}"],
        ["label flips: precision@2k", scan["precision_at_2k"], "", ""],
        ["label flips: recall@2k", scan["recall_at_2k"], ">= 0.8", ""],
        ["confident learning flags", scan["flagged"], "",
         f"{scan['flagged_true']} of them truly flipped"],
    ])
    print_figures({
        "compare_median_ms": round(median(costs) * 1e3, 3),
        "compare_max_ms": round(max(costs) * 1e3, 3),
        "first_prediction_ratio_features": round(ours_f / plain_f, 4),
        "first_prediction_ratio_images": round(ours_i / plain_i, 4),
        "scan_s": round(scan["scan_s"], 3), "scan_median_s": round(scan["scan_median_s"], 3),
        "scan_cold_s": round(scan["scan_cold_s"], 3),
        "extract_s": round(scan["extract_s"], 2),
        **{k: round(scan[k], 4) for k in ("precision_at_k", "recall_at_k", "precision_at_2k",
                                          "recall_at_2k")},
        "flipped": scan["flipped"], "images": scan["images"],
        "checkpoints": args.checkpoints})


if __name__ == "__main__":
    main()
