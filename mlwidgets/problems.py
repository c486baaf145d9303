"""Possible problems in labelled images, found from their features (one vector per image).

Methods (each documented where a user reads the report):

- **Label errors**: confident learning (cleanlab's `find_label_issues`) on out-of-fold
  predicted probabilities: a logistic regression over the features, trained on `folds`
  stratified folds, predicts each image it never saw. Images are ranked by cleanlab's
  self-confidence label quality (the out-of-fold probability of the given label), lowest
  first; `label_issues` holds those confident learning flags, `ranking` every image.
- **Duplicates**: exact duplicates have the same file bytes (sha256); near-duplicates have
  a cosine similarity of at least `NEAR_DUPLICATE_SIMILARITY` between their mean-centred
  features (centring removes what every image shares; measured on the shapes at 64 px, a
  copy resized by 6% and saved as JPEG scores 0.91, the most similar different images 0.85).
  A pair across the
  training / validation split is marked: the validation score overstates what the model
  learned.
- **Outliers**: cleanlab's `OutOfDistribution` score on the features' leading principal
  components: the average cosine distance to an image's `OUTLIER_NEIGHBOURS` nearest
  neighbours, mapped to 0..1 (lower is stranger); the `max_outliers` lowest are reported.

Engine code: numpy, scikit-learn and cleanlab; no file is read here except to hash images.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NEAR_DUPLICATE_SIMILARITY = 0.9
OUTLIER_NEIGHBOURS = 10
# The label model works in at most this many dimensions, and about one per 10 images (at
# least 8): more would let it fit the wrong labels of a small set (measured: with 83 images,
# 64 dimensions ranked 4 planted flips 1st, 4th, 10th and 21st; 8 to 32 ranked them 1st-4th).
PCA_DIMENSIONS = 64


@dataclass(frozen=True)
class LabelIssue:
    path: Path
    label: str  # the label it has
    suggested: str  # the label the out-of-fold model gives it
    quality: float  # out-of-fold probability of its label (low: likely wrong)
    split: str  # "train" or "valid"
    index: int


@dataclass(frozen=True)
class Duplicate:
    a: Path
    b: Path
    similarity: float  # cosine similarity of centred features (1.0 for exact copies)
    exact: bool  # the same file bytes
    across_split: bool  # one in training, one in validation


@dataclass(frozen=True)
class Outlier:
    path: Path
    label: str
    score: float  # 0..1, lower is stranger
    split: str
    index: int


@dataclass(frozen=True, eq=False)
class DataReport:
    """What `find_data_problems` found. Each list is ordered most suspicious first."""

    label_issues: list[LabelIssue] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    outliers: list[Outlier] = field(default_factory=list)
    ranking: list[int] = field(default_factory=list)  # every image, likeliest label error first
    paths: list[Path] = field(default_factory=list)

    @property
    def across_split(self) -> list[Duplicate]:
        return [d for d in self.duplicates if d.across_split]

    @property
    def counts(self) -> dict[str, int]:
        return {"label_issues": len(self.label_issues), "duplicates": len(self.duplicates),
                "across_split": len(self.across_split), "outliers": len(self.outliers)}

    def summary(self) -> str:
        c = self.counts
        return (f"{c['label_issues']} possible label errors, {c['duplicates']} duplicate pairs "
                f"({c['across_split']} across the training/validation split), "
                f"{c['outliers']} outliers among {len(self.paths)} images")

    def __repr__(self) -> str:
        return f"DataReport({self.summary()})"


def find_problems(features: np.ndarray, labels: Sequence[str], classes: Sequence[str],
                  paths: Sequence[Path], splits: Sequence[str] | None = None, *,
                  hashes: Sequence[str] | None = None, folds: int = 5, seed: int = 0,
                  similarity: float = NEAR_DUPLICATE_SIMILARITY,
                  max_outliers: int = 10) -> DataReport:
    """Every kind of problem among images given one feature row per image."""
    x = np.asarray(features, dtype=np.float32)
    if len(x) != len(labels) or len(x) != len(paths):
        raise ValueError(f"{len(x)} feature rows for {len(labels)} labels and {len(paths)} paths")
    splits = list(splits) if splits is not None else ["train"] * len(x)
    paths = [Path(p) for p in paths]
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    centred = _unit(x - x.mean(axis=0, keepdims=True)) if len(x) else x
    components = principal_components(centred, seed)
    probs = out_of_fold_probabilities(components, y, len(classes), folds, seed)
    issues, ranking = label_issues(probs, y)
    return DataReport(
        label_issues=[LabelIssue(paths[i], labels[i], classes[int(probs[i].argmax())],
                                 float(probs[i, y[i]]), splits[i], int(i)) for i in issues],
        duplicates=duplicates(centred, paths, splits, hashes, similarity),
        outliers=outliers(_unit(components), labels, paths, splits, max_outliers),
        ranking=[int(i) for i in ranking], paths=paths)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def principal_components(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The first PCA_DIMENSIONS principal components of `x` (most variance first): the
    label model and the outlier score work in them, 20x fewer numbers than the features."""
    from sklearn.decomposition import PCA

    dims = min(PCA_DIMENSIONS, x.shape[1], max(len(x) - 1, 1))
    if len(x) < 3 or dims >= x.shape[1]:
        return x
    return PCA(dims, svd_solver="randomized", iterated_power=2,
               random_state=seed).fit_transform(x)


