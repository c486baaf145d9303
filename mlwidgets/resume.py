"""Exact resume: seeding per iteration, and the state a pause inside an iteration keeps.

Every iteration starts from a seed derived from the session's seed, its phase and its
number, so the data order and the augmentations of iteration k do not depend on what
ran before (or in which process). A pause inside an iteration records what the rest of
that iteration needs to run exactly as it would have: the batches already trained, the
iteration's data order, the RNG states of torch, NumPy and Python, and the running
totals of its metrics. Weights and optimizer state are in the checkpoint as always.

What breaks bit-exactness: a different number of training processes, a different torch
thread count or build, and a GPU's nondeterministic kernels (the README says so).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RECORD_VERSION = 1


def iteration_seed(seed: int, phase: str, iteration: int) -> int:
    """The seed iteration `iteration` (0-based; -1 for building the network) of `phase`."""
    return zlib.crc32(f"{seed}:{phase}:{iteration}".encode())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_torch(seed)


def seed_torch(seed: int) -> None:
    """torch.manual_seed, minus its cost where no GPU is: there it queues the CUDA seeding
    for later with a captured stack trace, each call (milliseconds deep inside fastai's
    loop, and a list that grows with every iteration)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class RngStates:
    """torch, NumPy and Python RNG states, as JSON scalars plus tensors (no pickle)."""

    scalars: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def capture(cls) -> RngStates:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return cls(
            scalars={"numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
                     "numpy_cached_gaussian": float(cached), "python_version": version,
                     "python_gauss_next": gauss_next},
            tensors={"torch_rng": torch.get_rng_state().clone(),
                     "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32)
                                                    .astype(np.int64)),
                     "python_state": torch.tensor(internal, dtype=torch.int64)})

    def restore(self) -> None:
        s, t = self.scalars, self.tensors
        torch.set_rng_state(t["torch_rng"].to(torch.uint8))
        np.random.set_state(("MT19937", t["numpy_keys"].numpy().astype(np.uint32),
                             s["numpy_pos"], s["numpy_has_gauss"], s["numpy_cached_gaussian"]))
        random.setstate((s["python_version"], tuple(int(v) for v in t["python_state"].tolist()),
                         s["python_gauss_next"]))


@dataclass
class PausePoint:
    """Where inside iteration `iteration` (0-based) training stopped: after `batch` of its
    `batches` batches, with the data `order` that iteration drew and its running totals."""

    iteration: int
    batch: int
    batches: int
    order: list[int] | None
    totals: dict[str, float | int]
    rng: RngStates
    rank_totals: list[dict[str, float | int]] | None = None  # data-parallel: each worker's

    def to_record(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON for checkpoint.json's "resume", tensors for resume.safetensors)."""
        record = {"version": RECORD_VERSION, "iteration": self.iteration, "batch": self.batch,
                  "batches": self.batches, "totals": dict(self.totals),
                  "rng": dict(self.rng.scalars)}
        if self.rank_totals is not None:
            record["rank_totals"] = [dict(t) for t in self.rank_totals]
        tensors = dict(self.rng.tensors)
        if self.order is not None:
            tensors["order"] = torch.tensor(self.order, dtype=torch.int64)
        return record, tensors

    @classmethod
    def of(cls, checkpoint: Any) -> PausePoint | None:
        """The pause point a partial checkpoint records (None for a whole one)."""
        from .checkpoints import RESUME_FILE

        if checkpoint.resume is None or RESUME_FILE not in checkpoint.files:
            return None
        return cls.from_record(checkpoint.resume, checkpoint.load_tensors(RESUME_FILE))

    @classmethod
    def from_record(cls, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PausePoint:
        if record.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown resume record version {record.get('version')!r}")
        order = tensors.get("order")
        rng = RngStates(dict(record["rng"]),
                        {k: v for k, v in tensors.items() if k != "order"})
        return cls(iteration=int(record["iteration"]), batch=int(record["batch"]),
                   batches=int(record["batches"]),
                   order=None if order is None else order.tolist(),
                   totals=dict(record["totals"]), rng=rng,
                   rank_totals=record.get("rank_totals"))
