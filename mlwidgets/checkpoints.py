"""Checkpoints on disk: one directory each, committed atomically (checkpoint_store.py),
verified on load.

```
checkpoints/000160-training/
    checkpoint.json        the record: phase, iteration, step, metrics, file hashes
    model.safetensors      weights
    optimizer.safetensors  optimizer tensors (hyper-parameters live in checkpoint.json)
```
No pickle on the load path: tensors come from safetensors, everything else from JSON,
and every file's sha256 and size are checked before it is used. checkpoint.json ends with
the digest of its own bytes (see schemas.py), so a change to any byte of a checkpoint is
reported as "checkpoint X is damaged: ..." naming the file. Files are read only from
inside the checkpoint's folder, never through a symlink (see files.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import schemas, tensorfiles
from .checkpoint_styles import OPENAI_METRICS, STYLES
from .errors import CheckpointError, MlwidgetsError
from .files import read_confined, sha256_bytes

__all__ = ["Checkpoint", "CheckpointError", "metric_is_better"]

RECORD_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
# Frozen weights shared by many checkpoints (transfer learning): hard-linked, not copied.
BODY_FILE = "body.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
# A pause inside an iteration: RNG states and the iteration's data order (see resume.py).
RESUME_FILE = "resume.safetensors"
FORMAT = schemas.CHECKPOINT_FORMAT
# Metrics where larger is better; every other metric (losses) is minimised.
HIGHER_IS_BETTER = ("train_accuracy", "valid_accuracy", "batch_valid_accuracy")
# Leftovers of an interrupted commit or delete: never listed, swept by the writer.
TEMP_PREFIXES = (".tmp-", ".trash-")

USE_ANOTHER = "use another checkpoint"


def _damaged(checkpoint_id: str, e: MlwidgetsError | OSError, where: Any = None
             ) -> CheckpointError:
    """One error for every way a checkpoint can be unusable, naming the checkpoint and file."""
    if isinstance(e, MlwidgetsError):
        what, where = e.what, e.where if e.where is not None else where
    else:
        what = "missing" if isinstance(e, FileNotFoundError) else (
            e.strerror or type(e).__name__)
        where = e.filename if e.filename is not None else where
    return CheckpointError(f"checkpoint {checkpoint_id} is damaged: {what}", where,
                           USE_ANOTHER)


@dataclass(frozen=True)
class Checkpoint:
    """The state of a session at one moment (Create ML's `MLCheckpoint`, plus step and files)."""

    id: str
    session_id: str
    phase: str
    iteration: int
    step_number: int
    created_at: float
    metrics: dict[str, float | None]
    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # architecture, classes, image size...
    optimizer: dict[str, Any] = field(default_factory=dict)  # hyper-parameters, scalar state
    # Validation confusion matrix (rows: true class, columns: predicted), so a viewer can show
    # it for any checkpoint without loading weights; None where nothing was validated.
    confusion: list[list[int]] | None = None
    # A pause inside an iteration: `iteration` is the last finished one, and `resume` says
    # where in the next one training stopped (see resume.py). Never "best", and not
    # counted by retention's keep_last.
    partial: bool = False
    resume: dict[str, Any] | None = None

    @property
    def date(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, tz=timezone.utc)

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri() + "/"

    @property
    def has_model(self) -> bool:
        return MODEL_FILE in self.files and bool(self.model.get("architecture"))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items() if v is not None)
        return f"Checkpoint({self.id!r}, iteration={self.iteration}, {shown})"

    # -- reading -------------------------------------------------------------------

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        """The checkpoint in folder `path`; CheckpointError names the file when it is
        missing, damaged, unsafe (a symlink, a FIFO...) or out of bounds."""
        path = Path(path)
        record_path = path / RECORD_FILE
        if not path.is_dir():
            raise CheckpointError("no such checkpoint folder", path,
                                  "choose a folder under <session>/checkpoints/")
        try:
            data = read_confined(path, RECORD_FILE,
                                 max_size=schemas.MAX_CHECKPOINT_RECORD_BYTES)
            r = schemas.load_checkpoint_record(data, record_path, CheckpointError)
        except (MlwidgetsError, OSError) as e:
            raise _damaged(path.name, e, record_path) from None
        return cls(
            id=path.name, session_id=r["session_id"], phase=r["phase"],
            iteration=r["iteration"], step_number=r["step_number"],
            created_at=float(r["created_at"]), metrics=dict(r["metrics"]), path=path,
            files=dict(r["files"]), model=dict(r.get("model") or {}),
            optimizer=dict(r.get("optimizer") or {}), confusion=r.get("confusion"),
            partial=bool(r.get("partial", False)), resume=r.get("resume"),
        )

    def read_verified(self, name: str) -> bytes:
        """The bytes of one file, after checking its size and sha256 against the record.

        Only a regular file directly in the checkpoint's folder is read (no symlink, FIFO,
        device or path), and only when its size is the recorded one."""
        path = self.path / name
        expected = self.files.get(name)
        if expected is None:
            raise CheckpointError(f"checkpoint {self.id} records no file {name!r}", path,
                                  USE_ANOTHER)
        try:
            data = read_confined(self.path, name, max_size=schemas.MAX_TENSOR_FILE_BYTES,
                                 expected_size=expected["size"])
        except (MlwidgetsError, OSError) as e:
            raise _damaged(self.id, e, path) from None
        if sha256_bytes(data) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint {self.id} is damaged: the file's sha256 does not match its "
                f"{RECORD_FILE}", path, USE_ANOTHER)
        return data

    def verify(self) -> None:
        """Check every file of the checkpoint; raise CheckpointError naming the first bad one."""
        for name in self.files:
            self.read_verified(name)

    def tensor_shapes(self, name: str = MODEL_FILE) -> dict[str, tuple[str, tuple[int, ...]]]:
        """{tensor name: (dtype, shape)} from a verified file's header, without its data."""
        return self._header(name, self.read_verified(name))

    def load_tensors(self, name: str = MODEL_FILE) -> dict[str, Any]:
        data = self.read_verified(name)
        self._header(name, data)
        return self._tensors(name, data)

    def _header(self, name: str, data: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
        try:
            return tensorfiles.header(data)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {self.id} is damaged: not a valid safetensors "
                                  f"file ({e})", self.path / name, USE_ANOTHER) from None

    def _tensors(self, name: str, data: bytes) -> dict[str, Any]:
        """The tensors of file `name`'s bytes (verified, header checked)."""
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as e:  # safetensors' own errors name no file
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CheckpointError(f"checkpoint {self.id} is damaged: not a valid safetensors "
                                  f"file ({reason})", self.path / name, USE_ANOTHER) from None

    def model_record(self) -> dict[str, Any]:
        """The `model` record, checked to describe a network: architecture, classes and
        image size (what rebuilding the classifier needs), else CheckpointError."""
        if not self.has_model:
            self.load_model_state()  # raises: no trained classifier here
        missing = [k for k in ("classes", "image_size") if k not in self.model]
        if missing:
            raise CheckpointError(f"checkpoint {self.id} is damaged: its model record has no "
                                  f"{missing[0]}", self.path / RECORD_FILE, USE_ANOTHER)
        return self.model

    def load_model_state(self, expected: dict[str, Any] | None = None,
                         head_only: bool = False) -> dict[str, Any]:
        """The whole network's weights: model.safetensors, plus body.safetensors if any;
        with `head_only`, the head's alone (`head.…`), from model.safetensors: a linked
        body holds the frozen extractor (features.body_state), never the head, and is by
        far the largest file to read and verify.

        `expected` (a skeleton's state dict) is checked first: the same tensor names and
        shapes, or CheckpointError naming the file, before any weight is loaded."""
        if not self.has_model:
            raise CheckpointError(
                f"checkpoint {self.id} holds no trained classifier (phase {self.phase!r})",
                self.path, "choose a checkpoint from a training phase")
        linked = [BODY_FILE] if BODY_FILE in self.files and not head_only else []
        prefix = "head." if head_only else ""
        blobs = {name: self.read_verified(name) for name in (MODEL_FILE, *linked)}  # once each
        shapes = {k: shape for name, data in blobs.items()  # every header checked first
                  for k, (_, shape) in self._header(name, data).items() if k.startswith(prefix)}
        if expected is not None:
            problem = tensorfiles.mismatch(shapes, expected)
            if problem:
                raise CheckpointError(
                    f"checkpoint {self.id} does not match its architecture "
                    f"{self.model.get('architecture')!r}: {problem}", self.path / MODEL_FILE,
                    USE_ANOTHER)
        state: dict[str, Any] = {}
        for name, data in blobs.items():
            state.update((k, v) for k, v in self._tensors(name, data).items()
                         if k.startswith(prefix))
        return state

    def load_optimizer_state(self, n_params: int | None = None) -> dict[str, Any] | None:
        """fastai's optimizer state dict (`{'state': [...], 'hypers': [...]}`), or None.

        `n_params`, when given, is the optimizer's parameter count the record must match."""
        if OPTIMIZER_FILE not in self.files:
            return None
        where = self.path / RECORD_FILE
        count = self.optimizer.get("n_params", 0)
        if n_params is not None and count != n_params:
            raise CheckpointError(f"checkpoint {self.id} is damaged: its optimizer has "
                                  f"{count} parameters, the network {n_params}", where,
                                  USE_ANOTHER)
        tensors = self.load_tensors(OPTIMIZER_FILE)
        states: list[dict[str, Any]] = [{} for _ in range(count)]
        for key, tensor in tensors.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= count or not name:
                raise CheckpointError(f"checkpoint {self.id} is damaged: optimizer tensor "
                                      f"{key[:80]!r} names no parameter",
                                      self.path / OPTIMIZER_FILE, USE_ANOTHER)
            states[int(index)][name] = tensor
        for index, scalars in self.optimizer.get("scalars", {}).items():
            if int(index) >= count:
                raise CheckpointError(f"checkpoint {self.id} is damaged: optimizer scalars "
                                      f"for parameter {index} of {count}", where, USE_ANOTHER)
            states[int(index)].update(scalars)
        return {"state": states, "hypers": self.optimizer.get("hypers", [])}

    # -- the public shapes ---------------------------------------------------------

    def to_dict(self, style: str = "native") -> dict[str, Any]:
        """The record in one of the public shapes: native, createml, openai or mistral."""
        m = self.metrics
        if style == "native":
            return {
                "id": self.id, "session_id": self.session_id, "phase": self.phase,
                "iteration": self.iteration, "step_number": self.step_number,
                "created_at": self.created_at, "date": self.date.isoformat(), "url": self.url,
                "metrics": dict(m), "confusion": self.confusion, "model": dict(self.model),
                "files": dict(self.files), "optimizer": dict(self.optimizer),
                "path": str(self.path), "partial": self.partial, "resume": self.resume,
            }
        if style == "createml":
            return {
                "phase": _createml_phase(self.phase), "iteration": self.iteration,
                "date": self.date.isoformat(), "url": self.url,
                "metrics": {
                    "loss": m.get("train_loss"), "accuracy": m.get("train_accuracy"),
                    "validationLoss": m.get("valid_loss"),
                    "validationAccuracy": m.get("valid_accuracy"),
                },
            }
        if style == "openai":
            architecture = self.model.get("architecture", "model")
            return {
                "object": "fine_tuning.job.checkpoint",
                "id": self.id,
                "created_at": int(self.created_at),
                "fine_tuned_model_checkpoint":
                    f"mlwidgets:{architecture}:{self.session_id}:ckpt-step-{self.step_number}",
                "fine_tuning_job_id": self.session_id,
                # The object's metrics are optional numbers: one that does not exist (no
                # validation data, say) is left out, never null.
                "metrics": {"step": self.step_number, **{
                    key: m[ours] for key, ours in OPENAI_METRICS.items()
                    if m.get(ours) is not None}},
                "step_number": self.step_number,
            }
        if style == "mistral":
            return {
                "metrics": {
                    "train_loss": m.get("train_loss"), "valid_loss": m.get("valid_loss"),
                    "valid_mean_token_accuracy": m.get("valid_accuracy"),
                },
                "step_number": self.step_number,
                "created_at": int(self.created_at),
            }
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], style: str | None = None) -> Checkpoint:
        """The checkpoint a `to_dict(style)` dictionary describes (Create ML's
        `MLCheckpoint(from:)`); `style=None` recognises the style from the keys.

        - native: exactly the checkpoint that wrote it, every field (optimizer record too).
        - createml: phase, iteration, created_at (from `date`), path and id (from `url`),
          metrics (`loss` → train_loss, `accuracy` → train_accuracy, `validationLoss` →
          valid_loss, `validationAccuracy` → valid_accuracy); step_number from the id's
          leading digits (the store names directories `<step>-<phase>`), session_id "".
        - openai: id, created_at, step_number, session_id (`fine_tuning_job_id`), the
          architecture (from `fine_tuned_model_checkpoint`), metrics (`valid_*` →
          batch_valid_*, `full_valid_*` → valid_*, `*_mean_token_accuracy` → *_accuracy);
          phase from the id's tail, iteration 0 (not carried), path ".".
        - mistral: metrics (train_loss, valid_loss, `valid_mean_token_accuracy` →
          valid_accuracy), step_number, created_at; id "", session_id "", phase "training",
          iteration 0, path ".".
        Files are carried by the native style only; a decoded foreign checkpoint describes
        a moment of training but has no weights to load.
        """
        from .checkpoint_styles import decode

        return decode(cls, d, style)


def _createml_phase(phase: str) -> str:
    # Create ML spells phases in camelCase (MLPhase).
    head, *rest = phase.split("_")
    return head + "".join(w.capitalize() for w in rest)


def metric_is_better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def best_of(checkpoints: list[Checkpoint], metric: str) -> Checkpoint | None:
    """The one rule for "the best checkpoint": among whole checkpoints that hold a
    classifier and a finite `metric`, the best value; the earliest on a tie."""
    best = None
    for c in checkpoints:
        if c.has_model and not c.partial and is_finite(c.metrics.get(metric)) and (
                best is None or metric_is_better(metric, c.metrics[metric], best.metrics[metric])):
            best = c
    return best


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