def out_of_fold_probabilities(components: np.ndarray, y: np.ndarray, n_classes: int,
                              folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each image's class probabilities from a logistic regression that never saw it,
    over the leading principal components (see principal_components)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    k = int(min(folds, counts[counts > 0].min())) if len(y) else 0
    probs = np.full((len(y), n_classes), 1.0 / max(n_classes, 1))
    if k < 2:  # a class with one image: nothing can be predicted out of fold
        return probs
    z = components[:, :max(8, len(y) // 10)]
    z = z / (z.std(axis=0, keepdims=True) + 1e-6)
    for fit, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(z, y):
        model = LogisticRegression(max_iter=500, C=0.5)
        model.fit(z[fit], y[fit])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(z[held])
        missing = np.setdiff1d(np.arange(n_classes), model.classes_)
        probs[np.ix_(held, missing)] = 0.0
    return probs


def label_issues(probs: np.ndarray, y: np.ndarray) -> tuple[list[int], list[int]]:
    """(images confident learning flags, every image), each likeliest error first."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if len(y) == 0 or len(np.unique(y)) < 2:
        return [], list(range(len(y)))
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    ranking = [int(i) for i in np.argsort(quality, kind="stable")]
    flagged = set(int(i) for i in np.flatnonzero(find_label_issues(y, probs)))
    return [i for i in ranking if i in flagged], ranking


def file_hashes(paths: Sequence[Path]) -> list[str]:
    """sha256 of each file's bytes ('' for a file that cannot be read)."""
    out = []
    for path in paths:
        try:
            out.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError:
            out.append("")
    return out


def duplicates(centred: np.ndarray, paths: Sequence[Path], splits: Sequence[str],
               hashes: Sequence[str] | None, threshold: float,
               chunk: int = 1024) -> list[Duplicate]:
    """Exact duplicates by hash and near-duplicates by feature similarity, most similar first."""
    found: dict[tuple[int, int], Duplicate] = {}

    def add(i: int, j: int, similarity: float, exact: bool) -> None:
        found[(i, j)] = Duplicate(paths[i], paths[j], similarity, exact, splits[i] != splits[j])

    if hashes is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            if h:
                groups[h].append(i)
        for members in groups.values():
            for n, i in enumerate(members):
                for j in members[n + 1:]:
                    add(i, j, 1.0, True)
    for start in range(0, len(centred), chunk):
        sims = centred[start:start + chunk] @ centred.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < j and (i, j) not in found:
                add(i, j, float(sims[r, j]), False)
    return sorted(found.values(), key=lambda d: (not d.exact, -d.similarity, str(d.a)))


def outliers(centred: np.ndarray, labels: Sequence[str], paths: Sequence[Path],
             splits: Sequence[str], most: int) -> list[Outlier]:
    """The `most` strangest images by cleanlab's nearest-neighbour outlier score."""
    from cleanlab.outlier import OutOfDistribution

    if len(centred) <= OUTLIER_NEIGHBOURS + 1 or most <= 0:
        return []
    ood = OutOfDistribution(params={"k": OUTLIER_NEIGHBOURS})
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints what it fits
        scores = ood.fit_score(features=centred.astype(np.float32))
    order = np.argsort(scores, kind="stable")[:most]
    return [Outlier(paths[i], labels[i], float(scores[i]), splits[i], int(i)) for i in order]


def precision_recall_at(ranking: Sequence[int], truth: set[int], k: int) -> tuple[float, float]:
    """(precision@k, recall@k) of a ranking against the truly wrong images."""
    top = set(list(ranking)[:k])
    hits = len(top & truth)
    return hits / max(k, 1), hits / max(len(truth), 1)


def as_dicts(items: Sequence[Any]) -> list[dict[str, Any]]:
    """A report's entries as plain dicts (for pandas: `pd.DataFrame(as_dicts(...))`)."""
    from dataclasses import asdict

    return [asdict(item) for item in items]
