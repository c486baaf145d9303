"""Core ML export: our export vs a bare coremltools.convert, file sizes, verification speed.

Targets: our export <= 1.3x the bare conversion time; float16 ~0.5x and int8 ~0.25x the
float32 size. Run: `make bench` (or `python benchmarks/export.py --repeats 3`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, median, print_figures, print_table, print_timings  # noqa: E402,E501

import mlwidgets as mw  # noqa: E402
from mlwidgets.coreml.export import size_of  # noqa: E402
from mlwidgets.coreml.verify import verify  # noqa: E402
from mlwidgets.models import build_model  # noqa: E402

VARIANTS = {"float32": {}, "float16": {"precision": "float16"}, "int8": {"quantize": "int8"},
            "palettize-6": {"quantize": "palettize-6"}}


def bare_convert(classifier: mw.ImageClassifier, path: Path) -> None:
    """What a user would write by hand: trace, convert as a classifier, save."""
    import coremltools as ct
    import torch

    s = classifier.image_size
    model = torch.nn.Sequential(classifier.model, torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, s, s))
    converted = ct.convert(traced, convert_to="mlprogram", skip_model_load=True,
                           inputs=[ct.ImageType(name="image", shape=(1, 3, s, s),
                                                scale=1 / 255.0, color_layout=ct.colorlayout.RGB)],
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
    classifier = mw.ImageClassifier(build_model(params, len(data.classes)), data.classes,
                                    args.image_size)
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

    bare, ours = median(times["bare coremltools.convert"]), median(times["mlwidgets export"])
    print(f"{args.architecture} at {args.image_size} px, {len(data.classes)} classes; "
          f"median of {args.repeats} interleaved exports\n")
    print_timings(times)
    print(f"\nexport ratio (ours / bare): {ours / bare:.3f}   target <= 1.3\n")
    print_table(["weights", "size MB", "x float32", "export s"], [
        [name, sizes[name] / 1e6, sizes[name] / sizes["float32"], seconds[name]]
        for name in VARIANTS])
    print(f"\nverification ({report.backend}): {report.summary()}; "
          f"{verify_per_image * 1000:.1f} ms per image\n")
    print_figures({
        "export_ratio": round(ours / bare, 4), "bare_convert_s": round(bare, 3),
        "export_s": round(ours, 3),
        "size_bytes": sizes,
        "size_ratio": {k: round(v / sizes["float32"], 4) for k, v in sizes.items()},
        "verify_ms_per_image": round(verify_per_image * 1000, 2),
        "verify_backend": report.backend, "verify_top1_agreement": report.top1_agreement,
        "verify_max_abs_diff": report.max_abs_diff,
    })


if __name__ == "__main__":
    main()
