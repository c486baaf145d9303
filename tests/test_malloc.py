"""glibc malloc tuning: once per process, opt-out by environment, and fewer page faults.

Tuning is process-wide, so each case runs in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from mlwidgets import malloc

GLIBC = sys.platform.startswith("linux") and malloc._glibc() is not None

# 64 MiB is above the most glibc's dynamic mmap threshold ever reaches (32 MiB), so by
# default every such tensor is mapped, touched page by page and unmapped again; tuned, it
# comes from the heap and stays there. The main thread's heap has no size limit.
PROBE = """
    import json, resource, torch
    from mlwidgets import malloc
    first, second = malloc.tune_for_training(), malloc.tune_for_training()

    def allocate():
        for _ in range(10):
            buffer = torch.ones(16 << 20)  # 64 MiB of float32, every page written
            del buffer

    allocate()  # let glibc's own thresholds settle first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    allocate()
    print(json.dumps({"first": first, "second": second, "settings": malloc.applied_settings(),
                      "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(**env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tuned() -> dict:
    return probe(MLWIDGETS_MALLOC_TUNING="1")


@pytest.fixture(scope="module")
def untuned() -> dict:
    return probe(MLWIDGETS_MALLOC_TUNING="0")


@pytest.mark.skipif(not GLIBC, reason="malloc tuning is for Linux with glibc")
def test_tuning_applies_once_per_process(tuned: dict) -> None:
    assert (tuned["first"], tuned["second"]) == (True, False)
    assert tuned["settings"]["trim_threshold"] == malloc.TRIM_THRESHOLD
    assert tuned["settings"]["mmap_threshold"] in (malloc.MMAP_THRESHOLD,
                                                   malloc.FALLBACK_MMAP_THRESHOLD)


def test_environment_variable_turns_tuning_off(untuned: dict) -> None:
    assert (untuned["first"], untuned["second"]) == (False, False)
    assert untuned["settings"] == {}


@pytest.mark.skipif(not GLIBC, reason="malloc tuning is for Linux with glibc")
def test_tuning_removes_the_page_faults_of_repeated_large_buffers(tuned: dict,
                                                                   untuned: dict) -> None:
    if tuned["settings"]["mmap_threshold"] < 64 << 20:
        pytest.skip("this glibc caps the mmap threshold below the probe's 64 MiB buffers")
    pages = 10 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert untuned["faults"] > pages / 2  # glibc's default: the buffers are mapped afresh
    assert tuned["faults"] < untuned["faults"] / 20


def test_does_nothing_where_it_should_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_tuned", False)
    monkeypatch.setenv(malloc.ENV_VAR, "0")
    assert malloc.tune_for_training() is False and malloc._tuned is False
    monkeypatch.delenv(malloc.ENV_VAR)
    monkeypatch.setattr(malloc, "_glibc", lambda: None)  # macOS, Windows, musl
    assert malloc.tune_for_training() is False and malloc._tuned is False
    assert malloc.release_free_memory() is False


def test_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise OSError("no C library here")

    monkeypatch.setattr(malloc, "_tuned", False)
    monkeypatch.delenv(malloc.ENV_VAR, raising=False)
    monkeypatch.setattr(malloc, "_glibc", broken)
    assert malloc.tune_for_training() is False
    assert malloc.release_free_memory() is False
