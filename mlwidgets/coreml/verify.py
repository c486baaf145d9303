"""Check that an exported Core ML model computes what the PyTorch classifier computes.

On macOS, Core ML itself runs the model. Elsewhere coremltools cannot predict, so the
saved program is executed by a NumPy reference of the operations our architectures
produce (`mil_reference` for .mlpackage ML programs, `nn_reference` for .mlmodel neural
networks). Both are fed the same 8-bit RGB pixels the classifier sees, and the image
preprocessing comes from the model itself, as on device.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .reference_ops import UnsupportedOperation, VerificationError

if TYPE_CHECKING:
    from ..classifier import ImageClassifier

__all__ = ["UnsupportedOperation", "VerificationError", "VerificationReport", "load_reference",
           "read_spec", "verify"]
BACKENDS = ("auto", "coreml", "numpy-reference")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationReport:
    """How closely an exported model's class probabilities follow the PyTorch classifier's."""

    path: Path
    n_images: int
    top1_agreement: float  # fraction of images whose top label is the same
    max_abs_diff: float  # largest |p_coreml - p_torch| over all images and classes
    mean_abs_diff: float
    backend: str  # "coreml" or "numpy-reference"
    disagreements: tuple[int, ...] = ()  # indices of the images whose top labels differ
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.n_images} images · top-1 agreement {self.top1_agreement:.1%} · "
                f"max |Δp| {self.max_abs_diff:.1e} · {self.backend}")

    __str__ = summary

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.n_images if self.n_images else 0.0

    def within(self, max_abs_diff: float, min_top1_agreement: float = 1.0) -> bool:
        """Whether the export agrees at least this well (e.g. 1e-4 for float32 weights)."""
        return self.top1_agreement >= min_top1_agreement and self.max_abs_diff <= max_abs_diff


class Runner(Protocol):
    backend: str
    classes: list[str]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray: ...


def verify(model_path: str | os.PathLike, classifier: ImageClassifier, images: Sequence[Any],
           batch_size: int | None = None, backend: str = "auto") -> VerificationReport:
    """Run `images` (paths or PIL images) through the export and the classifier, and compare.

    `backend` is "auto" (Core ML where it can predict, else the NumPy reference),
    "coreml" or "numpy-reference". `batch_size` None: as many as the PyTorch model runs at
    once without gradients (`models.inference_batch_size`: 4 at 224 px, 49 at 64 px).
    """
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if batch_size is None:
        from ..models import inference_batch_size

        batch_size = inference_batch_size(classifier.image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = list(images)
    if not images:
        raise ValueError("verify needs at least one image")
    path = Path(model_path)
    started = time.perf_counter()
    runner = open_runner(path, backend)
    order = _class_order(runner.classes, classifier.classes, path)
    ours, theirs = [], []
    for i in range(0, len(images), batch_size):
        x = classifier.batch(images[i:i + batch_size])  # what classifier.probabilities sees
        with torch.no_grad():
            ours.append(torch.softmax(classifier.model(x), dim=1).numpy())
        # batch() divided 8-bit pixels by 255, so this recovers them exactly.
        pixels = (x * 255).round().to(torch.uint8).numpy()
        theirs.append(runner.probabilities(pixels)[:, order])
    p_torch, p_model = np.concatenate(ours), np.concatenate(theirs).astype(np.float32)
    diff = np.abs(p_model - p_torch)
    if not np.isfinite(p_model).all():
        diff = np.where(np.isfinite(diff), diff, np.inf)
    same = p_model.argmax(axis=1) == p_torch.argmax(axis=1)
    return VerificationReport(
        path=path, n_images=len(images), top1_agreement=float(same.mean()),
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
        backend=runner.backend, disagreements=tuple(int(i) for i in np.flatnonzero(~same)),
        seconds=time.perf_counter() - started)


def _class_order(model_classes: list[str], classes: list[str], path: Path) -> list[int]:
    """Where each of the classifier's classes is among the model's outputs."""
    if sorted(model_classes) != sorted(classes):
        raise VerificationError(f"{path} predicts classes {model_classes}, "
                                f"the classifier has {classes}")
    return [model_classes.index(c) for c in classes]


def open_runner(path: Path, backend: str = "auto") -> Runner:
    """Core ML where it can predict (macOS), else the NumPy reference."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if backend in ("auto", "coreml"):
        try:
            return CoreMLRunner(path)
        except Exception as e:  # no macOS, no Core ML framework, or a model it refuses
            if backend == "coreml":
                raise VerificationError(f"Core ML cannot run {path} here: {e}") from e
            log.info("Core ML cannot predict here (%s); using the NumPy reference", e)
    return load_reference(path)


class CoreMLRunner:
    """Core ML itself, through coremltools (macOS only)."""

    backend = "coreml"

    def __init__(self, path: Path):
        if sys.platform != "darwin":
            raise VerificationError("Core ML predicts only on macOS")
        import coremltools as ct

        self.model = ct.models.MLModel(str(path))
        spec = self.model.get_spec()
        self.input_name = spec.description.input[0].name
        self.output = spec.description.predictedProbabilitiesName
        image = spec.description.input[0].type.imageType
        probe = self._predict(np.zeros((3, image.height, image.width), np.uint8))
        self.classes = list(probe)  # the probability dictionary's keys, in its order

    def _predict(self, pixels: np.ndarray) -> dict[str, float]:
        from PIL import Image

        out = self.model.predict({self.input_name: Image.fromarray(pixels.transpose(1, 2, 0))})
        return {str(k): float(v) for k, v in out[self.output].items()}

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        rows = [self._predict(p) for p in pixels]
        return np.array([[row[c] for c in self.classes] for row in rows], np.float32)


def read_spec(path: str | os.PathLike) -> tuple[Any, Path]:
    """A saved model's spec (Model_pb2.Model) and the directory its weight paths start from."""
    from coremltools.proto import Model_pb2

    path = Path(path)
    if path.is_dir():  # .mlpackage: Manifest.json names the root model file
        spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
        manifest = path / "Manifest.json"
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            item = info["itemInfoEntries"][info["rootModelIdentifier"]]
            spec_file = path / "Data" / item["path"]
    else:
        spec_file = path
    if not spec_file.is_file():
        raise FileNotFoundError(f"{path} has no model specification ({spec_file} is missing)")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_file.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise VerificationError(f"{spec_file} is not a Core ML model: {e}") from None
    return spec, spec_file.parent


def load_reference(path: str | os.PathLike) -> Runner:
    """The NumPy reference for a saved .mlpackage (ML program) or .mlmodel (neural network)."""
    from .mil_reference import MILReference
    from .nn_reference import NNReference

    spec, model_dir = read_spec(path)
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        return MILReference(spec, model_dir, str(path))
    if kind == "neuralNetworkClassifier":
        return NNReference(spec, str(path))
    raise VerificationError(f"{path} is a {kind} model; the NumPy reference runs ML program "
                            "and neural-network image classifiers")
