"""Labelled images: where they come from, which ones are usable, and how they split.

A `DataSource` mirrors Create ML's `MLImageClassifier.DataSource`. It checks every file
when it is made (decoding it fully), so a zero-byte, truncated, corrupt or non-image
file is reported in `skipped` with a reason instead of crashing training later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .images import IMAGE_EXTENSIONS, check_image, is_hidden


@dataclass(frozen=True)
class Item:
    path: Path
    label: str


class DataSource:
    """Labelled image files, checked. Use the class methods to make one."""

    def __init__(self, items: Iterable[Item], origin: str = "images", check: bool = True):
        """`check=False` trusts that every file decodes (a session's split, say, which was
        checked when the session was made), so making the source reads no image."""
        candidates = [Item(Path(i.path), str(i.label)) for i in items]
        if not candidates:
            raise ValueError(f"{origin} contains no files")
        reasons = _check_all([i.path for i in candidates]) if check else [None] * len(candidates)
        self.origin = origin
        self.items: list[Item] = [i for i, r in zip(candidates, reasons) if r is None]
        self.skipped: list[tuple[Path, str]] = [
            (i.path, r) for i, r in zip(candidates, reasons) if r
        ]
        self._skipped_labels = {i.path: i.label for i, r in zip(candidates, reasons) if r}
        self.classes: list[str] = sorted({i.label for i in self.items})
        self._require_usable()

    def _require_usable(self) -> None:
        empty = sorted(set(self._skipped_labels.values()) - set(self.classes))
        if empty:
            reasons = [(p, r) for p, r in self.skipped if self._skipped_labels[p] == empty[0]]
            raise ValueError(
                f"class {empty[0]!r} in {self.origin} has no usable image "
                f"({len(reasons)} file(s) skipped):" + _first_reasons(reasons)
            )
        if len(self.classes) < 2:
            found = f"only {self.classes[0]!r}" if self.classes else "none"
            raise ValueError(
                f"{self.origin} needs at least 2 classes with usable images, found {found} "
                f"({len(self.items)} usable image(s), {len(self.skipped)} skipped)"
            )

    # -- constructors ---------------------------------------------------------------

    @classmethod
    def labeled_directories(cls, path: str | os.PathLike) -> DataSource:
        """One sub-folder per class: `path/cat/*.jpg`, `path/dog/*.jpg` (sub-folders included)."""
        root = _existing_dir(path)
        items = []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p)):
            items += [Item(f, class_dir.name) for f in _files_under(class_dir)]
        return cls(items, origin=str(root))

    @classmethod
    def labeled_files(cls, path: str | os.PathLike) -> DataSource:
        """All images in one folder, labelled by file name.

        The label is the start of the file name up to the first "_", "-", "." or space,
        without trailing digits: `cat_001.jpg`, `cat-7.png`, `cat12.jpg` and `cat.3.jpg`
        are all labelled "cat".
        """
        root = _existing_dir(path)
        items, others = [], []
        for f in sorted(p for p in root.iterdir() if p.is_file() and not is_hidden(p)):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                others.append(f)  # a README.md must not become a class "README" with no image
                continue
            label = label_from_file_name(f.name)
            items.append(Item(f, label if label else f.stem))
        source = cls(items, origin=str(root))
        source.skipped += [(f, check_image(f) or "not an image file") for f in others]
        return source

    @classmethod
    def files_by_label(cls, files: Mapping[str, Sequence[str | os.PathLike]]) -> DataSource:
        """An explicit mapping `{label: [paths]}`; missing files raise FileNotFoundError."""
        items = [Item(Path(p), str(label)) for label, paths in files.items() for p in paths]
        _require_exist(i.path for i in items)
        return cls(items, origin="files_by_label(...)")

    @classmethod
    def from_dataframe(cls, df: Any, path_col: str = "path", label_col: str = "label",
                       root: str | os.PathLike | None = None) -> DataSource:
        """Rows of a pandas DataFrame; relative paths are taken from `root` when given."""
        for col in (path_col, label_col):
            if col not in df.columns:
                raise ValueError(
                    f"the DataFrame has no column {col!r} (columns: {list(df.columns)})"
                )
        base = Path(root) if root is not None else None
        items = [Item(base / p if base is not None else Path(p), str(label))
                 for p, label in zip(df[path_col], df[label_col])]
        _require_exist(i.path for i in items)
        return cls(items, origin=f"DataFrame[{path_col!r}, {label_col!r}]")

    # -- what a user looks at ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"DataSource({self.origin!r}: {len(self)} images, {len(self.classes)} classes"
                f"{f', {len(self.skipped)} skipped' if self.skipped else ''})")

    @property
    def labels(self) -> list[str]:
        return [i.label for i in self.items]

    def summary(self) -> Any:
        """Images per class as a pandas DataFrame (column `images`), skipped files counted too."""
        import pandas as pd

        counts = Counter(self.labels)
        skipped = Counter(self._skipped_labels.values())
        return pd.DataFrame(
            {"images": [counts[c] for c in self.classes],
             "skipped": [skipped[c] for c in self.classes]},
            index=pd.Index(self.classes, name="class"),
        )

    def fingerprint(self) -> str:
        """Changes when any file, label, size or modification time changes."""
        h = hashlib.sha256()
        for i in sorted(self.items, key=lambda i: str(i.path)):
            st = i.path.stat()
            h.update(json.dumps([str(i.path), i.label, st.st_size, st.st_mtime_ns]).encode())
        return h.hexdigest()[:16]


def label_from_file_name(name: str) -> str:
    return re.split(r"[_\-. ]", name, maxsplit=1)[0].rstrip("0123456789")


def split_items(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A stratified split: about `fraction` of each class (at least one) goes to validation.

    A class with a single image stays in training. Same items and seed, same split.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.label, str(i.path))):
        by_label.setdefault(item.label, []).append(item)
    train, valid = [], []
    for group in by_label.values():
        order = rng.permutation(len(group))
        n_valid = 0 if len(group) < 2 else min(len(group) - 1, max(1, round(fraction * len(group))))
        valid += [group[k] for k in order[:n_valid]]
        train += [group[k] for k in order[n_valid:]]
    return train, valid


def _existing_dir(path: str | os.PathLike) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    return root


def _files_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d)))
        found += [Path(dirpath) / f for f in sorted(filenames) if not is_hidden(Path(f))]
    return found


def _require_exist(paths: Iterable[Path]) -> None:
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")


def _check_all(paths: list[Path]) -> list[str | None]:
    # Decoding releases the GIL, so a few threads check a large folder several times faster.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(check_image, paths, chunksize=16))


def _first_reasons(skipped: list[tuple[Path, str]], n: int = 3) -> str:
    lines = [f"\n  {p}: {r}" for p, r in skipped[:n]]
    return "".join(lines)
