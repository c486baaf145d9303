"""Extracted features: the frozen backbone's pooled outputs, computed once.

Create ML trains its classifier on features extracted in one pass over the images
(its `extractingFeatures` phase); so do we. They are cached in the session directory,

```
features/<key>/
    features.safetensors   train_x, train_y, valid_x, valid_y (float32 / int64)
    body.safetensors       the frozen weights that produced them (normalize + body)
    features.json          what the key stands for, and each file's sha256 and size
```
keyed by data fingerprint, backbone, weights, image size and augmented views, so
another session on the same data can reuse them (`reuse_extracted_features`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import tensorfiles
from .augment import augment_batch
from .data import Item
from .errors import UnsafeFileError
from .extractors import BUILT_IN, LITE0_SHA256, TORCHVISION
from .files import (
    directory_committed_as,
    link_or_copy,
    read_confined,
    sha256_bytes,
    sha256_of_file,
    synced_file_record,
    write_bytes_durably,
)
from .loaders import ImageDataset
from .models import inference_batch_size, split_features_and_classifier
from .parameters import ModelParameters

FEATURES_DIR = "features"
FEATURES_FILE, BODY_FILE, RECORD_FILE = "features.safetensors", "body.safetensors", "features.json"
Progress = Callable[[int, int, int], None]  # (pass, images done in it, images in it)


@dataclass(frozen=True)
class ExtractedFeatures:
    directory: Path
    tensors: dict[str, torch.Tensor]  # train_x, train_y, valid_x, valid_y
    record: dict[str, Any]

    @property
    def body_file(self) -> tuple[Path, dict[str, Any]]:
        """The frozen weights' file and its {sha256, size} record, to link into checkpoints."""
        return self.directory / BODY_FILE, self.record["files"][BODY_FILE]


def feature_key(params: ModelParameters, fingerprint: str) -> dict[str, Any]:
    """Everything the features depend on; equal keys mean reusable features.

    Without a feature extractor the key is what it was before extractors existed, so the
    features of older sessions are still found.
    """
    fx = params.feature_extractor
    if params.weights_file:
        weights = "sha256:" + sha256_of_file(params.weights_file)
    elif fx == BUILT_IN:
        weights = f"builtin:{LITE0_SHA256[:16]}"
    elif fx is not None:
        weights = f"{'torchvision' if fx in TORCHVISION else 'timm'}:{fx}:DEFAULT"
    else:
        weights = f"torchvision:{params.architecture}:DEFAULT" if params.pretrained else "random"
    views = params.feature_views if params.augmentation.enabled else 0
    key = {"data": fingerprint, "architecture": fx or params.architecture, "weights": weights,
           "image_size": params.image_size, "views": views,
           "augmentation": params.to_dict()["augmentation"] if views else None,
           "seed": params.seed}
    return key if fx is None else {**key, "feature_extractor": fx}


