"""Provenance: what an exported model says about itself, and what its session records.

The model's side (Create ML's `MLModelMetadata`, feature descriptions, user-defined
entries) works on the Core ML protobuf spec directly, so it needs no coremltools import
and is the same for ML programs and neural networks. The session's side is one JSON
record per export in `<session>/exports/`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import schemas, side_schemas
from ..errors import MlwidgetsError
from ..files import mkdir_confined, read_confined, write_json_atomic

if TYPE_CHECKING:
    from ..classifier import ImageClassifier
    from .export import ExportResult

log = logging.getLogger(__name__)

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBABILITIES_OUTPUT = "classLabelProbs"
# Xcode shows its image-classifier preview tab for models carrying this entry.
PREVIEW_TYPE_KEY = "com.apple.coreml.model.preview.type"
PREVIEW_TYPE = "imageClassifier"
_CLASSES_IN_DESCRIPTION = 6
EXPORTS_DIR = "exports"
RECORD_KIND = "mlwidgets.export/1"


@dataclass(frozen=True)
class ModelMetadata:
    """Author, license, description and version of an exported model (`MLModelMetadata`).

    `additional` entries become user-defined metadata; keys and values are strings.
    Empty fields get sensible defaults (the short description names the classes).
    """

    author: str = ""
    short_description: str = ""
    license: str = ""
    version: str = ""
    additional: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("author", "short_description", "license", "version"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ModelMetadata.{name} must be a string, "
                                f"got {type(getattr(self, name)).__name__}")
        bad = [k for k, v in self.additional.items()
               if not isinstance(k, str) or not isinstance(v, str) or not k]
        if bad:
            raise TypeError(f"ModelMetadata.additional keys and values must be non-empty "
                            f"strings; check {bad[:3]}")


def default_short_description(classes: Sequence[str]) -> str:
    """'Classifies images as cat, dog or fox; trained with mlwidgets' (long lists shortened)."""
    names = list(classes)
    if len(names) > _CLASSES_IN_DESCRIPTION:
        shown = ", ".join(names[:_CLASSES_IN_DESCRIPTION - 1])
        listed = f"{shown}, … ({len(names)} classes)"
    elif len(names) > 1:
        listed = f"{', '.join(names[:-1])} or {names[-1]}"
    else:
        listed = ", ".join(names)
    return f"Classifies images as {listed}; trained with mlwidgets"


def input_description(image_size: int) -> str:
    s = image_size
    return (f"Color image (RGB) of {s}×{s} pixels. Other sizes must be scaled so the short side "
            f"is {s} pixels and centre-cropped, as in training: Vision's default image crop "
            "and scale option (.centerCrop) does exactly that.")


def output_descriptions(classes: Sequence[str]) -> dict[str, str]:
    return {
        LABEL_OUTPUT: f"The most likely class, one of {len(classes)}: "
                      + ", ".join(list(classes)[:_CLASSES_IN_DESCRIPTION])
                      + (", …" if len(classes) > _CLASSES_IN_DESCRIPTION else ""),
        PROBABILITIES_OUTPUT: "The probability of each class (they sum to 1).",
    }


def user_defined_metadata(classifier: ImageClassifier, metadata: ModelMetadata,
                          architecture: str | None = None) -> dict[str, str]:
    """The user-defined entries: preview type, mlwidgets version, checkpoint provenance."""
    from .. import __version__

    entries = {PREVIEW_TYPE_KEY: PREVIEW_TYPE, "mlwidgets.version": __version__}
    if architecture:
        entries["mlwidgets.architecture"] = architecture
    entries["mlwidgets.image_size"] = str(classifier.image_size)
    checkpoint = classifier.checkpoint
    if checkpoint is not None:
        entries.update({
            "mlwidgets.session_id": checkpoint.session_id,
            "mlwidgets.checkpoint_id": checkpoint.id,
            "mlwidgets.phase": checkpoint.phase,
            "mlwidgets.iteration": str(checkpoint.iteration),
            "mlwidgets.step": str(checkpoint.step_number),
        })
        # str(float) is the shortest exact spelling; metrics without a value are left out.
        entries.update({f"mlwidgets.metric.{name}": str(value)
                        for name, value in checkpoint.metrics.items() if value is not None})
    clashes = sorted(set(metadata.additional) & set(entries))
    if clashes:
        raise ValueError(f"ModelMetadata.additional may not replace entries mlwidgets writes: "
                         f"{', '.join(clashes)}")
    entries.update(metadata.additional)
    return entries


def describe(spec: Any, classifier: ImageClassifier, metadata: ModelMetadata,
             architecture: str | None = None) -> None:
    """Fill a converted model's spec: feature descriptions and all metadata, in place."""
    description = spec.description
    for feature in description.input:
        if feature.name == INPUT_NAME:
            feature.shortDescription = input_description(classifier.image_size)
    outputs = output_descriptions(classifier.classes)
    for feature in description.output:
        feature.shortDescription = outputs.get(feature.name, feature.shortDescription)
    meta = description.metadata
    meta.author = metadata.author
    meta.license = metadata.license
    meta.versionString = metadata.version
    meta.shortDescription = (metadata.short_description
                             or default_short_description(classifier.classes))
    set_user_defined(meta.userDefined, user_defined_metadata(classifier, metadata, architecture))


