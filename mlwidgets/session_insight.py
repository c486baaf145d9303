"""What changed and why, asked of a training session: each checkpoint's cached predictions,
the comparison of two checkpoints, a confusion cell's images, possible data problems and
the decisions on them, and where a checkpoint looks (Grad-CAM). The work lives in
compare.py, predictions.py, scan.py / problems.py, decisions.py and saliency.py; this is
the part of `TrainingSession` that asks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .data import DataSource

if TYPE_CHECKING:
    from .checkpoints import Checkpoint
    from .compare import CheckpointDiff
    from .decisions import Decisions
    from .predictions import PredictionCache
    from .problems import DataReport
    from .saliency import Saliency


class SessionInsight:
    """Mixed into `TrainingSession`, whose directory, classes, split, checkpoints and
    feature key it uses."""

    _prediction_cache: PredictionCache | None = None

    @property
    def prediction_cache(self) -> PredictionCache:
        """Each checkpoint's validation predictions, computed once (see predictions.py)."""
        from .predictions import PredictionCache

        if self._prediction_cache is None:
            key = self.feature_key() if self.parameters.algorithm == "transfer_learning" \
                else None
            self._prediction_cache = PredictionCache(self.directory, self.classes,
                                                     self.split[1], key)
            self._prediction_cache.prune([c.id for c in self.checkpoints])
        return self._prediction_cache

    def predictions(self, which: str | int | Checkpoint = "latest") -> Any:
        """(validation images, classes) probabilities under a checkpoint, cached."""
        from .compare import resolve

        return self.prediction_cache.probabilities(resolve(self, which))

    def compare(self, a: str | int | Checkpoint, b: str | int | Checkpoint) -> CheckpointDiff:
        """What changed from checkpoint `a` to `b` on the validation images: per-class
        precision / recall / F1 and their change, the images fixed, broken and changed
        while wrong. `a` and `b` are ids, 0-based indexes into `checkpoints` (negative
        from the end), "best" or "latest"."""
        from .compare import compare

        return compare(self, a, b)

    def confusion_cell(self, true: str, predicted: str,
                       which: str | int | Checkpoint = "latest") -> list[dict[str, Any]]:
        """The validation images of class `true` predicted as `predicted` by a checkpoint,
        with their probabilities."""
        from .compare import cell

        return cell(self, which, true, predicted)

    def find_data_problems(self, **options: Any) -> DataReport:
        """Possible label errors, near-duplicates, train/validation duplicates and outliers
        in the session's images (see problems.py), from its extracted features."""
        from .scan import session_problems

        return session_problems(self, **options)

    @property
    def decisions(self) -> Decisions:
        """Keep / relabel / exclude decisions on the session's images (decisions.json)."""
        from .decisions import Decisions

        return Decisions(self.directory)

    def cleaned_data(self) -> DataSource:
        """The session's images (training and validation) with its decisions applied."""
        train, valid = self.split
        data = DataSource(train + valid, origin=self.data_origin, check=False)
        return data.with_decisions(self.decisions)

    def saliency(self, image: Any, which: str | int | Checkpoint = "latest",
                 target: str | None = None) -> Saliency:
        """A Grad-CAM map of where checkpoint `which` looks in `image` (see saliency.py)."""
        from .compare import resolve
        from .saliency import checkpoint_saliency

        return checkpoint_saliency(resolve(self, which), image, target)
