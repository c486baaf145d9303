"""An image classifier (Create ML's `MLImageClassifier`): train one, or restore a checkpoint.

`ImageClassifier(training_data, parameters)` trains synchronously, as Create ML's
`init(trainingData:parameters:)`; `train` / `make_training_session` /
`restore_training_session` / `resume` are the asynchronous calls. All are thin calls into
`TrainingSession`: the session directory remains the one record of training.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoints import Checkpoint
from .data import DataSource, Item
from .images import load_array
from .job import Job
from .metrics import ClassifierMetrics
from .models import inference_batch_size, skeleton_for
from .parameters import ModelParameters, SessionParameters

if TYPE_CHECKING:
    from .coreml import ExportResult, ModelMetadata
    from .session import TrainingSession



@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


class ImageClassifier:
    """A trained classifier: predictions, evaluation, metrics and Core ML export.

    `ImageClassifier(training_data, parameters)` trains synchronously and returns when
    training ends, as Create ML's `init(trainingData:parameters:)`. Training happens in a
    new session under `sessions/` (or in `session_directory`, or in
    `session_parameters.session_directory`; an existing session there is continued, not
    replaced), available as `clf.session`. `training_data` is a DataSource or a folder with
    one sub-folder per class. `from_checkpoint` restores a checkpoint instead (Create ML's
    `init(checkpoint:)`), and `from_model` wraps a network you already have.
    """

    def __init__(self, training_data: DataSource | str | os.PathLike,
                 parameters: ModelParameters | None = None,
                 session_parameters: SessionParameters | None = None, *,
                 session_directory: str | os.PathLike | None = None):
        if session_directory is not None:
            session_parameters = (session_parameters or SessionParameters()).replace(
                session_directory=str(session_directory))
        session = self.make_training_session(training_data, parameters, session_parameters)
        if not session.is_complete:
            job = self.resume(session)
            try:
                job.wait()
            except KeyboardInterrupt:  # an interrupted cell stops training too, with a
                session.pause()        # checkpoint that resuming the session continues from
                raise
            if job.state != "completed":
                raise RuntimeError(f"training in {session.directory} ended {job.state}"
                                   + (f": {job.error}" if job.error else "")) from job.error
        self._adopt_checkpoint(session.checkpoint("latest"))
        self._session: TrainingSession | None = session

    def _adopt(self, model: torch.nn.Module, classes: Sequence[str], image_size: int,
               checkpoint: Checkpoint | None) -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.image_size = image_size
        self.checkpoint = checkpoint
        self._session = None
        self._metrics: dict[str, ClassifierMetrics] = {}

    def _adopt_checkpoint(self, checkpoint: Checkpoint) -> None:
        record = checkpoint.model_record()  # refuses checkpoints without a classifier
        model = skeleton_for(record)
        # Names and shapes are checked against the architecture before any weight loads.
        model.load_state_dict(checkpoint.load_model_state(expected=model.state_dict()))
        self._adopt(model, record["classes"], record["image_size"], checkpoint)

    @classmethod
    def from_model(cls, model: torch.nn.Module, classes: Sequence[str], image_size: int,
                   checkpoint: Checkpoint | None = None) -> ImageClassifier:
        """Wrap a network that takes (n, 3, image_size, image_size) images in 0..1 and
        returns one logit per class, in `classes` order. No training happens."""
        classifier = cls.__new__(cls)
        classifier._adopt(model, classes, image_size, checkpoint)
        return classifier

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint | str | os.PathLike) -> ImageClassifier:
        """Rebuild the network a checkpoint describes and load its verified weights."""
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint.from_directory(checkpoint)
        classifier = cls.__new__(cls)
        classifier._adopt_checkpoint(checkpoint)
        return classifier

    # -- training (Create ML's static functions) -------------------------------------------

    @staticmethod
    def make_training_session(training_data: DataSource | str | os.PathLike,
                              parameters: ModelParameters | None = None,
                              session_parameters: SessionParameters | None = None,
                              ) -> TrainingSession:
        """Create a session, or restore the one already in
        `session_parameters.session_directory` (Create ML's `makeTrainingSession`).

        Restoring checks that the session was made for the same data and parameters.
        Without a session directory, the session goes into a new folder under `sessions/`.
        """
        from .record import default_session_dir
        from .session import TrainingSession

        data = _data_source(training_data)
        session_parameters = session_parameters or SessionParameters()
        if session_parameters.session_directory is None:
            session_parameters = session_parameters.replace(
                session_directory=str(default_session_dir()))
        return TrainingSession.create(data, parameters or ModelParameters(), session_parameters)

    @staticmethod
    def restore_training_session(session_parameters: SessionParameters | str | os.PathLike,
                                 ) -> TrainingSession:
        """Reopen the session in `session_parameters.session_directory` (or a path)."""
        from .session import TrainingSession

        if isinstance(session_parameters, SessionParameters):
            if session_parameters.session_directory is None:
                raise ValueError("restore_training_session needs "
                                 "SessionParameters(session_directory=...)")
            return TrainingSession.restore(session_parameters.session_directory)
        return TrainingSession.restore(session_parameters)

    @staticmethod
    def resume(session: TrainingSession) -> Job:
        """Begin or continue training `session` in the background (Create ML's `resume`)."""
        return session.resume()

    @classmethod
    def train(cls, training_data: DataSource | str | os.PathLike,
              parameters: ModelParameters | None = None,
              session_parameters: SessionParameters | None = None) -> Job:
        """Start training in the background and return the Job at once (Create ML's
        `train(trainingData:parameters:sessionParameters:)`); `job.result` is the classifier.
        An existing session in `session_parameters.session_directory` is continued; one
        that already trained all its iterations raises ValueError (`session.train_more(n)`
        trains more)."""
        return cls.resume(cls.make_training_session(training_data, parameters,
                                                    session_parameters))

    # -- what it was trained with --------------------------------------------------------

    @property
    def session(self) -> TrainingSession | None:
        """The session this classifier was trained in (the checkpoint's), if it still exists."""
        if self._session is None and self.checkpoint is not None:
            directory = Path(self.checkpoint.path).parent.parent
            if (directory / "session.json").is_file():
                from .session import TrainingSession

                self._session = TrainingSession.restore(directory)
        return self._session

    @property
    def model_parameters(self) -> ModelParameters | None:
        """The parameters it was trained with (None for a bare `from_model` network)."""
        session = self.session
        return session.parameters if session is not None else None

    @property
    def training_metrics(self) -> ClassifierMetrics:
        """This classifier's metrics on its session's training images.

        Computed on first access with one batched pass over the training images (without
        augmentation), then cached. Where they cannot be computed (no session, images gone),
        `is_valid` is False and `error` says why.
        """
        return self._split_metrics("training", 0)

    @property
    def validation_metrics(self) -> ClassifierMetrics:
        """This classifier's metrics on its session's validation split.

        Computed on first access with one batched pass over the validation images, then
        cached. Without validation data (`validation="none"`), `is_valid` is False and
        `error` says so.
        """
        return self._split_metrics("validation", 1)

    def _split_metrics(self, name: str, index: int) -> ClassifierMetrics:
        if name not in self._metrics:
            session = self.session
            if session is None:
                found = ClassifierMetrics.invalid(
                    f"no {name} data is known: this classifier has no session", self.classes)
            elif not session.split[index]:
                found = ClassifierMetrics.invalid(
                    f"session {session.directory} has no {name} data", self.classes)
            else:
                try:
                    found = self._metrics_on(session.split[index])
                except (OSError, ValueError) as e:
                    found = ClassifierMetrics.invalid(f"{type(e).__name__}: {e}", self.classes)
            self._metrics[name] = found
        return self._metrics[name]

    def _metrics_on(self, items: Sequence[Item], batch_size: int = 64) -> ClassifierMetrics:
        paths = [item.path for item in items]
        probs = self.probabilities(paths, batch_size)
        predicted = [self.classes[int(i)] for i in probs.argmax(axis=1)]
        return ClassifierMetrics.from_predictions(self.classes, [i.label for i in items],
                                                  predicted, probs, [str(p) for p in paths])

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
        # Large images in large batches hold GBs of activations: no faster, and Binder has 2.
        batch_size = min(batch_size, inference_batch_size(self.image_size))
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

    def evaluation(self, data: DataSource | str | os.PathLike,
                   batch_size: int = 64) -> ClassifierMetrics:
        """Accuracy, confusion and per-class precision/recall on every image of `data`:
        a DataSource, or a folder with one sub-folder per class."""
        if isinstance(data, (str, os.PathLike)):
            data = DataSource.labeled_directories(data)
        elif not isinstance(data, DataSource):
            raise TypeError("evaluation takes a DataSource or a folder of labelled images, "
                            f"got {type(data).__name__}")
        unknown = sorted(set(data.classes) - set(self.classes))
        if unknown:
            raise ValueError(f"{data.origin} has classes this classifier does not know: {unknown}")
        return self._metrics_on(data.items, batch_size)

    def write(self, path: str | os.PathLike,
              metadata: ModelMetadata | Mapping[str, Any] | None = None,
              precision: str = "float32", quantize: str | None = None,
              overwrite: bool = False) -> ExportResult:
        """Export to Core ML (`.mlpackage` or `.mlmodel`), as Create ML's `write(to:metadata:)`.

        `metadata` is a ModelMetadata or a dict of its fields (`{"author": "Ada"}`; Create
        ML's camelCase `shortDescription` works too). See `mlwidgets.coreml.export` for the
        options; a checkpoint's export is recorded in its session's `exports/` directory.
        """
        from .coreml.export import export  # coremltools loads only when exporting

        return export(self, path, metadata=_metadata(metadata), precision=precision,
                      quantize=quantize, overwrite=overwrite)


def _data_source(data: DataSource | str | os.PathLike) -> DataSource:
    if isinstance(data, DataSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        return DataSource.labeled_directories(data)
    raise TypeError("training data is a DataSource or a folder with one sub-folder per "
                    f"class, got {type(data).__name__}")


def _metadata(metadata: Any) -> ModelMetadata | None:
    from .coreml.metadata import ModelMetadata

    if metadata is None or isinstance(metadata, ModelMetadata):
        return metadata
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata is a ModelMetadata or a dict, got {type(metadata).__name__}")
    aliases = {"shortDescription": "short_description", "description": "short_description"}
    fields = {aliases.get(k, k): v for k, v in metadata.items()}
    known = ("author", "short_description", "license", "version", "additional")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise TypeError(f"unknown metadata {', '.join(unknown)}; use {', '.join(known)}")
    return ModelMetadata(**fields)


# A finished job's `result` is built with this (job.py sits below this module).
Job.make_result = ImageClassifier.from_checkpoint
