"""Data-parallel training: N workers launched by torch's launcher, trained through fastai's
Accelerate integration (`learn.distrib_ctx`), on CPUs (gloo) or GPUs (NCCL).

Rank 0 alone writes the session (checkpoints, events, the record); the others train and
wait at barriers before anything is read back. The session format does not change.
Multi-machine runs are Accelerate's: `accelerate launch --num_machines ...` with the same
`-m mlwidgets.worker SESSION_DIR` (README, "Bigger runs").
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()


def agree(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop that one rank saw)."""
    if not _initialized():
        return flag
    value = torch.tensor([int(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over every rank (metrics' running totals)."""
    if not _initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None elsewhere."""
    if not _initialized():
        return [obj]
    found: list[Any] | None = [None] * world_size() if is_main() else None
    torch.distributed.gather_object(obj, found, dst=0)
    return found


def share(items: list[Any]) -> list[Any]:
    """This worker's share of `items`: every world_size-th one from its rank."""
    return items[rank()::world_size()] if is_distributed() else items


def gather_features(tensors: dict[str, torch.Tensor], n_train: int,
                    n_valid: int) -> dict[str, torch.Tensor] | None:
    """Each worker's extracted `share`s put back in the split's order, on rank 0 (None on
    the others). Training rows come in passes (the plain one, then each augmented view)."""
    if not is_distributed():
        return tensors
    shares = gather_to_main(tensors)
    if shares is None:
        return None
    whole = {}
    for split, n in (("train", n_train), ("valid", n_valid)):
        sizes = [len(range(r, n, len(shares))) for r in range(len(shares))]
        passes = len(shares[0][f"{split}_y"]) // sizes[0] if sizes[0] else 0
        for part in ("x", "y"):
            chunks = [s[f"{split}_{part}"] for s in shares]
            rows = []
            for k in range(passes):  # the inverse of share(), pass by pass: rank r's rows
                placed = torch.empty((n, *chunks[0].shape[1:]), dtype=chunks[0].dtype)
                for r, (chunk, size) in enumerate(zip(chunks, sizes)):
                    placed[r::len(shares)] = chunk[k * size:(k + 1) * size]
                rows.append(placed)
            whole[f"{split}_{part}"] = torch.cat(rows) if rows else chunks[0]
    return whole


def init() -> None:
    """Join the launcher's process group (gloo on CPUs, NCCL on GPUs) once."""
    if is_distributed() and not _initialized():
        if torch.cuda.is_available():
            # NCCL for the training's CUDA tensors, gloo for the CPU tensors that agree(),
            # sum_over_ranks() and the object gathers send (NCCL refuses CPU tensors); each
            # worker on its own GPU before any collective picks one.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            torch.distributed.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            torch.distributed.init_process_group(backend="gloo")
            _broadcast_on_cpu()
        _resumable_distributed_loader()


@contextlib.contextmanager
def data_parallel(learn: Any) -> Iterator[Any]:
    """fastai's `distrib_ctx` when this process is one of several workers, else nothing."""
    if not _initialized():
        yield learn
        return
    with learn.distrib_ctx(sync_bn=False, cpu=not torch.cuda.is_available()):
        yield learn


def inner_loader(dl: Any) -> Any:
    """The loader a DistributedDL wraps (or `dl` itself)."""
    return getattr(dl, "dl", dl)


def real_rows(dl: Any, seen: int, n: int) -> int:
    """How many of the next `n` rows this worker gets are real samples: DistributedDL pads
    the last worker's share by repeating samples, which must not count in metrics."""
    per = getattr(dl, "n_padded", 0) // max(getattr(dl, "world_size", 1), 1)
    if not per:
        return n
    real_here = max(0, min(per, dl.n - dl.rank * per))
    return max(0, min(n, real_here - seen))


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _resumable_distributed_loader() -> None:
    """Let a DistributedDL continue an iteration a pause cut short: the wrapped loader
    gives the whole order again, and this worker skips the batches it trained."""
    from fastai.distributed import DistributedDL

    whole_order = DistributedDL.get_idxs

    def get_idxs(self: Any) -> list[int]:
        inner, skip = self.dl, 0
        if getattr(inner, "resume_at", None) is not None:
            order, skip = inner.resume_at
            inner.resume_at = (order, 0)
        self.skipped_rows = skip * self.bs
        return whole_order(self)[self.skipped_rows:]

    DistributedDL.get_idxs = get_idxs


def _broadcast_on_cpu() -> None:
    """fastai's DistributedDL broadcasts the shuffled order from rank 0 as a CUDA tensor
    ("nccl only works with cuda tensors"), which fails without a GPU. Under gloo the
    same broadcast works on a CPU tensor (our shuffling is seeded alike on every rank,
    so rank 0's order is also every other rank's)."""
    from fastai.distributed import DistributedDL

    def broadcast(self: Any, t: list[int], src: int) -> list[int]:
        values = torch.tensor(t, dtype=torch.int64)
        torch.distributed.broadcast(values, src)
        return values.tolist()

    DistributedDL._broadcast = broadcast


def launcher_command(processes: int, session_dir: str, data_root: str | None = None) -> list[str]:
    """The command that starts `processes` data-parallel workers on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "mlwidgets.worker", session_dir]
    return command + (["--data-root", data_root] if data_root else [])