def set_user_defined(target: Any, entries: Mapping[str, str]) -> None:
    # Keep what coremltools wrote (its version, the source framework) next to ours.
    for key, value in entries.items():
        target[key] = value


def fingerprint(path: Path) -> tuple[str, str]:
    """(sha256, what was hashed): the file itself, or a package's Manifest.json."""
    target = path / "Manifest.json" if path.is_dir() else path
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), target.name


# -- the session's record of exports ------------------------------------------------------


def record_export(classifier: ImageClassifier, result: ExportResult,
                  metadata: ModelMetadata) -> Path | None:
    """Write the exports/ record of a classifier restored from a session; its path or None."""
    checkpoint = classifier.checkpoint
    session_dir = checkpoint.path.parent.parent if checkpoint is not None else None
    if session_dir is None or not (session_dir / "session.json").is_file():
        return None  # not from a session: nothing to record it in
    created = time.time()
    sha256, hashed = fingerprint(result.path)
    record = {
        "kind": RECORD_KIND, "path": str(result.path.resolve()), "format": result.format,
        "size_bytes": result.size_bytes, "precision": result.precision,
        "quantize": result.quantize, "sha256": sha256, "sha256_of": hashed,
        "session_id": checkpoint.session_id, "checkpoint_id": checkpoint.id,
        "iteration": checkpoint.iteration, "step_number": checkpoint.step_number,
        "created_at": created, "date": datetime.fromtimestamp(created, timezone.utc).isoformat(),
        "seconds": round(result.seconds, 3),
        "metadata": {"author": metadata.author, "license": metadata.license,
                     "version": metadata.version, "short_description":
                     metadata.short_description or default_short_description(classifier.classes)},
    }
    directory = session_dir / EXPORTS_DIR
    stamp = datetime.fromtimestamp(created, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    record_path = directory / f"{stamp}-{checkpoint.id}.json"  # sorting = time order
    try:  # exports/ must be the session's own folder, not a link to elsewhere
        mkdir_confined(session_dir, EXPORTS_DIR)
        write_json_atomic(record_path, record)
    except (OSError, MlwidgetsError) as e:  # the model is written: a read-only session warns
        log.warning("exported %s but could not record it in %s: %s", result.path, directory, e)
        return None
    return record_path


def exports_of(session_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The export records of a session, oldest first (damaged or unsafe ones skipped with
    a warning naming them; see side_schemas.ExportRecord)."""
    directory = Path(session_dir) / EXPORTS_DIR
    records = []
    if directory.is_symlink() or not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            data = read_confined(session_dir, f"{EXPORTS_DIR}/{path.name}",
                                 max_size=schemas.MAX_SESSION_RECORD_BYTES)
            records.append(side_schemas.load_export_record(data, path))
        except (OSError, MlwidgetsError) as e:
            log.warning("skipping export record %s: %s", path, e)
    return records
