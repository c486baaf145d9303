"""ClassifierMetrics: how a classifier did on labelled data (Create ML's ``MLClassifierMetrics``).

Engine code: numpy and pandas only. Everything is derived from three aligned sequences (true
label, predicted label and, optionally, class probabilities), so an evaluation can be rebuilt
from a saved predictions table without the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

# Cross-entropy of a probability of exactly 0 would be infinite; clip so losses stay sortable.
_MIN_PROBABILITY = 1e-12


def _codes(values: tuple[str, ...], classes: tuple[str, ...], what: str) -> np.ndarray:
    """Index of each value in ``classes``; ValueError naming the first value that is not one."""
    codes = pd.Index(classes).get_indexer(values)  # -1 where a value is not a class
    unknown = np.flatnonzero(codes < 0)
    if unknown.size:
        value = values[unknown[0]]
        raise ValueError(
            f"{what} {value!r} (example {unknown[0]}) is not one of the classes {list(classes)}"
            + (f"; {unknown.size} such examples" if unknown.size > 1 else "")
        )
    return codes


# eq=False: dataclass equality would compare the probabilities array elementwise and fail.
# repr=False: the generated repr would print every label of a large evaluation.
@dataclass(frozen=True, eq=False, repr=False)
class ClassifierMetrics:
    """The evaluation of a classifier on labelled examples.

    ``probabilities`` has one row per example and one column per class, in ``classes`` order;
    it is needed only by :meth:`top_losses`. ``sources`` (e.g. image paths) names each example.

    Where metrics cannot be computed (a session without validation images, say), you get
    metrics whose ``is_valid`` is False and whose ``error`` says why, as Create ML's
    ``MLClassifierMetrics.isValid`` / ``error``; make them with :meth:`invalid`. Reading a
    figure (``accuracy``, ``confusion``...) of invalid metrics raises ValueError with that error.
    """

    classes: tuple[str, ...]
    labels: tuple[str, ...]
    predicted: tuple[str, ...]
    probabilities: np.ndarray | None = None
    sources: tuple[str, ...] | None = None
    error: str | None = None  # why these metrics could not be computed; None when valid

    def __post_init__(self) -> None:
        if self.error is not None:  # invalid: nothing to check, nothing to compute
            for name in ("classes", "labels", "predicted"):
                object.__setattr__(self, name, tuple(getattr(self, name)))
            return
        # Frozen, so normalise with object.__setattr__: tuples and a read-only array.
        for name in ("classes", "labels", "predicted", "sources"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {list(self.classes)}")
        n = len(self.labels)
        if len(self.predicted) != n:
            raise ValueError(f"{n} labels but {len(self.predicted)} predictions")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"{n} labels but {len(self.sources)} sources")
        if n == 0:
            raise ValueError("cannot evaluate a classifier on 0 examples")
        object.__setattr__(self, "_label_codes", _codes(self.labels, self.classes, "label"))
        predicted_codes = _codes(self.predicted, self.classes, "predicted value")
        object.__setattr__(self, "_predicted_codes", predicted_codes)
        if self.probabilities is not None:
            probabilities = np.array(self.probabilities, dtype=np.float64)
            expected = (n, len(self.classes))
            if probabilities.shape != expected:
                raise ValueError(
                    f"probabilities must have shape {expected} (examples, classes), "
                    f"got {probabilities.shape}"
                )
            probabilities.setflags(write=False)
            object.__setattr__(self, "probabilities", probabilities)

    def __repr__(self) -> str:
        if self.error is not None:
            return f"ClassifierMetrics(invalid: {self.error})"
        n, k = len(self.labels), len(self.classes)
        return f"ClassifierMetrics({n} examples, {k} classes, accuracy={self.accuracy:.4f})"

    @classmethod
    def invalid(cls, error: str, classes: Iterable[Any] = ()) -> ClassifierMetrics:
        """Metrics that could not be computed, and why (``is_valid`` is False)."""
        return cls(classes=tuple(str(c) for c in classes), labels=(), predicted=(),
                   error=str(error))

    @property
    def is_valid(self) -> bool:
        """True when the figures could be computed; otherwise ``error`` says why."""
        return self.error is None

    def _require_valid(self) -> None:
        if self.error is not None:
            raise ValueError(f"these metrics are not valid: {self.error}")

    @classmethod
    def from_predictions(
        cls,
        classes: Iterable[Any],
        labels: Iterable[Any],
        predicted: Iterable[Any],
        probabilities: Any = None,
        sources: Iterable[Any] | None = None,
    ) -> ClassifierMetrics:
        """Build from any iterables (lists, numpy arrays, pandas columns); values become ``str``."""
        return cls(
            classes=tuple(str(c) for c in classes),
            labels=tuple(str(v) for v in labels),
            predicted=tuple(str(v) for v in predicted),
            probabilities=None if probabilities is None else np.asarray(probabilities),
            sources=None if sources is None else tuple(str(s) for s in sources),
        )

    @property
    def accuracy(self) -> float:
        """Fraction of examples whose prediction equals the label."""
        self._require_valid()
        return float(np.mean(self._label_codes == self._predicted_codes))

    @property
    def classification_error(self) -> float:
        """Fraction of examples predicted wrongly: ``1 - accuracy``."""
        return 1.0 - self.accuracy

    @cached_property
    def _matrix(self) -> np.ndarray:
        self._require_valid()
        k = len(self.classes)
        flat = np.bincount(self._label_codes * k + self._predicted_codes, minlength=k * k)
        matrix = flat.reshape(k, k).astype(np.int64)
        matrix.setflags(write=False)
        return matrix

    @property
    def confusion(self) -> pd.DataFrame:
        """Counts: rows are true classes, columns predicted classes, every class in both."""
        index = pd.Index(self.classes, name="true")
        columns = pd.Index(self.classes, name="predicted")
        return pd.DataFrame(self._matrix.copy(), index=index, columns=columns)

    @property
    def precision_recall(self) -> pd.DataFrame:
        """Per class: precision, recall, f1 and support (number of true examples).

        A ratio whose denominator is 0 is reported as 0.0, not NaN (scikit-learn's
        ``zero_division=0``): precision of a class never predicted, recall of a class with no
        support, and f1 when both precision and recall are 0.
        """
        m = self._matrix
        hits = np.diag(m).astype(np.float64)
        support, predicted = m.sum(axis=1), m.sum(axis=0)
        precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
        return pd.DataFrame(
            {"precision": precision, "recall": recall, "f1": f1, "support": support},
            index=pd.Index(self.classes, name="class"),
        )

    def top_losses(self, k: int = 9) -> pd.DataFrame:
        """The ``k`` examples with the highest cross-entropy ``-log p(label)``, worst first.

        The index is each example's position in ``labels``; ``source`` is None without sources.
        """
        self._require_valid()
        if self.probabilities is None:
            raise ValueError("top_losses needs probabilities; pass them to from_predictions")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        n = len(self.labels)
        p_label = self.probabilities[np.arange(n), self._label_codes]
        table = pd.DataFrame(
            {
                "source": list(self.sources) if self.sources is not None else [None] * n,
                "label": self.labels,
                "predicted": self.predicted,
                "probability_of_label": p_label,
                "loss": -np.log(np.clip(p_label, _MIN_PROBABILITY, None)),
            }
        )
        # Stable sort so that ties keep example order and results are reproducible.
        return table.sort_values("loss", ascending=False, kind="stable").head(k)

    def summary(self) -> str:
        """A few readable lines: accuracy, then the per-class table (or why there is none)."""
        if self.error is not None:
            return f"no metrics: {self.error}"
        n = len(self.labels)
        correct = int(np.sum(self._label_codes == self._predicted_codes))
        table = self.precision_recall.to_string(
            formatters={c: "{:.3f}".format for c in ("precision", "recall", "f1")}
        )
        return (
            f"accuracy {self.accuracy:.1%} ({correct} of {n} correct), "
            f"classification error {self.classification_error:.1%}\n{table}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only, so ``json.dumps`` works as is."""
        if self.error is not None:
            return {"is_valid": False, "error": self.error}
        # As object, support stays an int; otherwise each row would upcast it to float.
        per_class = self.precision_recall.astype({"support": object})
        return {
            "examples": len(self.labels),
            "accuracy": self.accuracy,
            "classification_error": self.classification_error,
            "confusion": {"classes": list(self.classes), "matrix": self._matrix.tolist()},
            "precision_recall": per_class.to_dict(orient="index"),
        }
