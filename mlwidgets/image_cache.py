"""Decoded-image cache: decode and resize every image once, then feed batches from RAM.

Decoding a PNG or JPEG and resizing it costs far more than a small model's step on it,
so a dataset that fits a memory budget is decoded once, in parallel threads (PIL releases
the GIL), into one uint8 tensor (N, 3, S, S). A batch is then one `index_select` and one
float conversion, with no per-item Python work. The values are exactly what
`loaders.ImageDataset` gives for the same item.

Both loaders here are fastai `DataLoader`s, so a `Learner` uses them as it uses any
other (len, iteration, `to(device)`, `one_batch`, `new`, `get_preds`). Shuffling draws
from torch's global RNG, so `fastai.torch_core.set_seed` before `fit` fixes the order,
and a streaming and a cached loader shuffle alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fastai.data.load import DataLoader
from fastcore.basics import chunked

from .images import load_array

if TYPE_CHECKING:
    from .data import Item

MiB = 1 << 20
MAX_DEFAULT_CACHE_MB = 2048
PROGRESS_INTERVAL = 0.1  # seconds between progress calls while decoding
_CHUNK = 32  # images per decoding task: few futures for large folders, still balanced

Progress = Callable[[int, int], object]


def default_cache_mb() -> float:
    """The default budget in MiB: a quarter of the memory this process may use (physical
    memory, or the container's cgroup limit when lower: Binder's 2 GB, say), at most 2048."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        physical = 0
    limits = [b for b in (physical, cgroup_memory_limit()) if b and b > 0]
    if not limits:
        return float(MAX_DEFAULT_CACHE_MB)
    return min(float(MAX_DEFAULT_CACHE_MB), min(limits) / 4 / MiB)


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_memory_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                        proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int | None:
    """The tightest memory limit, in bytes, of this process's cgroups (v2 `memory.max`,
    v1 `memory.limit_in_bytes`, its own and its ancestors'), or None when there is none."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    base, candidates = Path(root), []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: one unified hierarchy
            folder, name = base, "memory.max"
        elif "memory" in controllers.split(","):
            folder, name = base / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        # The process's own cgroup and every ancestor (a container sees its own as "/").
        candidates += [folder.joinpath(*parts[:n], name) for n in range(len(parts), -1, -1)]
    limits = []
    for file in candidates:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < _UNLIMITED:
            limits.append(int(text))
    return min(limits) if limits else None


def cache_bytes(n_images: int, image_size: int) -> int:
    """Bytes the decoded pixels of `n_images` take (uint8 RGB, image_size squared)."""
    return n_images * 3 * image_size * image_size


def fits_in_cache(n_images: int, image_size: int, cache_mb: float | None) -> bool:
    """Whether `n_images` decoded images fit `cache_mb` MiB (None: `default_cache_mb()`)."""
    budget = default_cache_mb() if cache_mb is None else cache_mb
    if not budget >= 0:  # also rejects NaN
        raise ValueError(f"cache_mb must be >= 0 or None, got {cache_mb!r}")
    return budget > 0 and cache_bytes(n_images, image_size) <= budget * MiB


class DecodedImages:
    """Images decoded once: `pixels` (N, 3, S, S) uint8 and `labels` (N,) int64, in order."""

    def __init__(self, items: Sequence[Item], classes: Sequence[str], image_size: int,
                 pixels: torch.Tensor, labels: torch.Tensor):
        self.items, self.classes, self.image_size = list(items), list(classes), image_size
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.pixels[i].float().div_(255), int(self.labels[i])

    def split(self, n: int) -> tuple[DecodedImages, DecodedImages]:
        """The first `n` images and the rest, sharing this cache's memory."""
        return (DecodedImages(self.items[:n], self.classes, self.image_size,
                              self.pixels[:n], self.labels[:n]),
                DecodedImages(self.items[n:], self.classes, self.image_size,
                              self.pixels[n:], self.labels[n:]))

    def batch(self, indices: torch.Tensor,
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `indices` as floats in 0..1 and their labels, converted on `device`."""
        pixels = self.pixels.index_select(0, indices)
        labels = self.labels.index_select(0, indices)
        if device is not None and device.type != "cpu":
            # uint8 crosses the bus: a quarter of the bytes; the conversion runs on the device.
            pixels, labels = pixels.to(device), labels.to(device)
        return pixels.float().div_(255), labels


def decode_images(items: Sequence[Item], classes: Sequence[str], image_size: int,
                  progress: Progress | None = None,
                  workers: int | None = None) -> DecodedImages:
    """Decode and resize `items` with `images.load_array` into one DecodedImages.

    `progress(done, total)` is called from this thread, at most every 0.1 s, first with
    0 and last with total; an exception it raises stops the decoding and propagates (a
    way to cancel). A file that cannot be decoded raises what `load_array` raises
    (ValueError naming the file; FileNotFoundError for a missing one).
    """
    n = len(items)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[i.label] for i in items], dtype=torch.int64)
    pixels = np.empty((n, 3, image_size, image_size), dtype=np.uint8)

    def decode(start: int) -> int:
        stop = min(start + _CHUNK, n)
        for k in range(start, stop):
            pixels[k] = load_array(items[k].path, image_size).transpose(2, 0, 1)
        return stop - start

    if progress is not None:
        progress(0, n)
    # One thread a core: more only add GIL hand-offs (measured on 64 and 256 px PNGs).
    workers = workers or min(8, _cores())
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlwidgets-decode")
    try:
        pending = {pool.submit(decode, start) for start in range(0, n, _CHUNK)}
        done_count, last_report = 0, time.monotonic()
        while pending:
            finished, pending = wait(pending, timeout=PROGRESS_INTERVAL,
                                     return_when=FIRST_EXCEPTION)
            for future in finished:
                done_count += future.result()  # re-raises a decoding error here
            now = time.monotonic()
            if progress is not None and pending and now - last_report >= PROGRESS_INTERVAL:
                progress(done_count, n)
                last_report = now
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if progress is not None and n:
        progress(n, n)
    return DecodedImages(items, classes, image_size, torch.from_numpy(pixels), labels)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class SeededDataLoader(DataLoader):
    """fastai's DataLoader, shuffled from torch's global RNG (so `set_seed` fixes the order).

    fastai's own shuffle uses a `random.Random` seeded when the loader is made, which a
    `set_seed` just before `fit` does not reach.
    """

    # A pause inside an iteration resumes it: (that iteration's order, batches to skip).
    resume_at: tuple[list[int], int] | None = None
    order: list[int] | None = None  # the order of the pass in progress (for a pause)

    def shuffle_fn(self, idxs: Sequence[Any]) -> list[Any]:
        return [idxs[i] for i in torch.randperm(len(idxs)).tolist()]

    def get_idxs(self) -> list[Any]:
        if self.resume_at is not None:
            (order, skip), self.resume_at = self.resume_at, None
            self.order = list(order)
            return self.order[skip * self.bs:]
        self.order = list(super().get_idxs())
        return self.order


class TensorRows:
    """Rows of in-memory tensors (features and labels, say) as a dataset that
    `GatheringDataLoader` batches with one index per tensor."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def batch(self, indices: torch.Tensor,
              device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(t.index_select(0, indices).to(device or "cpu") for t in self.tensors)


class GatheringDataLoader(SeededDataLoader):
    """Batches gathered from a dataset with `batch(indices, device)` (`DecodedImages`,
    `TensorRows`): one index per batch instead of a Python call and a collate per item."""

    def create_batches(self, samps: Any) -> Any:
        for chunk in chunked(samps, self.bs, self.drop_last):
            yield self.dataset.batch(torch.tensor(chunk, dtype=torch.int64), self.device)

