"""Export an ImageClassifier to Core ML, the way Create ML writes an image classifier.

`.mlpackage` -> ML program (the default), `.mlmodel` -> neural network (older targets).
The file is written next to its target under a temporary name and renamed into place,
so a reader never sees half a model; exports of checkpoints are recorded in the
session's `exports/` directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import check_confined, fsync_dir, fsync_tree
from . import metadata as md
from .metadata import ModelMetadata

if TYPE_CHECKING:
    from ..classifier import ImageClassifier

log = logging.getLogger(__name__)

FORMATS = {".mlpackage": "mlprogram", ".mlmodel": "neuralnetwork"}
PRECISIONS = ("float32", "float16")
QUANTIZATIONS = (None, "int8", "palettize-4", "palettize-6", "palettize-8")
# Every architecture the engine offers converts today; a new one joins after it is tested.
# efficientnet_lite0 converts because its SAME convolutions have fixed padding (extractors.py).
CONVERTIBLE_ARCHITECTURES = ("small_cnn", "resnet18", "resnet34", "mobilenet_v3_small",
                             "efficientnet_lite0")


class ExportError(RuntimeError):
    """Conversion or compression failed; nothing was written (the message says which step)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str  # "mlprogram" or "neuralnetwork"
    size_bytes: int
    precision: str
    quantize: str | None
    seconds: float
    record: Path | None = None  # the session's exports/ record, when there is a session

    def __str__(self) -> str:
        kind = "ML program" if self.format == "mlprogram" else "neural network"
        weights = self.precision + (f", {self.quantize}" if self.quantize else "")
        return (f"{self.path} ({self.size_bytes / 1e6:.1f} MB, {kind}, {weights} weights, "
                f"{self.seconds:.1f} s)")


def export(classifier: ImageClassifier, path: str | os.PathLike,
           metadata: ModelMetadata | None = None, precision: str = "float32",
           quantize: str | None = None, overwrite: bool = False) -> ExportResult:
    """Convert `classifier` to Core ML and write it atomically to `path`.

    `precision` is the ML program's compute precision (or, for a neural network, its weight
    storage; there `quantize` replaces it). `quantize` compresses the weights: "int8"
    (linear symmetric) or "palettize-N" (a 2**N-entry k-means lookup table).
    """
    started = time.perf_counter()
    path = Path(path)
    fmt = check_options(path, precision, quantize)
    refuse_links_in_session(classifier, path)
    architecture = architecture_of(classifier)
    if architecture is not None and architecture not in CONVERTIBLE_ARCHITECTURES:
        raise ValueError(f"{architecture} cannot be exported to Core ML yet; architectures that "
                         f"can: {', '.join(CONVERTIBLE_ARCHITECTURES)}")
    metadata = metadata or ModelMetadata()
    md.user_defined_metadata(classifier, metadata, architecture)  # refuse clashes before any work
    if _exists(path) and not overwrite:
        raise _already_exists(path)
    with _quiet():
        model = _convert(classifier, fmt, precision, architecture)
        model = _compress(model, fmt, precision, quantize)
        model = _finish(model, classifier, metadata, architecture)
        _save_atomically(model, path, overwrite)
    result = ExportResult(path, fmt, size_of(path), precision, quantize,
                          time.perf_counter() - started)
    record = md.record_export(classifier, result, metadata)
    return dataclasses.replace(result, record=record) if record else result


def refuse_links_in_session(classifier: ImageClassifier, path: Path) -> None:
    """A model written into its own session (`exports/`, say) never goes through a link
    that leads out of it: UnsafeFileError naming the link, before any work."""
    checkpoint = classifier.checkpoint
    if checkpoint is None:
        return
    session_dir = Path(os.path.abspath(checkpoint.path.parent.parent))
    folder = Path(os.path.abspath(path)).parent
    if folder != session_dir and session_dir in folder.parents:
        check_confined(session_dir, folder.relative_to(session_dir))


def check_options(path: Path, precision: str, quantize: str | None) -> str:
    """The format `path` asks for; a ValueError for anything unsupported."""
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ValueError(f"{path}: a Core ML model is .mlpackage (ML program) or .mlmodel "
                         f"(neural network), not {path.suffix or 'a name without a suffix'!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or one of {', '.join(QUANTIZATIONS[1:])}, "
                         f"got {quantize!r}")
    if fmt == "neuralnetwork" and quantize and quantize.startswith("palettize"):
        # coremltools 9's k-means for neural networks writes lookup tables it then rejects.
        raise ValueError(f"{quantize} needs an ML program: write a .mlpackage, or use "
                         "quantize='int8' for a .mlmodel")
    return fmt


def architecture_of(classifier: ImageClassifier) -> str | None:
    """The engine architecture of `classifier`, from its checkpoint or its modules."""
    import torch

    record = classifier.checkpoint.model if classifier.checkpoint is not None else {}
    if record.get("architecture"):
        return str(record["architecture"])
    names = [type(m).__name__ for m in classifier.model.modules()]
    if names.count("InvertedResidual") == 11:
        return "mobilenet_v3_small"
    if "BasicBlock" in names:
        return {8: "resnet18", 16: "resnet34"}.get(names.count("BasicBlock"))
    body = getattr(classifier.model, "body", None)
    timm_cfg = getattr(body, "pretrained_cfg", None) or {}
    if timm_cfg.get("architecture") == "tf_efficientnet_lite0":
        return "efficientnet_lite0"
    small_block = ["Conv2d", "BatchNorm2d", "ReLU"]
    if isinstance(body, torch.nn.Sequential) and all(
            [type(m).__name__ for m in block] == small_block for block in body):
        return "small_cnn"
    return None  # a model of the user's own: try to convert it


# -- conversion ---------------------------------------------------------------------------


