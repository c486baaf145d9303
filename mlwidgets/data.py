"""Labelled images: where they come from, which ones are usable, and how they split.

A `DataSource` mirrors Create ML's `MLImageClassifier.DataSource`. It checks every file
when it is made (decoding it fully), so a zero-byte, truncated, corrupt or non-image
file is reported in `skipped` with a reason instead of crashing training later.

Folders are scanned without leaving them: a symlink is followed only when it resolves
inside the data folder and is not a loop (`ln -s . photos/loop` is skipped, not a class of
duplicates); anything else is skipped with its reason, and so is an empty class folder.
Every source records its `roots`, the folders its images come from, so a session can
refuse image paths outside them when it is reopened (see `confine_items`).
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

from .errors import DataError, DataNotFoundError, printable
from .images import IMAGE_EXTENSIONS, check_image, is_hidden

MAX_CLASSES = 10_000


@dataclass(frozen=True)
class Item:
    path: Path
    label: str


class DataSource:
    """Labelled image files, checked. Use the class methods to make one."""

    def __init__(self, items: Iterable[Item], origin: str = "images", check: bool = True,
                 roots: Sequence[str | os.PathLike] | None = None):
        """`check=False` trusts that every file decodes (a session's split, say, which was
        checked when the session was made), so making the source reads no image. `roots`
        are the folders the images come from (default: their common folders)."""
        candidates = [Item(Path(i.path), str(i.label)) for i in items]
        if not candidates:
            raise DataError("no files", origin, "add images, one folder per class")
        labels = {i.label for i in candidates}
        if len(labels) > MAX_CLASSES:
            raise DataError(f"{len(labels)} classes, more than the {MAX_CLASSES} allowed",
                            origin, "group the images into fewer classes")
        reasons = _check_all([i.path for i in candidates]) if check else [None] * len(candidates)
        self.origin = origin
        self.roots: list[Path] = ([Path(r) for r in roots] if roots is not None
                                  else common_folders(i.path for i in candidates))
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
        scan = _Scan(root)
        items, empty = [], []
        for class_dir in scan.folders(root):
            found = scan.files_under(class_dir)
            items += [Item(f, class_dir.name) for f in found]
            if not found:
                empty.append((class_dir, "empty class folder (no files): not a class"))
        source = cls(items, origin=str(root), roots=[root])
        source.skipped += empty + scan.skipped
        return source

    @classmethod
    def labeled_files(cls, path: str | os.PathLike) -> DataSource:
        """All images in one folder, labelled by file name.

        The label is the start of the file name up to the first "_", "-", "." or space,
        without trailing digits: `cat_001.jpg`, `cat-7.png`, `cat12.jpg` and `cat.3.jpg`
        are all labelled "cat".
        """
        root = _existing_dir(path)
        scan = _Scan(root)
        items, others = [], []
        for f in scan.files_in(root):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                others.append(f)  # a README.md must not become a class "README" with no image
                continue
            label = label_from_file_name(f.name)
            items.append(Item(f, label if label else f.stem))
        source = cls(items, origin=str(root), roots=[root])
        source.skipped += [(f, check_image(f) or "not an image file") for f in others]
        source.skipped += scan.skipped
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

    def with_decisions(self, decisions: Any) -> DataSource:
        """These images with keep / relabel / exclude decisions applied (a session's
        `decisions`, or a mapping of image path to {"action": "exclude"} or {"action":
        "relabel", "label": "cat"}); "keep" and undecided images stay as they are."""
        found = decisions.all() if hasattr(decisions, "all") else dict(decisions)
        table = {str(Path(k)): v for k, v in found.items()}
        items, changed = [], 0
        for item in self.items:
            decision = table.get(str(item.path)) or {"action": "keep"}
            if decision["action"] == "exclude":
                changed += 1
            elif decision["action"] == "relabel" and decision["label"] != item.label:
                items.append(Item(item.path, str(decision["label"])))
                changed += 1
            else:
                items.append(item)
        return DataSource(items, origin=f"{self.origin} ({changed} decisions applied)",
                          check=False, roots=self.roots)

    def find_data_problems(self, feature_extractor: str = "efficientnet_lite0",
                           image_size: int = 128,
                           **options: Any) -> Any:
        """Possible label errors, duplicates and outliers among these images, from features
        that `feature_extractor` extracts (see mlwidgets.problems; `options` go to it)."""
        if DataSource.problem_finder is None:
            raise RuntimeError("import mlwidgets first: it provides the problem finder")
        return DataSource.problem_finder(self, feature_extractor, image_size, **options)

    # Set by mlwidgets.scan, which sits above this module (it extracts features).
    problem_finder: Any = None

    def stratified_split(self, proportions: Sequence[float] | float,
                         seed: int = 0) -> list[DataSource]:
        """DataSources holding about `proportions` of each class each (Create ML's
        `stratifiedSplit(proportions:seed:)`), e.g. `train, test = data.stratified_split([0.8,
        0.2], seed=5)`. One number p means [p, 1 - p]; proportions summing to less than 1 leave
        the rest out. Same data and seed, same split. A part that would hold fewer than 2
        classes is refused (ValueError)."""
        from .stratify import check_proportions, stratified_parts

        fractions = check_proportions(proportions)
        parts = stratified_parts(self.items, fractions, seed)
        sources = []
        for n, (fraction, items) in enumerate(zip(fractions, parts), 1):
            if len({i.label for i in items}) < 2:
                raise ValueError(f"part {n} of the split ({fraction:g} of {len(self)} images) "
                                 "would hold fewer than 2 classes; use a larger proportion")
            sources.append(DataSource(items, origin=f"{self.origin} (part {n}, {fraction:g})",
                                      check=False, roots=self.roots))
        return sources


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
        raise DataNotFoundError("no such folder", root, "check the path")
    if not root.is_dir():
        raise DataError("not a folder", root, "give the folder that holds one folder per class")
    return root


class _Scan:
    """Walks a data folder: follows a symlink only when it resolves inside the folder and
    is not a loop; everything else it skips lands in `skipped`, with the reason."""

    def __init__(self, root: Path):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.skipped: list[tuple[Path, str]] = []

    def _follow(self, entry: os.DirEntry, chain: tuple[str, ...]) -> str | None:
        """The real path of a usable entry, or None (skipped, with its reason)."""
        path = Path(entry.path)
        if not entry.is_symlink():
            return os.path.join(chain[-1], entry.name) if chain else entry.path
        real = os.path.realpath(path)
        if not os.path.exists(real):
            self.skipped.append((path, "a broken symlink"))
        elif not _inside(real, self.real_root):
            self.skipped.append((path, "a symlink to outside the data folder: not followed"))
        elif any(_inside(folder, real) for folder in (self.real_root, *chain)):
            self.skipped.append((path, "a symlink loop (it points to a folder above it): "
                                       "not followed"))
        else:
            return real
        return None

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as found:
                return sorted((e for e in found if not is_hidden(Path(e.name))),
                              key=lambda e: e.name)
        except OSError as e:
            self.skipped.append((folder, f"cannot be read ({e.strerror})"))
            return []

    def folders(self, folder: Path) -> list[Path]:
        """The usable sub-folders of `folder` (the classes, at the top)."""
        found = []
        for entry in self._entries(folder):
            if entry.is_dir() and self._follow(entry, ()) is not None:
                found.append(Path(entry.path))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                self._follow(entry, ())  # records the broken link
        return found

    def files_in(self, folder: Path) -> list[Path]:
        """The usable files directly in `folder`."""
        found = []
        for entry in self._entries(folder):
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                if entry.is_dir():
                    continue
                if self._follow(entry, ()) is not None:
                    found.append(Path(entry.path))
        return found

    def files_under(self, folder: Path) -> list[Path]:
        """Every usable file below `folder`, sub-folders included, never twice round a loop."""
        start = os.path.realpath(folder)
        if not _inside(start, self.real_root):
            return []
        found: list[Path] = []
        pending = [(folder, (start,))]
        while pending:
            current, chain = pending.pop()
            subfolders = []
            for entry in self._entries(current):
                path = Path(entry.path)
                if entry.is_dir():
                    real = self._follow(entry, chain)
                    if real is not None:
                        subfolders.append((path, (*chain, real)))
                elif entry.is_file() or entry.is_symlink():
                    if entry.is_symlink() and self._follow(entry, chain) is None:
                        continue
                    if not entry.is_file():
                        self.skipped.append((path, "not a regular file (a FIFO, device or "
                                                   "socket)"))
                        continue
                    found.append(path)
                else:
                    self.skipped.append((path, "not a regular file (a FIFO, device or "
                                               "socket)"))
            pending += reversed(subfolders)
        return found


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def common_folders(paths: Iterable[Path], most: int = 16) -> list[Path]:
    """The folders `paths` live in, as few as cover them all: their common folder, or
    (files from unrelated places) the distinct top folders, at most `most` of them."""
    parents = sorted({os.path.abspath(os.path.dirname(p)) for p in paths})
    if not parents:
        return []
    common = os.path.commonpath(parents)
    if common != os.path.dirname(common) or len(parents) == 1:
        return [Path(common)]
    tops: list[str] = []
    for parent in parents:  # sorted, so a folder comes before what is below it
        if not any(_inside(parent, top) for top in tops):
            tops.append(parent)
    return [Path(p) for p in tops[:most]] if len(tops) <= most else [Path(common)]


def confine_items(items: Sequence[Item], roots: Sequence[str | os.PathLike],
                  data_root: str | os.PathLike | None = None, where: Any = "data.json"
                  ) -> list[Item]:
    """A session's recorded items, each checked to lie inside its recorded data `roots`.

    With `data_root`, paths are rebased: the part below their recorded root is taken from
    `data_root` instead (images moved, or a session someone sent you). A path outside every
    root (`/etc/shadow`, `photos/../../x`) raises DataError naming it and the file."""
    bases = [os.path.normpath(os.path.abspath(r)) for r in roots]
    target = os.path.normpath(os.path.abspath(os.path.expanduser(data_root))) \
        if data_root is not None else None
    confined = []
    for item in items:
        path = os.path.normpath(os.path.abspath(item.path))
        base = next((b for b in bases if _inside(path, b)), None)
        if base is None or ".." in Path(item.path).parts:
            raise DataError(
                f"image {printable(item.path)} lies outside the session's data folders "
                f"({', '.join(printable(b) for b in bases) or 'none recorded'})", where,
                "open it with TrainingSession.restore(dir, data_root='your/images') to "
                "take the images from your own folder")
        if target is not None:
            path = os.path.join(target, os.path.relpath(path, base))
        confined.append(Item(Path(path), item.label))
    return confined


def recorded_split(record: dict[str, Any], data_root: str | os.PathLike | None = None,
                   where: Any = "data.json") -> tuple[list[Item], list[Item]]:
    """The (train, valid) items of a session's validated data.json record, confined to its
    data roots (or rebased onto `data_root`). Sessions of older versions recorded no roots:
    theirs are the folders the images share, which must not be the file system's root."""
    train = [Item(Path(p), label) for p, label in record["train"]]
    valid = [Item(Path(p), label) for p, label in record["valid"]]
    roots = record.get("roots") or common_folders(i.path for i in train + valid)
    for root in roots:
        absolute = os.path.abspath(root)
        if absolute == os.path.dirname(absolute):
            raise DataError(f"the session's images lie in unrelated folders ({printable(root)} "
                            "would be their common folder)", where,
                            "open it with TrainingSession.restore(dir, data_root='your/images')")
    return (confine_items(train, roots, data_root, where),
            confine_items(valid, roots, data_root, where))


def _require_exist(paths: Iterable[Path]) -> None:
    for p in paths:
        if not p.exists():
            raise DataNotFoundError("no such image file", p, "check the path")


def _check_all(paths: list[Path]) -> list[str | None]:
    # Decoding releases the GIL, so a few threads check a large folder several times faster.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(check_image, paths, chunksize=16))


def _first_reasons(skipped: list[tuple[Path, str]], n: int = 3) -> str:
    lines = [f"\n  {p}: {r}" for p, r in skipped[:n]]
    return "".join(lines)
