"""glibc malloc thresholds for a training process.

Why: with glibc's defaults, a buffer above the mmap threshold (128 KiB at first, raised
dynamically up to 32 MiB) gets its own `mmap` and is unmapped again on `free`, and free
memory at the top of a heap beyond the trim threshold is given back to the kernel at
once. A training step allocates and frees the same batch-sized tensors (inputs,
activations, gradients) every time, so each step maps fresh pages and touches them: one
minor page fault per 4 KiB page. For the demo's small CNN that is 35,000-115,000 faults an
epoch and epochs 1.07-1.2x slower (benchmarks/image_cache.py); larger models fault more.
Raising both thresholds lets freed buffers stay in the heap and be reused by the next step.

The trade-off: memory freed by the process is returned to the kernel later (when the
free top of a heap exceeds the trim threshold, or at `release_free_memory()`), so after a
peak the resident size stays higher than the live data. The peak itself hardly grows:
what is kept is memory the process already used and will reuse. The setting is
process-wide, so in a notebook it lasts for the kernel's life; set
`MLWIDGETS_MALLOC_TUNING=0` to keep glibc's defaults. Nothing happens on other platforms
or C libraries (macOS, Windows, musl), and nothing here ever raises.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "MLWIDGETS_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
MiB = 1 << 20
# Above any batch-sized buffer of the models here (a 64 x 64 x 112 x 112 float activation,
# resnet's first, is 196 MiB), so those come from the heap and are reused. Heaps of threads
# other than the main one are at most 64 MiB, so there larger buffers are mapped anyway.
MMAP_THRESHOLD = 256 * MiB
# Older glibc refuses more than 32 MiB on 64-bit (man mallopt: DEFAULT_MMAP_THRESHOLD_MAX).
FALLBACK_MMAP_THRESHOLD = 32 * MiB
# Free memory a heap keeps at its top before returning it: covers one step's transient
# buffers for the small and mid-sized models trained here. The cost is this much memory,
# at most, per malloc arena staying mapped after a peak instead of going back to the kernel.
TRIM_THRESHOLD = 512 * MiB

_lock = threading.Lock()
_tuned = False
_applied: dict[str, int] = {}


def tune_for_training() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if this call did.

    False when already done, when `MLWIDGETS_MALLOC_TUNING=0`, on anything but Linux with
    glibc, or if glibc refuses (logged at debug level). Never raises.
    """
    global _tuned
    try:
        with _lock:
            if _tuned or not enabled():
                return False
            libc = _glibc()
            if libc is None:
                return False
            _tuned = True  # once, whatever glibc answers: a refusal will not change
            for name, param, values in (
                ("mmap_threshold", M_MMAP_THRESHOLD, (MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)),
                ("trim_threshold", M_TRIM_THRESHOLD, (TRIM_THRESHOLD,)),
            ):
                value = _set(libc, param, values)
                if value is not None:
                    _applied[name] = value
            return bool(_applied)
    except Exception as e:  # ctypes or loader trouble must never stop a training run
        log.debug("malloc tuning skipped: %r", e)
        return False


def applied_settings() -> dict[str, int]:
    """What `tune_for_training` set in this process, e.g. {"mmap_threshold": 268435456, ...}."""
    return dict(_applied)


def release_free_memory() -> bool:
    """Give freed heap memory back to the kernel now (glibc `malloc_trim(0)`), e.g. after a run.

    True if glibc released something. Never raises; False where there is no glibc.
    """
    try:
        libc = _glibc()
        return bool(libc is not None and libc.malloc_trim(0))
    except Exception as e:
        log.debug("malloc_trim skipped: %r", e)
        return False


def enabled() -> bool:
    """False when the environment says `MLWIDGETS_MALLOC_TUNING=0` (or false/no/off)."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in {"0", "false", "no", "off"}


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the C library this process already uses
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and other C libraries
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _set(libc: Any, param: int, values: tuple[int, ...]) -> int | None:
    """The first of `values` glibc accepts for `param`, or None."""
    for value in values:
        if libc.mallopt(param, value) == 1:
            return value
        log.debug("mallopt(%d, %d) refused by glibc", param, value)
    return None
