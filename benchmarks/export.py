"""Core ML export: our export vs a bare coremltools.convert, file sizes, verification speed.

Targets: our export <= 1.3x the bare conversion time; float16 ~0.5x and int8 ~0.25x the
float32 size. Run: `make bench` (or `python benchmarks/export.py --repeats 3`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, print_figures, print_table, print_timings, ratios  # noqa: E402

import mlwidgets as mw  # noqa: E402
from mlwidgets.coreml.export import size_of  # noqa: E402
from mlwidgets.coreml.verify import verify  # noqa: E402
from mlwidgets.models import build_model  # noqa: E402

VARIANTS = {"float32": {}, "float16": {"precision": "float16"}, "int8": {"quantize": "int8"},
            "palettize-6": {"quantize": "palettize-6"}}


def bare_convert(classifier: mw.ImageClassifier, path: Path) -> None:
    """What a user would write by hand: trace (as our export does), convert, save."""
    import coremltools as ct
    import torch

    s = classifier.image_size
    model = torch.nn.Sequential(classifier.model, torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, s, s), check_trace=False)
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars, not part of the table
        # float32 compute, as our default export (coremltools would pick float16 otherwise).
        converted = ct.convert(traced, convert_to="mlprogram", skip_model_load=True,
                               compute_precision=ct.precision.FLOAT32,
                               inputs=[ct.ImageType(name="image", shape=(1, 3, s, s),
                                                    scale=1 / 255.0,
                                                    color_layout=ct.colorlayout.RGB)],
                               classifier_config=ct.ClassifierConfig(classifier.classes))
    converted.save(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architecture", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=50)
    args = ap.parse_args()

    data = mw.datasets.shapes()
    params = mw.ModelParameters(architecture=args.architecture, image_size=args.image_size)
    classifier = mw.ImageClassifier.from_model(build_model(params, len(data.classes)),
                                               data.classes, args.image_size)
    images = [item.path for item in data.items[::max(1, len(data) // args.images)]][:args.images]
    work = Path(tempfile.mkdtemp(prefix="mlwidgets-export-bench-"))
    counter = iter(range(10_000))
    try:
        times = interleaved({
            "bare coremltools.convert": lambda: bare_convert(
                classifier, work / f"bare-{next(counter)}.mlpackage"),
            "mlwidgets export": lambda: classifier.write(work / f"ours-{next(counter)}.mlpackage"),
        }, args.repeats)
        sizes, seconds = {}, {}
        for name, options in VARIANTS.items():
            result = classifier.write(work / f"{name}.mlpackage", **options)
            sizes[name], seconds[name] = size_of(result.path), result.seconds
        started = time.perf_counter()
        report = verify(work / "float32.mlpackage", classifier, images)
        verify_per_image = (time.perf_counter() - started) / len(images)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio, median_ratio = ratios(times, "mlwidgets export", "bare coremltools.convert")
    print(f"{args.architecture} at {args.image_size} px, {len(data.classes)} classes; "
          f"{args.repeats} interleaved exports each\n")
    print_timings(times)
    print(f"\nexport ratio (ours / bare, best runs): {ratio:.3f}   target <= 1.3"
          f"   (medians: {median_ratio:.3f})\n")
    print_table(["weights", "size MB", "x float32", "export s"], [
        [name, sizes[name] / 1e6, sizes[name] / sizes["float32"], seconds[name]]
        for name in VARIANTS])
    print(f"\nverification ({report.backend}): {report.summary()}; "
          f"{verify_per_image * 1000:.1f} ms per image\n")
    print_figures({
        "export_ratio": round(ratio, 4), "median_ratio": round(median_ratio, 4),
        "bare_convert_s": round(min(times["bare coremltools.convert"]), 3),
        "export_s": round(min(times["mlwidgets export"]), 3),
        "size_bytes": sizes,
        "size_ratio": {k: round(v / sizes["float32"], 4) for k, v in sizes.items()},
        "verify_ms_per_image": round(verify_per_image * 1000, 2),
        "verify_backend": report.backend, "verify_top1_agreement": report.top1_agreement,
        "verify_max_abs_diff": report.max_abs_diff,
    })


if __name__ == "__main__":
    main()
