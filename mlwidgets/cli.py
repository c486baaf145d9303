"""`mlwidgets ...` / `python -m mlwidgets ...`: the engine from a terminal.

Errors print one line starting with "error:" and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .parameters import ALGORITHMS, ARCHITECTURES, CLASSIFIERS

EXIT_ERROR = 2
METRIC_COLUMNS = (("train_loss", "loss"), ("train_accuracy", "acc"),
                  ("valid_loss", "val loss"), ("valid_accuracy", "val acc"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; the session keeps its committed checkpoints", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlwidgets", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train on a built-in dataset, evaluate, summarise")
    d.add_argument("--session", type=Path, help="session directory (default: sessions/demo-…)")
    d.add_argument("--dataset", choices=("shapes", "digits"), default="shapes")
    d.add_argument("--iterations", type=int, help="training iterations (epochs)")
    d.set_defaults(run=_demo)

    t = sub.add_parser("train", help="train a classifier on DATA_DIR (one folder per class)")
    t.add_argument("data_dir", type=Path)
    t.add_argument("--session", type=Path, required=True)
    t.add_argument("--architecture", choices=ARCHITECTURES, default="small_cnn")
    t.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    t.add_argument("--weights-file", help="start from a local .safetensors weights file")
    t.add_argument("--algorithm", choices=ALGORITHMS,
                   help="default: transfer_learning with weights, from_scratch without")
    t.add_argument("--classifier", choices=CLASSIFIERS, default="logistic_regression",
                   help="what transfer learning trains on the extracted features")
    t.add_argument("--fine-tune-iterations", type=int, default=0,
                   help="after transfer learning, train the whole network this long")
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--iterations", type=int, default=10)
    t.add_argument("--checkpoint-interval", type=int, default=1)
    t.add_argument("--augment", action="store_true", help="use all six augmentations")
    t.set_defaults(run=_train)

    r = sub.add_parser("resume", help="continue a session from its latest checkpoint")
    r.add_argument("--session", type=Path, required=True)
    r.add_argument("--iterations", type=int, help="raise the total iteration budget")
    r.set_defaults(run=_resume)

    c = sub.add_parser("checkpoints", help="list a session's checkpoints")
    c.add_argument("--session", type=Path, required=True)
    c.add_argument("--json", action="store_true", help="print a JSON list")
    c.add_argument("--style", choices=("native", "createml", "openai", "mistral"),
                   default="native", help="shape of each JSON object")
    c.set_defaults(run=_checkpoints)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on DATA_DIR")
    e.add_argument("data_dir", type=Path)
    _add_checkpoint_args(e)
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=_evaluate)

    pr = sub.add_parser("predict", help="predict labels for images")
    pr.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    _add_checkpoint_args(pr)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(run=_predict)

    x = sub.add_parser("export", help="export a checkpoint to Core ML (.mlpackage or .mlmodel)")
    _add_checkpoint_args(x)
    x.add_argument("--out", type=Path, required=True,
                   help="model file: .mlpackage (ML program) or .mlmodel (neural network)")
    x.add_argument("--precision", choices=("float32", "float16"), default="float32")
    x.add_argument("--quantize", choices=("int8", "palettize-4", "palettize-6", "palettize-8"),
                   help="compress the weights (palettize-N needs a .mlpackage)")
    x.add_argument("--author", default="")
    x.add_argument("--license", default="")
    x.add_argument("--description", default="", help="short description (default: the classes)")
    x.add_argument("--version", default="", help="the model's version string")
    x.add_argument("--overwrite", action="store_true", help="replace an existing file")
    x.add_argument("--verify", action="store_true",
                   help="check the file against the PyTorch model on the validation images")
    x.set_defaults(run=_export)
    return p


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", type=Path, required=True)
    p.add_argument("--checkpoint", default="best", help="best (default), latest, or an id")


# -- commands -----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import datasets
    from .demo import run_demo

    make = {"shapes": datasets.shapes, "digits": datasets.digits}[args.dataset]
    print(f"Preparing the built-in {args.dataset!r} dataset…", flush=True)
    return run_demo(make(), args.dataset, args.session, args.iterations)


def _train(args: argparse.Namespace) -> int:
    from .data import DataSource
    from .parameters import Augmentation, ModelParameters
    from .session import TrainingSession

    data = DataSource.labeled_directories(args.data_dir)
    print_data_summary(data)
    params = ModelParameters(
        architecture=args.architecture, pretrained=args.pretrained, image_size=args.image_size,
        weights_file=args.weights_file, algorithm=args.algorithm, classifier=args.classifier,
        fine_tune_iterations=args.fine_tune_iterations,
        batch_size=args.batch_size, max_iterations=args.iterations,
        augmentation=Augmentation.all() if args.augment else Augmentation(),
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    session = TrainingSession.create(data, params, args.session,
                                     checkpoint_interval=args.checkpoint_interval)
    return follow(session, session.start())


def _resume(args: argparse.Namespace) -> int:
    from .session import TrainingSession

    session = TrainingSession.restore(args.session)
    print(f"Resuming {session.directory} from {session.latest_checkpoint or 'the start'}")
    return follow(session, session.resume(args.iterations))


def _checkpoints(args: argparse.Namespace) -> int:
    from .session import TrainingSession

    session = TrainingSession.restore(args.session)
    found = session.checkpoints
    if args.json:
        print(json.dumps([c.to_dict(args.style) for c in found], indent=2))
        return 0
    if not found:
        print(f"{session.directory} has no checkpoints yet ({session.state})")
        return 0
    best = _best_id(session)
    rows = [[c.id, c.phase, str(c.iteration), str(c.step_number),
             c.date.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
             *(_fmt(c.metrics.get(k)) for k, _ in METRIC_COLUMNS),
             "best" if c.id == best else ""] for c in found]
    print_table(["id", "phase", "iteration", "step", "date",
                 *(h for _, h in METRIC_COLUMNS), ""], rows)
    print(f"{len(found)} checkpoint(s) in {session.store.directory} · session {session.state}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .classifier import ImageClassifier
    from .data import DataSource
    from .session import TrainingSession

    checkpoint = TrainingSession.restore(args.session).checkpoint(args.checkpoint)
    data = DataSource.labeled_directories(args.data_dir)
    metrics = ImageClassifier.from_checkpoint(checkpoint).evaluation(data)
    if args.json:
        print(json.dumps({"checkpoint": checkpoint.id, **metrics.to_dict()}, indent=2))
    else:
        print(f"Checkpoint {checkpoint.id} on {data.origin} ({len(data)} images)")
        print(metrics.summary())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .classifier import ImageClassifier
    from .session import TrainingSession

    checkpoint = TrainingSession.restore(args.session).checkpoint(args.checkpoint)
    predictions = ImageClassifier.from_checkpoint(checkpoint).predictions(args.images)
    if args.json:
        print(json.dumps([{"image": str(i), "label": p.label, "probabilities": p.probabilities}
                          for i, p in zip(args.images, predictions)], indent=2))
    else:
        print_table(["image", "label", "confidence"],
                    [[str(i), p.label, f"{p.confidence:.3f}"]
                     for i, p in zip(args.images, predictions)])
    return 0


def _export(args: argparse.Namespace) -> int:
    from .classifier import ImageClassifier
    from .coreml import ModelMetadata
    from .session import TrainingSession

    session = TrainingSession.restore(args.session)
    checkpoint = session.checkpoint(args.checkpoint)
    metadata = ModelMetadata(author=args.author, short_description=args.description,
                             license=args.license, version=args.version)
    print(f"Exporting checkpoint {checkpoint.id} to {args.out}…", flush=True)
    classifier = ImageClassifier.from_checkpoint(checkpoint)
    result = classifier.write(args.out, metadata, precision=args.precision,
                              quantize=args.quantize, overwrite=args.overwrite)
    kind = "ML program" if result.format == "mlprogram" else "neural network"
    weights = result.precision + (f", {result.quantize}" if result.quantize else "")
    print(f"Wrote {result.path}")
    print(f"  size    {result.size_bytes / 1e6:.1f} MB ({result.size_bytes} bytes)")
    print(f"  format  {kind} ({result.path.suffix}), {weights} weights, "
          f"{result.seconds:.1f} s")
    if args.verify:
        from .coreml.verify import verify

        report = verify(result.path, classifier, session.verification_images())
        print(f"  verify  {report.summary()}")
    return 0


# -- shared output ------------------------------------------------------------------------


def follow(session: Any, job: Any) -> int:
    """Print each report while `job` trains; Ctrl-C pauses with a checkpoint."""
    def show(event: dict[str, Any]) -> None:
        if event["type"] == "report" and event["phase"] == "extracting_features":
            print(f"  extracted features ({event['iteration']} passes over the images)"
                  f"  [{event['elapsed']:.1f} s]", flush=True)
        elif event["type"] == "report":
            metrics = "  ".join(f"{h} {_fmt(event['metrics'].get(k))}" for k, h in METRIC_COLUMNS)
            phase = "" if event["phase"] == "training" else f"{event['phase']} "
            print(f"  {phase}iteration {event['iteration']:>3}/{event['total_iterations']}"
                  f"  {metrics}  [{event['elapsed']:.1f} s]", flush=True)
        elif event["type"] == "checkpoint":
            print(f"    checkpoint {event['id']} committed", flush=True)

    unsubscribe = session.on_event(show)
    try:
        while not job.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("\npausing: committing a checkpoint…", flush=True)
        session.pause()
    finally:
        unsubscribe()
    if job.state == "failed":
        raise RuntimeError(f"training failed: {job.error}")
    print(f"Training {job.state} after {session.elapsed:.1f} s; "
          f"{len(session.checkpoints)} checkpoint(s) in {session.directory}")
    return 0


def print_data_summary(data: Any) -> None:
    counts = ", ".join(f"{c} {n}" for c, n in data.summary()["images"].items())
    print(f"Data: {len(data)} images in {len(data.classes)} classes ({counts})")
    for path, reason in data.skipped[:10]:
        print(f"  skipped {path}: {reason}")
    if len(data.skipped) > 10:
        print(f"  … and {len(data.skipped) - 10} more skipped files")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _best_id(session: Any) -> str | None:
    try:
        return session.checkpoint("best").id
    except ValueError:
        return None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
