"""A trained image classifier restored from a checkpoint (Create ML's `MLImageClassifier`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoints import Checkpoint
from .data import DataSource
from .images import load_array
from .metrics import ClassifierMetrics
from .models import skeleton_for

if TYPE_CHECKING:
    from .coreml import ExportResult, ModelMetadata


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


class ImageClassifier:
    """Predicts labels for images with the weights of one checkpoint."""

    def __init__(self, model: torch.nn.Module, classes: Sequence[str], image_size: int,
                 checkpoint: Checkpoint | None = None):
        self.model = model.eval()
        self.classes = list(classes)
        self.image_size = image_size
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str | os.PathLike) -> ImageClassifier:
        """Rebuild the network a checkpoint describes and load its verified weights."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint.from_directory(checkpoint)
        state = checkpoint.load_model_state()  # refuses checkpoints without a classifier
        record = checkpoint.model
        model = skeleton_for(record)
        model.load_state_dict(state)
        return cls(model, record["classes"], record["image_size"], checkpoint)

    def __repr__(self) -> str:
        origin = f", checkpoint={self.checkpoint.id!r}" if self.checkpoint else ""
        return f"ImageClassifier(classes={self.classes}, image_size={self.image_size}{origin})"

    def batch(self, images: Iterable[Any]) -> torch.Tensor:
        """Images (paths or PIL images) as the float batch the model takes."""
        arrays = np.stack([load_array(image, self.image_size) for image in images])
        return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255)

    @torch.no_grad()
    def probabilities(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """(n, n_classes) class probabilities, in `classes` order."""
        chunks = [torch.softmax(self.model(self.batch(images[i:i + batch_size])), dim=1)
                  for i in range(0, len(images), batch_size)]
        if not chunks:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(chunks).numpy()

    def predict(self, image: Any) -> Prediction:
        """The label and class probabilities for one image (a path or a PIL image)."""
        return self.predictions([image])[0]

    def predictions(self, images: Sequence[Any], batch_size: int = 64) -> list[Prediction]:
        probs = self.probabilities(list(images), batch_size)
        return [Prediction(self.classes[int(row.argmax())],
                           {c: float(p) for c, p in zip(self.classes, row)}) for row in probs]

    def evaluation(self, data: DataSource, batch_size: int = 64) -> ClassifierMetrics:
        """Accuracy, confusion and per-class precision/recall on every image of `data`."""
        unknown = sorted(set(data.classes) - set(self.classes))
        if unknown:
            raise ValueError(f"{data.origin} has classes this classifier does not know: {unknown}")
        paths = [item.path for item in data.items]
        probs = self.probabilities(paths, batch_size)
        predicted = [self.classes[int(i)] for i in probs.argmax(axis=1)]
        return ClassifierMetrics.from_predictions(self.classes, data.labels, predicted, probs,
                                                  [str(p) for p in paths])

    def write(self, path: str | os.PathLike, metadata: ModelMetadata | None = None,
              precision: str = "float32", quantize: str | None = None,
              overwrite: bool = False) -> ExportResult:
        """Export to Core ML (`.mlpackage` or `.mlmodel`), as Create ML's `write(to:metadata:)`.

        See `mlwidgets.coreml.export` for the options; a checkpoint's export is recorded in
        its session's `exports/` directory.
        """
        from .coreml.export import export  # coremltools loads only when exporting

        return export(self, path, metadata=metadata, precision=precision, quantize=quantize,
                      overwrite=overwrite)
