"""`mlwidgets ...` / `python -m mlwidgets ...`: the engine from a terminal.

Every failure prints one line, `error: <what> (<file or value>): <what to do>`, and exits
with status 2, no traceback (`--debug` or MLWIDGETS_DEBUG=1 prints the traceback too).
Arguments are bounded (iterations <= 10^6, image size <= 1024, ...; see schemas.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from .checkpoint_styles import STYLES
from .console import METRIC_COLUMNS, follow, format_metric, print_data_summary, print_table
from .coreml.export import PRECISIONS, QUANTIZATIONS
from .errors import describe, printable
from .parameters import (
    ALGORITHMS,
    ARCHITECTURES,
    CLASSIFIERS,
    DEFAULT_FEATURE_EXTRACTOR,
    FEATURE_EXTRACTORS,
)
from .schemas import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_ITERATIONS
from .session import MAX_PROCESSES

EXIT_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MLWIDGETS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    for stream in (sys.stdout, sys.stderr):  # a name no terminal can show is escaped, not fatal
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; the session keeps its committed checkpoints", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is one line; the traceback only when asked
        if debug:
            traceback.print_exc()
        print(f"error: {describe(e)}", file=sys.stderr)
        return EXIT_ERROR


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (not the whole usage) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {printable(message)} ({self.prog}): see `{self.prog} --help`",
              file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    return parse


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= 10):
        raise argparse.ArgumentTypeError(f"{text} is not a learning rate in (0, 10]")
    return value


ITERATIONS = _int_in(1, MAX_ITERATIONS)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlwidgets", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of an error (also MLWIDGETS_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train on a built-in dataset, evaluate, summarise")
    d.add_argument("--session", type=Path, help="session directory (default: sessions/demo-…)")
    d.add_argument("--dataset", choices=("shapes", "digits"), default="shapes")
    d.add_argument("--iterations", type=ITERATIONS, help="training iterations (epochs)")
    d.add_argument("--image-size", type=_int_in(16, MAX_IMAGE_SIZE),
                   help="training size (default: 224 for shapes, 32 for digits)")
    d.add_argument("--images-per-class", type=_int_in(2, 10_000),
                   help="shapes generated per class (default: 60)")
    d.set_defaults(run=_demo)

    t = sub.add_parser("train", help="train a classifier on DATA_DIR (one folder per class)")
    t.add_argument("data_dir", type=Path)
    t.add_argument("--session", type=Path, required=True)
    # Unset options take ModelParameters' defaults: transfer learning on the built-in
    # efficientnet_lite0 at 224 px. --architecture alone trains that network from scratch.
    t.add_argument("--feature-extractor", metavar="NAME",
                   help=f"pretrained backbone: {', '.join(FEATURE_EXTRACTORS)} or a timm "
                        f"model name (default: {DEFAULT_FEATURE_EXTRACTOR}, built in)")
    t.add_argument("--architecture", choices=ARCHITECTURES,
                   help="a network to train from scratch (or, with --pretrained, torchvision's "
                        "ImageNet weights)")
    t.add_argument("--pretrained", action="store_true",
                   help="with --architecture: start from torchvision's ImageNet weights")
    t.add_argument("--weights-file", help="start from a local .safetensors weights file")
    t.add_argument("--algorithm", choices=ALGORITHMS,
                   help="default: transfer_learning with an extractor or weights, "
                        "from_scratch without")
    t.add_argument("--classifier", choices=CLASSIFIERS, default="logistic_regression",
                   help="what transfer learning trains on the extracted features")
    t.add_argument("--fine-tune-iterations", type=_int_in(0, MAX_ITERATIONS), default=0,
                   help="after transfer learning, train the whole network this long")
    t.add_argument("--image-size", type=_int_in(16, MAX_IMAGE_SIZE),
                   help="default: the extractor's native size (224), 64 from scratch")
    t.add_argument("--batch-size", type=_int_in(1, MAX_BATCH_SIZE), default=32)
    t.add_argument("--learning-rate", type=_learning_rate)
    t.add_argument("--iterations", type=ITERATIONS, help="default: 25, as Create ML")
    t.add_argument("--checkpoint-interval", type=ITERATIONS, default=1)
    t.add_argument("--augment", action="store_true", help="use all six augmentations")
    _add_processes_arg(t)
    t.set_defaults(run=_train)

    r = sub.add_parser("resume", help="continue a session from its latest checkpoint")
    _add_session_args(r)
    r.add_argument("--iterations", type=ITERATIONS, help="raise the total iteration budget")
    _add_processes_arg(r)
    r.set_defaults(run=_resume)

    for name, what in (("status", "show where a session's training stands"),
                       ("pause", "ask whichever process trains a session to pause "
                                 "(it commits a checkpoint)"),
                       ("stop", "ask whichever process trains a session to stop "
                                "(committed checkpoints stay)")):
        s = sub.add_parser(name, help=what)
        _add_session_args(s)
        if name != "status":
            s.add_argument("--wait", action="store_true", help="return once it has stopped")
        s.set_defaults(run=_control)

    c = sub.add_parser("checkpoints", help="list a session's checkpoints")
    _add_session_args(c)
    c.add_argument("--json", action="store_true", help="print a JSON list")
    c.add_argument("--style", choices=STYLES,
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
    x.add_argument("--precision", choices=PRECISIONS, default="float32")
    x.add_argument("--quantize", choices=QUANTIZATIONS[1:],
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


def _add_session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", type=Path, required=True)
    p.add_argument("--data-root", type=Path, help="take the session's images from this folder "
                   "(they moved, or someone sent you the session)")


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    _add_session_args(p)
    p.add_argument("--checkpoint", default="best",
                   help="best (default), latest, an iteration number, or an identifier any "
                        "`checkpoints --style` prints (id, fine_tuned_model_checkpoint, url)")


# -- commands -----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_data, run_demo

    print(f"Preparing the built-in {args.dataset!r} dataset…", flush=True)
    return run_demo(demo_data(args.dataset, args.images_per_class), args.dataset, args.session,
                    args.iterations, args.image_size)


def _train(args: argparse.Namespace) -> int:
    from .data import DataSource
    from .parameters import Augmentation, ModelParameters
    from .session import TrainingSession

    data = DataSource.labeled_directories(args.data_dir)
    print_data_summary(data)
    given = {"feature_extractor": args.feature_extractor, "architecture": args.architecture,
             "pretrained": args.pretrained or None, "image_size": args.image_size,
             "weights_file": args.weights_file, "max_iterations": args.iterations}
    params = ModelParameters(
        **{k: v for k, v in given.items() if v is not None},
        algorithm=args.algorithm, classifier=args.classifier,
        fine_tune_iterations=args.fine_tune_iterations, batch_size=args.batch_size,
        augmentation=Augmentation.all() if args.augment else Augmentation(),
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    session = TrainingSession.create(data, params, args.session,
                                     checkpoint_interval=args.checkpoint_interval)
    return follow(session, session.start(*_runner(args.processes)))


def _resume(args: argparse.Namespace) -> int:
    from .session import TrainingSession

    session = TrainingSession.restore(args.session, args.data_root)
    print(f"Resuming {session.directory} from {session.latest_checkpoint or 'the start'}")
    return follow(session, session.resume(args.iterations, *_runner(args.processes)))


def _runner(processes: int) -> tuple[str, int]:
    """(runner, processes): here, or in `processes` data-parallel worker processes."""
    return ("process", processes) if processes > 1 else ("thread", 1)


def _add_processes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=_int_in(1, MAX_PROCESSES), default=1,
                        help="data-parallel worker processes (gloo on CPUs, NCCL on GPUs)")


def _control(args: argparse.Namespace) -> int:
    """status, pause and stop: through the session directory, whoever trains it."""
    from .session import TrainingSession

    session = TrainingSession.restore(args.session, args.data_root)
    if args.command != "status":
        state = session.state
        if not state.is_active:
            print(f"{session.directory} is not training ({state}); nothing to {args.command}")
            return 0
        session.record.request("pause" if args.command == "pause" else "stop")
        print(f"Asked the training process (pid {session.record.trainer_pid}) to "
              f"{args.command}.", flush=True)
        if not args.wait:
            return 0
        session.job.wait()  # the run in the other process (see process_job.ProcessJob)
    p = session.progress
    print_table(["", ""], [
        ["session", printable(session.directory)], ["state", str(session.state)],
        ["phase", p.phase.replace("_", " ")],
        ["iteration", f"{p.iteration}/{p.total_iterations}"], ["step", str(p.step)],
        ["trained for", f"{p.elapsed:.1f} s"],
        *[[k, format_metric(v)] for k, v in p.metrics.items() if v is not None],
    ])
    if session.state.value in ("failed", "interrupted"):
        for line in session.record.log_tail():
            print(f"  {printable(line)}")
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    from .session import TrainingSession

    session = TrainingSession.restore(args.session, args.data_root)
    found = session.checkpoints
    damaged = session.store.damaged
    if args.json:
        print(json.dumps([c.to_dict(args.style) for c in found], indent=2))
        _warn_damaged(session)
        return 0
    if not found and not damaged:
        print(f"{session.directory} has no checkpoints yet ({session.state})")
        return 0
    best = _best_id(session)
    rows = [[printable(c.id), c.phase, str(c.iteration), str(c.step_number),
             c.date.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
             *(format_metric(c.metrics.get(k)) for k, _ in METRIC_COLUMNS),
             "best" if c.id == best else ""] for c in found]
    rows += [[printable(name), "DAMAGED", *[""] * (4 + len(METRIC_COLUMNS))]
             for name in sorted(damaged)]
    rows.sort(key=lambda row: row[0])
    print_table(["id", "phase", "iteration", "step", "date",
                 *(h for _, h in METRIC_COLUMNS), ""], rows)
    for error in damaged.values():
        print(f"  {describe(error)}")
    print(f"{len(found)} checkpoint(s) in {printable(session.store.directory)}"
          + (f", {len(damaged)} damaged" if damaged else "") + f" · session {session.state}")
    return 0


def _checkpoint(args: argparse.Namespace) -> Any:
    """The session and checkpoint the arguments name; damaged checkpoints are mentioned."""
    from .session import TrainingSession

    session = TrainingSession.restore(args.session, args.data_root)
    checkpoint = session.checkpoint(args.checkpoint)
    _warn_damaged(session)
    return session, checkpoint


def _warn_damaged(session: Any) -> None:
    for error in session.store.damaged.values():
        print(f"warning: {describe(error)}", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> int:
    from .classifier import ImageClassifier
    from .data import DataSource

    _, checkpoint = _checkpoint(args)
    classifier = ImageClassifier.from_checkpoint(checkpoint)  # a damaged one fails first
    data = DataSource.labeled_directories(args.data_dir)
    metrics = classifier.evaluation(data)
    if args.json:
        print(json.dumps({"checkpoint": checkpoint.id, **metrics.to_dict()}, indent=2))
    else:
        print(f"Checkpoint {checkpoint.id} on {data.origin} ({len(data)} images)")
        print(metrics.summary())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .classifier import ImageClassifier

    _, checkpoint = _checkpoint(args)
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
    from .coreml.report import export_and_verify

    session, checkpoint = _checkpoint(args)
    metadata = ModelMetadata(author=args.author, short_description=args.description,
                             license=args.license, version=args.version)
    print(f"Exporting checkpoint {checkpoint.id} to {args.out}…", flush=True)
    classifier = ImageClassifier.from_checkpoint(checkpoint)
    images = session.verification_images() if args.verify else ()
    report = export_and_verify(classifier, args.out, images, metadata,
                               precision=args.precision, quantize=args.quantize,
                               overwrite=args.overwrite)
    print(f"Wrote {report.result.path}")
    print_table(["", ""], [[f"  {label}", text] for label, text in report.lines()[1:]
                           if args.verify or label != "not verified"])
    return 0


# -- shared output ------------------------------------------------------------------------


def _best_id(session: Any) -> str | None:
    try:
        return session.checkpoint("best").id
    except ValueError:
        return None
