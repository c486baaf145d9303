"""What changed between two checkpoints: per-class precision / recall / F1 and which
validation images changed their prediction.

`session.compare(a, b)` resolves both checkpoints, takes each one's predictions from the
session's prediction cache (predictions.py: computed once per checkpoint) and returns a
`CheckpointDiff`. Images are sorted into

- fixed: wrong under `a`, right under `b`;
- broken: right under `a`, wrong under `b`;
- changed while wrong: wrong under both, with another wrong label;
- unchanged: right under both, or the same wrong label under both (counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .checkpoints import Checkpoint

if TYPE_CHECKING:
    from .session import TrainingSession


@dataclass(frozen=True)
class ImageChange:
    """One validation image whose prediction changed from checkpoint a to b."""

    path: Path
    label: str  # the true label
    before: str  # predicted under a
    after: str  # predicted under b
    p_before: float  # probability of the true label under a
    p_after: float  # ... and under b
    index: int  # its row in the validation split


@dataclass(frozen=True, eq=False)
class CheckpointDiff:
    """Checkpoint `b` compared with checkpoint `a` on the session's validation images."""

    a: str
    b: str
    classes: list[str]
    per_class: pd.DataFrame  # precision/recall/f1 under a and b, and their changes (b - a)
    fixed: list[ImageChange] = field(default_factory=list)
    broken: list[ImageChange] = field(default_factory=list)
    changed: list[ImageChange] = field(default_factory=list)  # wrong -> another wrong label
    unchanged_right: int = 0
    unchanged_wrong: int = 0
    accuracy_a: float = 0.0
    accuracy_b: float = 0.0

    @property
    def is_empty(self) -> bool:
        """True when no prediction changed (a checkpoint compared with itself, say)."""
        return not (self.fixed or self.broken or self.changed)

    @property
    def counts(self) -> dict[str, int]:
        return {"fixed": len(self.fixed), "broken": len(self.broken),
                "changed_while_wrong": len(self.changed),
                "unchanged_right": self.unchanged_right,
                "unchanged_wrong": self.unchanged_wrong}

    def summary(self) -> str:
        c = self.counts
        return (f"{self.b} vs {self.a}: accuracy {self.accuracy_a:.1%} -> {self.accuracy_b:.1%}; "
                f"{c['fixed']} fixed, {c['broken']} broken, {c['changed_while_wrong']} changed "
                f"while wrong, {c['unchanged_right']} right and {c['unchanged_wrong']} wrong in "
                "both")

    def __repr__(self) -> str:
        return f"CheckpointDiff({self.summary()})"


def diff(a: str, b: str, classes: list[str], labels: list[str], paths: list[Path],
         probs_a: np.ndarray, probs_b: np.ndarray) -> CheckpointDiff:
    """The diff of two checkpoints' probabilities on the same labelled images."""
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[label] for label in labels], dtype=np.int64)
    pa, pb = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    right_a, right_b = pa == truth, pb == truth
    rows = np.arange(len(truth))

    def changes(mask: np.ndarray) -> list[ImageChange]:
        return [ImageChange(paths[i], labels[i], classes[pa[i]], classes[pb[i]],
                            float(probs_a[i, truth[i]]), float(probs_b[i, truth[i]]), int(i))
                for i in rows[mask]]

    per_class = _per_class(classes, labels, pa, pb)
    n = max(len(truth), 1)
    return CheckpointDiff(
        a=a, b=b, classes=list(classes), per_class=per_class,
        fixed=changes(~right_a & right_b), broken=changes(right_a & ~right_b),
        changed=changes(~right_a & ~right_b & (pa != pb)),
        unchanged_right=int((right_a & right_b).sum()),
        unchanged_wrong=int((~right_a & ~right_b & (pa == pb)).sum()),
        accuracy_a=float(right_a.sum() / n), accuracy_b=float(right_b.sum() / n))


