"""A checkpoint's predictions on the validation images, computed once and cached.

Comparing checkpoints, drilling into a confusion cell and scrubbing the timeline all need
the class probabilities of every validation image under a checkpoint. They are computed
once (a head over the session's extracted features where the checkpoint's frozen body is
the one that extracted them; a batched forward pass over the images otherwise) and kept
outside the checkpoint folders, which stay exactly as committed:

```
<session>/predictions/<checkpoint id>/
    probabilities.safetensors   (n images, n classes) float32, in the validation split's order
    predictions.json            checkpoint, its model file's sha256, the images' digest,
                                classes, and the tensor file's sha256 and size
```

Nothing here is trusted either: the record is validated (side_schemas.PredictionsRecord), files
are read confined and size-checked, and a cache that does not match its checkpoint (another
checkpoint of the same name, other images) or is damaged is recomputed, never used. The
folder of a checkpoint is removed when retention or `remove_checkpoints` deletes it
(CheckpointStore.delete) and orphans are swept on the next use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import features as feats
from . import schemas, side_schemas, tensorfiles
from .checkpoint_store import remove_derived
from .checkpoints import BODY_FILE, MODEL_FILE, Checkpoint
from .data import Item
from .errors import MlwidgetsError
from .files import mkdir_confined, read_confined, sha256_bytes, write_cache_atomic
from .images import load_array
from .models import build_head, classifier_of, inference_batch_size, skeleton_for
from .parameters import ModelParameters

log = logging.getLogger(__name__)
PREDICTIONS_DIR = "predictions"
TENSOR_FILE, RECORD_FILE = "probabilities.safetensors", "predictions.json"


def items_digest(items: Sequence[Item]) -> str:
    """What the cached rows stand for: the images and labels, in order."""
    return hashlib.sha256(json.dumps([[str(i.path), i.label] for i in items]).encode()
                          ).hexdigest()


class PredictionCache:
    """The `predictions/` folder of a session: one entry per checkpoint, read or computed."""

    def __init__(self, session_dir: str | Path, classes: Sequence[str], items: Sequence[Item],
                 features_key: dict[str, Any] | None = None):
        self.session_dir = Path(session_dir)
        self.directory = self.session_dir / PREDICTIONS_DIR
        self.classes = list(classes)
        self.items = list(items)
        self.features_key = features_key
        self.digest = items_digest(self.items)
        self._memory: dict[tuple[str, str], np.ndarray] = {}  # (id, model sha) -> probs
        self._features: Any = None  # the session's extracted features, once loaded
        self.last_source = ""  # "memory", "cache", "features" or "images"
        self._last_write: Future | None = None  # the writer is one thread, in order

    def probabilities(self, checkpoint: Checkpoint) -> np.ndarray:
        """(validation images, classes) probabilities under `checkpoint`."""
        if not checkpoint.has_model:
            raise ValueError(f"checkpoint {checkpoint.id} ({checkpoint.phase}) holds no "
                             "classifier; choose a checkpoint from a training phase")
        key = (checkpoint.id, checkpoint.files[MODEL_FILE]["sha256"])
        if key in self._memory:
            self.last_source = "memory"
            return self._memory[key]
        found = self._read(checkpoint)
        if found is None:
            found, source = self._compute(checkpoint)
            # Written by a background thread: a head over cached features takes well under
            # a millisecond, creating two files takes more. `flush()` waits for it.
            self._last_write = _writer().submit(self._write_or_warn, checkpoint, found,
                                                source)
            self.last_source = source
        else:
            self.last_source = "cache"
        self._memory[key] = found
        return found

    def flush(self) -> None:
        """Wait until every computed entry is written (or was refused, with a warning)."""
        last, self._last_write = self._last_write, None
        if last is not None:
            last.result()  # the earlier ones were written first

    def prune(self, keep: Sequence[str]) -> list[str]:
        """Remove the entries of checkpoints not in `keep`; returns their ids."""
        if not self.directory.is_dir() or self.directory.is_symlink():
            return []
        gone = sorted(p.name for p in self.directory.iterdir() if p.name not in set(keep))
        for name in gone:
            remove_entry(self.session_dir, name)
        self._memory = {k: v for k, v in self._memory.items() if k[0] in set(keep)}
        return gone

    # -- reading and writing --------------------------------------------------------------

    def _read(self, checkpoint: Checkpoint) -> np.ndarray | None:
        """The cached probabilities, or None when absent, stale or damaged (recomputed)."""
        from safetensors.numpy import load

        name = f"{PREDICTIONS_DIR}/{checkpoint.id}"
        try:
            raw = read_confined(self.session_dir, f"{name}/{RECORD_FILE}",
                                max_size=schemas.MAX_SESSION_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except (MlwidgetsError, OSError):
            return None
        try:
            record = side_schemas.load_predictions_record(raw, self.directory / checkpoint.id)
            if (record["checkpoint"] != checkpoint.id or record["classes"] != self.classes
                    or record["model_sha256"] != checkpoint.files[MODEL_FILE]["sha256"]
                    or record["items_sha256"] != self.digest
                    or record["images"] != len(self.items)):
                return None
            expected = record["files"][TENSOR_FILE]
            data = read_confined(self.session_dir, f"{name}/{TENSOR_FILE}",
                                 max_size=schemas.MAX_TENSOR_FILE_BYTES,
                                 expected_size=expected["size"])
            if sha256_bytes(data) != expected["sha256"]:
                return None
            shape = (len(self.items), len(self.classes))
            if tensorfiles.header(data) != {"probabilities": ("F32", shape)}:
                return None
            return load(data)["probabilities"]
        except (MlwidgetsError, OSError, ValueError):
            return None

    def _write_or_warn(self, checkpoint: Checkpoint, probabilities: np.ndarray,
                       source: str) -> None:
        try:
            self._write(checkpoint, probabilities, source)
        except (MlwidgetsError, OSError) as e:  # a link or a read-only session: kept in memory
            log.warning("predictions of %s are not cached: %s", checkpoint.id, e)

    def _write(self, checkpoint: Checkpoint, probabilities: np.ndarray, source: str) -> None:
        from safetensors.numpy import save

        folder = mkdir_confined(self.session_dir, f"{PREDICTIONS_DIR}/{checkpoint.id}")
        data = save({"probabilities": np.ascontiguousarray(probabilities, dtype=np.float32)})
        # The tensor file first, then the record naming its hash; no fsync: a crash leaves
        # a missing or mismatched entry, which is recomputed (every read checks the hash).
        write_cache_atomic(folder / TENSOR_FILE, data)
        record = {"format": side_schemas.PREDICTIONS_FORMAT, "checkpoint": checkpoint.id,
                  "model_sha256": checkpoint.files[MODEL_FILE]["sha256"],
                  "items_sha256": self.digest, "classes": self.classes,
                  "images": len(self.items), "source": source,
                  "files": {TENSOR_FILE: {"sha256": sha256_bytes(data), "size": len(data)}}}
        write_cache_atomic(folder / RECORD_FILE, schemas.encode_record(record))

    # -- computing ----------------------------------------------------------------------------

    def _compute(self, checkpoint: Checkpoint) -> tuple[np.ndarray, str]:
        cached = self._cached_features(checkpoint)
        if cached is not None:
            return head_probabilities(checkpoint, cached.tensors["valid_x"]), "features"
        return image_probabilities(checkpoint, [i.path for i in self.items]), "images"

    def _cached_features(self, checkpoint: Checkpoint) -> feats.ExtractedFeatures | None:
        """The session's features when `checkpoint`'s frozen body extracted them."""
        body = checkpoint.files.get(BODY_FILE)
        if body is None or self.features_key is None:
            return None
        if self._features is None:
            try:
                self._features = feats.find(self.session_dir / feats.FEATURES_DIR,
                                            self.features_key) or False
            except MlwidgetsError:
                self._features = False
        found = self._features or None
        if found is None or found.record["files"][BODY_FILE]["sha256"] != body["sha256"]:
            return None
        if len(found.tensors["valid_x"]) != len(self.items):
            return None
        return found


@functools.cache
def _writer() -> ThreadPoolExecutor:
    """The one thread that writes cached predictions, in order."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlwidgets-predictions")


