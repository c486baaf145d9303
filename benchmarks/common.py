"""Helpers shared by the benchmarks: repeated side-by-side timing and the output format.

Every benchmark prints a readable table and, as its last line, one JSON object with
its figures. Ratios come from runs interleaved in one process, so machine noise
hits both sides alike, and compare the best run of each side, as `timeit` does:
interference from other processes only ever adds time. Medians are printed too.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], object]],
                repeats: int) -> dict[str, list[float]]:
    """Wall times of each contender, run in turn `repeats` times (A B, B A, A B, ...).

    The order alternates because whichever runs second after another was measured to pay
    for it (memory the first one freed, its files being written back): a fixed order
    showed a 3-6% difference between identical runs.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        order = list(contenders.items())
        for name, run in order if repeat % 2 == 0 else reversed(order):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def in_thread(run: Callable[[], object]) -> Callable[[], None]:
    """`run` wrapped to execute in a fresh background thread, as training sessions do.

    Under CPU contention torch's OpenMP team in the main thread can be several times
    slower than in a new thread, so both sides of a comparison must use the same kind.
    """
    def wrapped() -> None:
        errors: list[BaseException] = []

        def target() -> None:
            try:
                run()
            except BaseException as e:  # re-raised in the caller
                errors.append(e)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
    return wrapped


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells)]
    for row in [headers, ["-" * w for w in widths], *cells]:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths)))


def print_timings(times: dict[str, list[float]]) -> None:
    """One row per contender: its best and median run, and every run."""
    print_table(["contender", "best s", "median s", "runs (s)"], [
        [name, min(t), median(t), " ".join(f"{x:.2f}" for x in t)]
        for name, t in times.items()])


def ratios(times: dict[str, list[float]], ours: str, theirs: str) -> tuple[float, float]:
    """(best-run ratio, median ratio) of `ours` over `theirs`."""
    return (min(times[ours]) / min(times[theirs]),
            median(times[ours]) / median(times[theirs]))


def print_figures(figures: dict[str, object]) -> None:
    print(json.dumps(figures))
