"""The `checkpoints/` folder of a session: commit (atomically), list, find, retain, delete.

A checkpoint is written into a temporary folder, fsynced and renamed into place, so a
listing never shows half of one; what an interrupted commit left is swept by the next
writer. Reading one checkpoint is checkpoints.py's job.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from . import schemas, tensorfiles
from .checkpoints import (
    FORMAT,
    HIGHER_IS_BETTER,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RECORD_FILE,
    RESUME_FILE,
    TEMP_PREFIXES,
    USE_ANOTHER,
    Checkpoint,
    best_of,
    is_finite,
)
from .errors import CheckpointError
from .files import (
    directory_committed_as,
    fsync_dir,
    link_or_copy,
    sha256_bytes,
    write_bytes_durably,
)

log = logging.getLogger(__name__)


class CheckpointStore:
    """The `checkpoints/` directory of a session: commit, list, find, retain.

    Listing reads each `checkpoint.json` once and caches it, so scrubbing a long
    timeline costs no disk reads. Only the training process sweeps leftovers of
    interrupted commits (`open_for_writing`); readers simply ignore them.
    """

    def __init__(self, directory: str | os.PathLike, session_id: str):
        self.directory = Path(directory)
        self.session_id = session_id
        self._cache: dict[str, Checkpoint] = {}
        # Checkpoints that cannot be used, by id: listed as damaged, never silently hidden.
        self.damaged: dict[str, CheckpointError] = {}

    def open_for_writing(self) -> None:
        """Create the directory and remove what interrupted commits left. Writer only."""
        if self.directory.is_symlink():  # commits would land wherever it points
            raise CheckpointError("the checkpoints folder is a symlink", self.directory,
                                  "sessions must hold their own files; nothing is written "
                                  "out of them")
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            if entry.name.startswith(TEMP_PREFIXES):
                log.info("removing %s, left by an interrupted commit", entry)
                shutil.rmtree(entry, ignore_errors=True)

    # -- listing ---------------------------------------------------------------------

    def all(self) -> list[Checkpoint]:
        """Every usable checkpoint, in time order. The others are in `damaged`, by id, with
        the reason (a warning is logged once for each)."""
        if os.path.islink(self.directory):
            raise CheckpointError("the checkpoints folder is a symlink", self.directory,
                                  "sessions must hold their own files; nothing is followed "
                                  "out of them")
        if not self.directory.is_dir():
            return []
        names: set[str] = set()
        links: set[str] = set()
        with os.scandir(self.directory) as entries:
            for e in entries:
                if e.name.startswith(TEMP_PREFIXES):
                    continue
                if e.is_symlink():
                    links.add(e.name)
                elif e.is_dir(follow_symlinks=False):
                    names.add(e.name)
        for gone in set(self._cache) - names:
            del self._cache[gone]
        for gone in set(self.damaged) - names - links:
            del self.damaged[gone]
        for name in sorted(links - set(self.damaged)):
            self._mark_damaged(name, CheckpointError(
                f"checkpoint {name} is damaged: its folder is a symlink",
                self.directory / name, USE_ANOTHER))
        for name in sorted(names - set(self._cache)):
            try:
                self._cache[name] = Checkpoint.from_directory(self.directory / name)
                self.damaged.pop(name, None)
            except CheckpointError as e:
                self._mark_damaged(name, e)
        return sorted(self._cache.values(), key=lambda c: (c.step_number, c.created_at, c.id))

    def _mark_damaged(self, name: str, error: CheckpointError) -> None:
        if str(self.damaged.get(name)) != str(error):
            log.warning("%s", error)
        self.damaged[name] = error

    def __len__(self) -> int:
        return len(self.all())

    def latest(self) -> Checkpoint | None:
        found = self.all()
        return found[-1] if found else None

    def get(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint `checkpoint_id`; CheckpointError when it is damaged, KeyError
        when there is none."""
        for c in self.all():
            if c.id == checkpoint_id:
                return c
        if checkpoint_id in self.damaged:
            raise self.damaged[checkpoint_id]
        known = ", ".join(c.id for c in self.all()[-5:]) or "none"
        raise KeyError(f"no checkpoint {checkpoint_id!r} in {self.directory} (latest: {known})")

    def best(self, metric: str = "valid_loss") -> Checkpoint:
        best = best_of(self.all(), metric)
        if best is None:
            raise ValueError(
                f"no checkpoint in {self.directory} has a {metric!r} value"
                + (" (the session has no validation data; try metric='train_loss')"
                   if metric.startswith(("valid", "batch_valid")) and self.all() else "")
            )
        return best

    # -- writing ---------------------------------------------------------------------

    def commit(self, *, phase: str, iteration: int, step_number: int,
               metrics: dict[str, float | None], model_state: dict[str, Any] | None,
               model: dict[str, Any] | None = None,
               optimizer_state: dict[str, Any] | None = None,
               linked_files: dict[str, tuple[Path, dict[str, Any]]] | None = None,
               created_at: float | None = None,
               confusion: list[list[int]] | None = None, partial: bool = False,
               resume: dict[str, Any] | None = None,
               resume_tensors: dict[str, Any] | None = None) -> Checkpoint:
        """Write a checkpoint into a temporary directory, fsync it, then rename it into place.

        `linked_files` maps a file name to (an existing file, its {sha256, size} record):
        it is hard-linked in (copied where links are impossible), so checkpoints that
        share frozen weights store them once.
        """
        from safetensors.torch import save

        name = self._unused_name(f"{step_number:06d}-{phase}" + ("-paused" if partial else ""))
        with directory_committed_as(self.directory / name) as tmp:
            files: dict[str, dict[str, Any]] = {}
            optimizer_record: dict[str, Any] = {}
            blobs: dict[str, bytes] = {}
            if model_state is not None:
                blobs[MODEL_FILE] = save(tensorfiles.savable(model_state))
            if optimizer_state is not None:
                tensors, optimizer_record = _split_optimizer_state(optimizer_state)
                blobs[OPTIMIZER_FILE] = save(tensors)
            if resume_tensors is not None:
                blobs[RESUME_FILE] = save(tensorfiles.savable(resume_tensors))
            for file_name, data in blobs.items():
                write_bytes_durably(tmp / file_name, data)
                files[file_name] = {"sha256": sha256_bytes(data), "size": len(data)}
            for file_name, (source, file_record) in (linked_files or {}).items():
                link_or_copy(source, tmp / file_name)
                files[file_name] = dict(file_record)
            record = {
                "format": FORMAT, "session_id": self.session_id, "phase": phase,
                "iteration": iteration, "step_number": step_number,
                "created_at": created_at if created_at is not None else time.time(),
                "metrics": metrics, "model": model or {}, "optimizer": optimizer_record,
                "files": files, "confusion": confusion,
            }
            if partial:
                record.update(partial=True, resume=resume)
            write_bytes_durably(tmp / RECORD_FILE, schemas.encode_record(record))
        checkpoint = Checkpoint.from_directory(self.directory / name)
        self._cache[name] = checkpoint
        return checkpoint

    def _unused_name(self, name: str) -> str:
        candidate, n = name, 1
        while (self.directory / candidate).exists():
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def delete(self, checkpoint_id: str) -> None:
        """Remove one checkpoint: renamed away first, so it vanishes from listings at once."""
        path = self.directory / checkpoint_id
        trash = self.directory / f".trash-{checkpoint_id}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        fsync_dir(self.directory)
        self._cache.pop(checkpoint_id, None)
        shutil.rmtree(trash, ignore_errors=True)
        remove_derived(self.directory.parent, checkpoint_id)

    def apply_retention(self, keep_last: int | None, keep_best: int = 0,
                        metric: str = "valid_loss") -> list[str]:
        """Delete checkpoints outside the last `keep_last` and the best `keep_best`.

        `keep_last=None` keeps everything. The newest checkpoint is always kept.
        Returns the ids deleted.
        """
        if keep_last is None:
            return []
        found = self.all()
        whole = [c for c in found if not c.partial]  # pause checkpoints are not counted
        keep = {c.id for c in whole[-max(keep_last, 1):]} | {c.id for c in found if c.partial}
        scored = [c for c in whole if is_finite(c.metrics.get(metric))]
        reverse = metric in HIGHER_IS_BETTER
        scored.sort(key=lambda c: c.metrics[metric], reverse=reverse)
        keep |= {c.id for c in scored[:keep_best]}
        doomed = [c.id for c in found if c.id not in keep]
        for checkpoint_id in doomed:
            self.delete(checkpoint_id)
        return doomed


# Folders beside checkpoints/ that hold what was derived from a checkpoint, in a sub-folder
# named by its id (its cached predictions, see predictions.py): deleted with the checkpoint.
DERIVED_DIRS = ("predictions",)


def remove_derived(session_dir: Path, checkpoint_id: str) -> None:
    """Delete what was derived from checkpoint `checkpoint_id`; no link is followed."""
    for name in DERIVED_DIRS:
        folder = Path(session_dir) / name
        if folder.is_symlink() or not folder.is_dir():
            continue
        entry = folder / checkpoint_id
        if entry.is_symlink() or entry.is_file():
            entry.unlink(missing_ok=True)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """fastai optimizer state -> (tensors for safetensors, JSON record of the rest)."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in enumerate(state["state"]):
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    record = {"n_params": len(state["state"]), "scalars": scalars,
              "hypers": [dict(h) for h in state["hypers"]]}
    return tensorfiles.savable(tensors), record