def head_probabilities(checkpoint: Checkpoint, valid_x: torch.Tensor) -> np.ndarray:
    """Softmax of `checkpoint`'s classifier layers over extracted features."""
    record = checkpoint.model_record()
    params = ModelParameters(classifier=record.get("classifier", "logistic_regression"),
                             mlp_layers=tuple(record.get("mlp_layers", (256,))))
    holder = torch.nn.Sequential(OrderedDict(head=build_head(
        params, int(valid_x.shape[1]), len(record["classes"]), seeded=False)))
    holder.load_state_dict(checkpoint.load_model_state(expected=holder.state_dict(),
                                                       head_only=True))
    head = classifier_of(holder.head)
    head.eval()
    with torch.inference_mode():
        return torch.softmax(head(valid_x.float()), dim=1).numpy()


def image_probabilities(checkpoint: Checkpoint, paths: Sequence[Path],
                        batch_size: int = 64) -> np.ndarray:
    """Softmax of `checkpoint`'s whole network over images, batched as a classifier does."""
    model = network(checkpoint)
    size = int(checkpoint.model_record()["image_size"])
    return batched_probabilities(model, paths, size, len(checkpoint.model["classes"]),
                                 batch_size)


def network(checkpoint: Checkpoint) -> torch.nn.Module:
    """`checkpoint`'s network with its verified weights, in eval mode."""
    model = skeleton_for(checkpoint.model_record())
    model.load_state_dict(checkpoint.load_model_state(expected=model.state_dict()))
    return model.eval()


def batched_probabilities(model: torch.nn.Module, paths: Sequence[Any], image_size: int,
                          n_classes: int, batch_size: int = 64) -> np.ndarray:
    batch_size = min(batch_size, inference_batch_size(image_size))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            arrays = np.stack([load_array(p, image_size) for p in paths[start:start + batch_size]])
            x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255)
            chunks.append(torch.softmax(model(x), dim=1))
    if not chunks:
        return np.zeros((0, n_classes), dtype=np.float32)
    return torch.cat(chunks).numpy()


def remove_entry(session_dir: Path, checkpoint_id: str) -> None:
    """Delete one checkpoint's cached predictions (never following a link out)."""
    remove_derived(session_dir, checkpoint_id)
