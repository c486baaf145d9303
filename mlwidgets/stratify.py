"""Stratified splits into any number of parts (Create ML's `stratifiedSplit(proportions:seed:)`).

A leaf: it needs only each item's `label` and `path`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_proportions(proportions: Sequence[float] | float) -> list[float]:
    """Proportions as a list of fractions in (0, 1] summing to at most 1; ValueError otherwise.

    A single number p means [p, 1 - p]. Proportions summing to less than 1 leave the rest out.
    """
    if isinstance(proportions, (int, float)) and not isinstance(proportions, bool):
        proportions = [float(proportions), 1.0 - float(proportions)]
    values = list(proportions)
    if not values or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                             and 0 < p <= 1 for p in values):
        raise ValueError(f"proportions must be fractions in (0, 1], got {proportions!r}")
    if sum(values) > 1 + 1e-9:
        raise ValueError(f"proportions must sum to at most 1, got {proportions!r} "
                         f"(sum {sum(values):g})")
    return [float(p) for p in values]


def stratified_parts(items: Sequence[Any], proportions: list[float], seed: int) -> list[list[Any]]:
    """`items` dealt into parts of about `proportions` of each class each, at random with
    `seed`. Counts per class are rounded by largest remainder, so a part's share of every
    class is as close as whole images allow. Same items and seed, same parts."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Any]] = {}
    for item in sorted(items, key=lambda i: (i.label, str(i.path))):
        by_label.setdefault(item.label, []).append(item)
    parts: list[list[Any]] = [[] for _ in proportions]
    for group in by_label.values():
        shares = np.array(proportions) * len(group)
        counts = np.floor(shares).astype(int)
        total = min(len(group), round(sum(shares)))
        for k in np.argsort(-(shares - counts), kind="stable")[:total - counts.sum()]:
            counts[k] += 1
        order = rng.permutation(len(group))
        start = 0
        for part, n in zip(parts, counts):
            part += [group[k] for k in order[start:start + n]]
            start += n
    return parts