def _convert(classifier: ImageClassifier, fmt: str, precision: str,
             architecture: str | None) -> Any:
    import coremltools as ct
    import torch

    s = classifier.image_size
    # Core ML's classifier wants probabilities; the engine's model returns logits.
    model = torch.nn.Sequential(classifier.model, torch.nn.Softmax(dim=1)).eval()
    if any(p.device.type != "cpu" for p in model.parameters()):
        import copy

        model = copy.deepcopy(model).cpu()
    options: dict[str, Any] = {"convert_to": fmt}
    if fmt == "mlprogram":
        options["compute_precision"] = (ct.precision.FLOAT16 if precision == "float16"
                                        else ct.precision.FLOAT32)
    what = f"converting the {architecture or 'model'} classifier to a Core ML {fmt}"
    try:
        with torch.no_grad():
            # No re-run check: it doubles the time, and the model is a static, fixed graph.
            traced = torch.jit.trace(model, torch.rand(1, 3, s, s), check_trace=False)
        return ct.convert(
            traced,
            # 0..255 pixels -> 0..1; the model's own Normalize layer does mean and std exactly.
            inputs=[ct.ImageType(name=md.INPUT_NAME, shape=(1, 3, s, s), scale=1 / 255.0,
                                 bias=[0, 0, 0], color_layout=ct.colorlayout.RGB)],
            classifier_config=ct.ClassifierConfig(list(classifier.classes),
                                                  predicted_feature_name=md.LABEL_OUTPUT),
            skip_model_load=True,  # Linux cannot compile Core ML models; nothing to load
            **options,
        )
    except Exception as e:
        raise ExportError(f"{what} failed: {type(e).__name__}: {e}") from e


def _compress(model: Any, fmt: str, precision: str, quantize: str | None) -> Any:
    if quantize is None and (fmt == "mlprogram" or precision == "float32"):
        return model  # an ML program's precision was set when converting
    nbits = 8 if quantize in (None, "int8") else int(quantize.split("-")[1])
    try:
        if fmt == "mlprogram":
            return _compress_mlprogram(model, quantize, nbits)
        return _compress_neuralnetwork(model, quantize, nbits)
    except Exception as e:
        step = f"{quantize} weight compression" if quantize else "float16 weight conversion"
        raise ExportError(f"{step} of the {fmt} failed: {type(e).__name__}: {e}") from e


def _compress_mlprogram(model: Any, quantize: str | None, nbits: int) -> Any:
    import coremltools.optimize.coreml as cto

    if quantize == "int8":
        config = cto.OptimizationConfig(cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
        return cto.linear_quantize_weights(model, config)
    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=nbits, mode="kmeans"))
    return cto.palettize_weights(model, config)


def _compress_neuralnetwork(model: Any, quantize: str | None, nbits: int) -> Any:
    import coremltools as ct
    from coremltools.models.neural_network import quantization_utils as qu

    class WeightLayers(qu.QuantizedLayerSelector):
        # Leave the constant mean/std of the Normalize layer exact; compress real weights.
        def do_quantize(self, layer: Any, **kwargs: Any) -> bool:
            return (super().do_quantize(layer)
                    and layer.WhichOneof("layer") not in ("loadConstant", "loadConstantND"))

    mode = "linear_symmetric" if quantize == "int8" else "kmeans" if quantize else "linear"
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per layer
        quantized = qu.quantize_weights(model, 16 if quantize is None else nbits,
                                        quantization_mode=mode, selector=WeightLayers())
    # Off macOS it may hand back the spec instead of a model.
    if isinstance(quantized, ct.models.MLModel):
        return quantized
    return ct.models.MLModel(quantized, skip_model_load=True)


def _finish(model: Any, classifier: ImageClassifier, metadata: ModelMetadata,
            architecture: str | None) -> Any:
    """Name the probabilities output, describe the features and add all metadata."""
    import coremltools as ct

    spec = model.get_spec()
    probabilities = spec.description.predictedProbabilitiesName
    if probabilities != md.PROBABILITIES_OUTPUT:
        # Keep rename_inputs on: coremltools renames neural-network layer outputs only then.
        ct.utils.rename_feature(spec, probabilities, md.PROBABILITIES_OUTPUT)
    md.describe(spec, classifier, metadata, architecture)
    if spec.WhichOneof("Type") == "mlProgram":
        return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
    return ct.models.MLModel(spec, skip_model_load=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep coremltools' progress bars, version warnings and notices out of the user's cell.

    Its tqdm bars can only be silenced through their stream, so stderr is captured for the
    few seconds of a conversion (and logged at debug level).
    """
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if captured.getvalue():
            log.debug("coremltools said: %s", captured.getvalue()[-2000:])


# -- writing ------------------------------------------------------------------------------


def _save_atomically(model: Any, path: Path, overwrite: bool) -> None:
    # The temporary name keeps the suffix: coremltools picks the format by it.
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed conversion leaves none
    try:
        model.save(str(tmp))
        fsync_tree(tmp)
        if not _exists(path):
            os.rename(tmp, path)
        elif not overwrite:  # it appeared while converting
            raise _already_exists(path)
        elif tmp.is_file() and path.is_file():
            os.replace(tmp, path)
        else:  # a package is a directory: move the old one aside, never delete it first
            trash = path.with_name(f".trash-{uuid.uuid4().hex[:8]}-{path.name}")
            os.rename(path, trash)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(trash, path)
                raise
            _remove(trash)
        fsync_dir(path.parent)
    finally:
        _remove(tmp)  # nothing left once renamed


def _already_exists(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists; replace it with overwrite=True (--overwrite)")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink(missing_ok=True)


def size_of(path: Path) -> int:
    """Bytes in a model file, or in all the files of a package."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
