"""Safetensors files checked before they are loaded.

`header` reads a file's header within bounds (its size, its JSON, every tensor inside the
file), so nothing larger than the file is ever allocated from what it claims; `mismatch`
compares the tensors with the state dict of the network they are meant for, so a wrong
file is one clear sentence instead of torch's multi-line error after loading.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import CheckpointError
from .jsonfiles import parse_json

MAX_HEADER_BYTES = 16 << 20


def header(data: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors file's bytes; ValueError saying what is
    wrong."""
    if len(data) < 8:
        raise ValueError("shorter than its header")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, MAX_HEADER_BYTES):
        raise ValueError(f"its header claims {size} bytes")
    try:
        found_header = parse_json(data[8:8 + size], "safetensors header", CheckpointError)
    except CheckpointError as e:
        raise ValueError(f"its header is {e.what}") from None
    if not isinstance(found_header, dict):
        raise ValueError("its header is not an object")
    body = len(data) - 8 - size
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in found_header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not (isinstance(dtype, str) and all(isinstance(n, int) and n >= 0
                                                   for n in (*shape, begin, end))):
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"tensor {name[:80]!r} is described wrongly") from None
        if not begin <= end <= body or math.prod(shape) > end - begin:
            raise ValueError(f"tensor {name[:80]!r} lies outside the file")
        found[name] = (dtype, tuple(shape))
    return found


def mismatch(found: dict[str, tuple[int, ...]], expected: dict[str, Any]) -> str | None:
    """What differs between tensors' shapes and a state dict (names and shapes), or None."""
    want = {k: tuple(v.shape) for k, v in expected.items()}
    missing = sorted(set(want) - set(found))
    unexpected = sorted(set(found) - set(want))
    wrong = sorted(k for k in set(want) & set(found) if want[k] != found[k])
    if not (missing or unexpected or wrong):
        return None
    first = (f"no tensor {missing[0]!r}" if missing else
             f"an unexpected tensor {unexpected[0][:80]!r}" if unexpected else
             f"tensor {wrong[0]!r} has shape {list(found[wrong[0]])}, not {list(want[wrong[0]])}")
    count = len(missing) + len(unexpected) + len(wrong)
    return first + (f" (and {count - 1} more)" if count > 1 else "")


def savable(state: dict[str, Any]) -> dict[str, Any]:
    """`state` as tensors safetensors accepts: on the CPU, contiguous, each its whole
    storage and none sharing one. Only those that are not get copied: a checkpoint's
    snapshot (commits.py) already is a copy, and copying a large model's state again would
    double the commit's memory."""
    out: dict[str, Any] = {}
    storages: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if (storage.data_ptr() in storages
                or storage.nbytes() != tensor.numel() * tensor.element_size()):
            tensor = tensor.clone()  # a view of a larger storage, or one shared (tied weights)
        storages.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out
