"""The demo: train on a built-in dataset, restore the best checkpoint, evaluate, summarise.

The shapes demo is Create ML's default: transfer learning on the built-in feature extractor
(EfficientNet-Lite0, no download) at its native 224 px. The digits demo trains a small CNN
from scratch, for contrast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import datasets
from .classifier import ImageClassifier
from .console import follow, print_data_summary, print_table
from .coreml.report import export_and_verify
from .data import DataSource
from .malloc import release_free_memory
from .parameters import ModelParameters
from .record import default_session_dir
from .session import TrainingSession

# Chosen by measurement on 2 CPU cores: shapes (60 images a class; 48 validation images, so
# one mistake still shows as 97.9%) extracts and trains in about 30 s on idle cores (90-110 s
# while other work shares them) and reaches 100% validation accuracy, in about 1.4 GB of
# memory; digits reaches >95% from scratch.
DEMO_PARAMETERS = {
    "shapes": ModelParameters(max_iterations=25),
    "digits": ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                              image_size=32, max_iterations=8),
}
DEMO_IMAGES_PER_CLASS = 60


def demo_data(dataset: str, images_per_class: int | None = None) -> DataSource:
    """The demo's built-in dataset (generated once into the cache)."""
    if dataset == "digits":
        return datasets.digits()
    return datasets.shapes(images_per_class=images_per_class or DEMO_IMAGES_PER_CLASS)


def peak_memory_mb() -> float | None:
    """This process's peak resident memory so far (Binder allows about 2 GB), if known.

    Linux's VmHWM, not getrusage: that one starts from the parent's peak when a large
    process starts the demo (it is kept across fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass  # not Linux
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes / KiB


def run_demo(data: DataSource, dataset: str, session_dir: Path | None = None,
             iterations: int | None = None, image_size: int | None = None) -> int:
    params = DEMO_PARAMETERS[dataset]
    if iterations:
        params = params.replace(max_iterations=iterations)
    if image_size:
        params = params.replace(image_size=image_size)
    session_dir = session_dir or default_session_dir("demo")
    print_data_summary(data)
    session = TrainingSession.create(data, params, session_dir)
    train, valid = session.split
    what = (f"transfer learning on {params.feature_extractor}" if params.feature_extractor
            else f"{params.architecture} from scratch")
    print(f"Training by {what} at {params.image_size} px for "
          f"{params.max_iterations} iterations ({len(train)} training, {len(valid)} validation "
          f"images) into {session.directory}")
    follow(session, session.start())
    release_free_memory()  # the training thread's heap: evaluation and export reuse it

    best = session.best_checkpoint()
    classifier = ImageClassifier.from_checkpoint(best)
    metrics = classifier.evaluation(DataSource(valid, origin="the validation split"))
    release_free_memory()  # evaluation's activations, before the converter needs its own
    print("Exporting the best checkpoint to Core ML and verifying it…", flush=True)
    report = export_and_verify(classifier, session.directory / "exports" / f"{dataset}.mlpackage",
                               session.verification_images())
    exported = report.result
    print()
    print(metrics.summary())
    print()
    print_table(["", ""], [
        ["classes", ", ".join(session.classes)],
        ["iterations", f"{session.progress.iteration} in {session.elapsed:.1f} s"],
        ["best checkpoint", f"{best.id} (iteration {best.iteration}, "
                            f"validation loss {best.metrics['valid_loss']:.4f})"],
        ["validation accuracy", f"{metrics.accuracy:.1%} on {len(valid)} images"],
        ["Core ML model", f"{exported.path} ({exported.size_bytes / 1e6:.1f} MB)"],
        *[[label, text] for label, text in report.lines()[2:]],
        *([["peak memory", f"{peak:.0f} MB resident"]] if (peak := peak_memory_mb()) else []),
        ["session", str(session.directory)],
        ["checkpoints", f"{len(session.checkpoints)} in {session.store.directory}"],
        ["list them", f"mlwidgets checkpoints --session {session.directory}"],
    ])
    return 0