def key_name(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def extract(model: torch.nn.Module, train: Sequence[Item], valid: Sequence[Item],
            classes: Sequence[str], params: ModelParameters, views: int,
            progress: Progress | None = None,
            stop: Callable[[], bool] = lambda: False, cache_mb: float | None = None,
            decoding: Callable[[int, int], None] | None = None,
            ) -> dict[str, torch.Tensor] | None:
    """Pooled features of every image: one plain pass, then `views` augmented passes over
    the training images. Returns None if `stop()` turns true in between.

    With augmented views, the training images are decoded once into RAM when they fit in
    `cache_mb` (see image_cache.py; `decoding(done, total)` reports it), not once a pass.
    The network runs as a bare forward pass would: in inference mode, channels-last (1.7x
    faster for depthwise convolutions on a CPU); it is handed back in its own layout.
    """
    from torch.utils.data import DataLoader

    from .image_cache import decode_images, fits_in_cache

    features, _ = split_features_and_classifier(model)
    features.eval()
    batch_size = inference_batch_size(params.image_size)

    def in_order(items: Sequence[Item]) -> Any:
        return DataLoader(ImageDataset(items, classes, params.image_size),
                          batch_size=batch_size, shuffle=False)

    train_batches = in_order(train)
    if views and fits_in_cache(len(train), params.image_size, cache_mb):
        train_batches = _Batches(decode_images(train, classes, params.image_size, decoding),
                                 batch_size)
    loaders = [("train", train_batches), ("valid", in_order(valid))]
    loaders += [("train", train_batches)] * views
    out: dict[str, list[torch.Tensor]] = {"train_x": [], "train_y": [], "valid_x": [],
                                          "valid_y": []}
    features.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            return _passes(features, loaders, params, progress, stop, out)
    finally:
        features.to(memory_format=torch.contiguous_format)


def _passes(features: torch.nn.Module, loaders: list[tuple[str, Any]], params: ModelParameters,
            progress: Progress | None, stop: Callable[[], bool],
            out: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Each pass in turn: the plain ones, then the augmented views."""
    for n, (split, loader) in enumerate(loaders, start=1):
        done, batches = 0, iter(loader)
        # Seeded per pass, after the loader has drawn its own seed: the augmented views
        # are part of the cache key, so they must not depend on how images are read.
        torch.manual_seed(params.seed + n)
        for x, y in batches:
            if stop():
                return None
            if n > 2:
                x = augment_batch(x, params.augmentation)
            x = x.contiguous(memory_format=torch.channels_last)
            out[f"{split}_x"].append(features(x))
            out[f"{split}_y"].append(y)
            done += len(y)
            if progress:
                progress(n, done, len(loader.dataset))
    empty = torch.zeros(0, dtype=torch.long)
    return {k: torch.cat(v) if v else (empty if k.endswith("_y") else torch.zeros(0, 0))
            for k, v in out.items()}


class _Batches:
    """Batches in order from decoded images, like a DataLoader over them."""

    def __init__(self, decoded: Any, batch_size: int):
        self.dataset, self.batch_size = decoded, batch_size

    def __iter__(self) -> Any:
        n = len(self.dataset)
        for start in range(0, n, self.batch_size):
            yield self.dataset.batch(torch.arange(start, min(start + self.batch_size, n)))


def save(directory: Path, key: dict[str, Any], tensors: dict[str, torch.Tensor],
         body_state: dict[str, torch.Tensor]) -> ExtractedFeatures:
    """Write features atomically into `directory/<key name>` (temporary dir, then rename)
    and return them, without reading them back unless another run's were there first;
    `find` reads them back, verified."""
    from safetensors.torch import save_file

    from . import schemas

    if directory.is_symlink():  # the cache would land wherever it points
        raise UnsafeFileError("a symlink inside the session", directory,
                              "sessions must hold their own files; nothing is written out of "
                              "them")
    target = directory / key_name(key)
    with directory_committed_as(target) as tmp:  # kept as is if another run got there first
        files = {}
        for name, state in ((FEATURES_FILE, tensors), (BODY_FILE, body_state)):
            # safetensors writes into the new folder itself: serializing the frozen body
            # (14 MB for Lite0) to bytes first, then writing those, took twice as long.
            save_file(tensorfiles.savable(state), str(tmp / name))
            files[name] = synced_file_record(tmp / name)
        record = {"key": key, "files": files}
        written = json.dumps(record, indent=2).encode()
        write_bytes_durably(tmp / RECORD_FILE, written)
    kept = read_confined(directory, f"{target.name}/{RECORD_FILE}",
                         max_size=schemas.MAX_SESSION_RECORD_BYTES)
    if kept != written:  # another run's were there first and are kept: use those
        return load(target)
    return ExtractedFeatures(target, tensors, record)


def load(path: Path) -> ExtractedFeatures:
    """Read cached features, checking every file against its recorded sha256. Files are
    read only from inside the folder, never through a link, sizes checked first."""
    from safetensors.torch import load as from_bytes

    from . import schemas, side_schemas
    from .errors import CheckpointError, MlwidgetsError, describe

    root, name = path.parent, path.name
    try:
        if root.is_symlink():
            raise UnsafeFileError("a symlink inside the session", root,
                                  "sessions must hold their own files")
        record = side_schemas.load_features_record(read_confined(
            root, f"{name}/{RECORD_FILE}", max_size=schemas.MAX_SESSION_RECORD_BYTES),
            path / RECORD_FILE)
        blobs = {}
        for file_name in (FEATURES_FILE, BODY_FILE):
            expected = record["files"][file_name]
            blobs[file_name] = read_confined(root, f"{name}/{file_name}",
                                             max_size=schemas.MAX_TENSOR_FILE_BYTES,
                                             expected_size=expected["size"])
            if sha256_bytes(blobs[file_name]) != expected["sha256"]:
                raise UnsafeFileError("its sha256 does not match features.json",
                                      path / file_name, "")
        tensors = from_bytes(blobs[FEATURES_FILE])
    except (MlwidgetsError, OSError, ValueError) as e:
        raise CheckpointError(f"the extracted features are damaged: {describe(e)}", path,
                              "delete that folder and its features are extracted again"
                              ) from None
    return ExtractedFeatures(path, tensors, record)


def find(directory: Path, key: dict[str, Any]) -> ExtractedFeatures | None:
    path = directory / key_name(key)
    return load(path) if (path / RECORD_FILE).is_file() else None


def copy_into(found: ExtractedFeatures, directory: Path) -> None:
    """Give `directory` the same features (hard links), atomically; a no-op if it has them."""
    target = directory / found.directory.name
    if target.exists():
        return
    with directory_committed_as(target) as tmp:
        for name in (FEATURES_FILE, BODY_FILE, RECORD_FILE):
            link_or_copy(found.directory / name, tmp / name)


def body_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen part of the model's state: everything but the classifier layers."""
    _, classifier = split_features_and_classifier(model)
    trained = {id(t) for t in classifier.state_dict(keep_vars=True).values()}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) not in trained}