def _per_class(classes: list[str], labels: list[str], pa: np.ndarray,
               pb: np.ndarray) -> pd.DataFrame:
    """Precision, recall and F1 per class under a and b (0 where undefined, as
    ClassifierMetrics.precision_recall: sklearn's zero_division=0), and their change.
    Computed with NumPy here: comparing is interactive (<= 100 ms on 1,000 checkpoints)."""
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[label] for label in labels], dtype=np.int64)
    support = np.bincount(truth, minlength=k)
    columns: dict[str, np.ndarray] = {}
    for which, predicted in (("a", pa), ("b", pb)):
        tp = np.bincount(truth[predicted == truth], minlength=k).astype(float)
        predicted_count = np.bincount(predicted, minlength=k)
        precision = np.divide(tp, predicted_count, out=np.zeros(k), where=predicted_count > 0)
        recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros(k), where=total > 0)
        columns.update({f"precision_{which}": precision, f"recall_{which}": recall,
                        f"f1_{which}": f1})
    for metric in ("precision", "recall", "f1"):
        columns[f"{metric}_change"] = columns[f"{metric}_b"] - columns[f"{metric}_a"]
    order = [f"{m}_{w}" for w in ("a", "b", "change") for m in ("precision", "recall", "f1")]
    frame = pd.DataFrame({name: columns[name] for name in order},
                         index=pd.Index(classes, name="class"))
    frame["support"] = support
    return frame


def resolve(session: TrainingSession, which: str | int | Checkpoint,
            listing: list[Checkpoint] | None = None) -> Checkpoint:
    """A checkpoint by id, 0-based index into `session.checkpoints` (negative from the
    end), "best" or "latest" (anything else `session.checkpoint` takes, too). `listing`:
    the checkpoints already listed, so that resolving two costs one listing."""
    if isinstance(which, Checkpoint):
        return which
    checkpoints = session.checkpoints if listing is None else listing
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
        if not -len(checkpoints) <= which < len(checkpoints):
            raise IndexError(f"checkpoint index {which} is out of range: session "
                             f"{session.directory} has {len(checkpoints)} checkpoints")
        return checkpoints[which]
    if which == "latest" and checkpoints:
        return checkpoints[-1]
    for checkpoint in checkpoints:
        if checkpoint.id == which:
            return checkpoint
    return session.checkpoint(str(which))


def compare(session: TrainingSession, a: str | int | Checkpoint,
            b: str | int | Checkpoint) -> CheckpointDiff:
    """Checkpoint `b` against checkpoint `a` on the session's validation images."""
    listing = session.checkpoints
    first, second = resolve(session, a, listing), resolve(session, b, listing)
    cache = session.prediction_cache
    items = cache.items
    if not items:
        raise ValueError(f"session {session.directory} has no validation images to compare on")
    probs_a, probs_b = cache.probabilities(first), cache.probabilities(second)
    return diff(first.id, second.id, cache.classes, [i.label for i in items],
                [i.path for i in items], probs_a, probs_b)


def cell(session: TrainingSession, which: str | int | Checkpoint, true: str,
         predicted: str) -> list[dict[str, Any]]:
    """The validation images of class `true` that `which` predicts as `predicted`, with
    their probabilities (most confident first)."""
    checkpoint = resolve(session, which)
    cache = session.prediction_cache
    probs = cache.probabilities(checkpoint)
    return cell_images(cache.classes, [i.label for i in cache.items],
                       [i.path for i in cache.items], probs, true, predicted)


def cell_images(classes: list[str], labels: list[str], paths: list[Any], probs: np.ndarray,
                true: str, predicted: str) -> list[dict[str, Any]]:
    """Rows of one confusion cell: path, label, predicted, probability of each."""
    for name in (true, predicted):
        if name not in classes:
            raise KeyError(f"{name!r} is not one of the classes {classes}")
    j = classes.index(predicted)
    found = [i for i, label in enumerate(labels)
             if label == true and int(probs[i].argmax()) == j]
    found.sort(key=lambda i: -float(probs[i, j]))
    return [{"path": paths[i], "label": labels[i], "predicted": predicted,
             "probability": float(probs[i, j]),
             "probabilities": {c: float(p) for c, p in zip(classes, probs[i])}}
            for i in found]
