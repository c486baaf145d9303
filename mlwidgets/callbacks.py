"""fastai callbacks that connect a Learner to a training run, one job each.

They talk to a `sink` (the run in `trainer.py`) through a few plain methods, so they
hold no session logic themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.callback.core import Callback, CancelFitException

from .augment import augment_batch
from .parameters import Augmentation


class AugmentBatch(Callback):
    """Apply the session's augmentations to training batches only."""

    order = 5

    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation

    def before_batch(self) -> None:
        if self.training and self.augmentation.enabled:
            self.learn.xb = (augment_batch(self.xb[0], self.augmentation),)


class RelayMetrics(Callback):
    """Measure loss and accuracy per iteration; stream batch losses; hand both to the sink."""

    order = 60  # after fastai's Recorder

    def __init__(self, sink: Any):
        self.sink = sink

    def before_train(self) -> None:
        self.train_totals = _Totals()
        self.sink.iteration_started(self.epoch)

    def before_validate(self) -> None:
        self.valid_totals = _Totals()
        self.valid_counts: torch.Tensor | None = None  # confusion counts, flattened

    def after_batch(self) -> None:
        y = self.yb[0]
        loss, correct = float(self.loss.detach()), int((self.pred.argmax(dim=1) == y).sum())
        if self.training:
            self.train_totals.add(loss, correct, len(y))
            self.sink.batch_done(loss)
        else:
            self.valid_totals.add(loss, correct, len(y))
            n = self.n_classes = self.pred.shape[1]
            counts = torch.bincount(y * n + self.pred.argmax(dim=1), minlength=n * n)
            self.valid_counts = counts if self.valid_counts is None else self.valid_counts + counts

    def after_epoch(self) -> None:
        if self.in_iteration:
            self.sink.iteration_done(self.epoch + 1, self.metrics(), self.confusion())
        self.train_totals = None

    @property
    def in_iteration(self) -> bool:
        """True between the first training batch of an iteration and its end."""
        totals = getattr(self, "train_totals", None)
        return totals is not None and totals.count > 0

    def confusion(self) -> list[list[int]] | None:
        """The validation confusion matrix (rows: true class, columns: predicted)."""
        counts = getattr(self, "valid_counts", None)
        if counts is None:
            return None
        return counts.view(self.n_classes, self.n_classes).tolist()

    def metrics(self) -> dict[str, float | None]:
        """train_* over the iteration's batches; valid_* over the whole validation set."""
        valid = getattr(self, "valid_totals", None) or _Totals()
        return {
            "train_loss": self.train_totals.mean_loss,
            "train_accuracy": self.train_totals.accuracy,
            "valid_loss": valid.mean_loss, "valid_accuracy": valid.accuracy,
            "batch_valid_loss": valid.last_loss, "batch_valid_accuracy": valid.last_accuracy,
        }


class CheckpointEvery(Callback):
    """Ask the sink to commit a checkpoint every `interval` iterations and at the last one."""

    order = 70  # after RelayMetrics has delivered the iteration's metrics

    def __init__(self, sink: Any, interval: int):
        self.sink, self.interval = sink, interval

    def before_train(self) -> None:
        self.trained = True

    def after_epoch(self) -> None:
        # fastai also ends epochs it skips when resuming (start_epoch): those commit nothing.
        trained, self.trained = getattr(self, "trained", False), False
        done = self.sink.completed_iterations
        if trained and (done % self.interval == 0 or done == self.n_epoch):
            self.sink.commit_checkpoint()


class StopOnRequest(Callback):
    """End training at the next batch or iteration boundary once the sink asks to stop."""

    order = 0

    def __init__(self, sink: Any):
        self.sink = sink

    def before_train(self) -> None:
        if self.sink.stop_requested:
            raise CancelFitException

    def after_batch(self) -> None:
        if self.training and self.sink.stop_requested:
            raise CancelFitException


class _Totals:
    def __init__(self) -> None:
        self.loss_sum, self.correct, self.count = 0.0, 0, 0
        self.last_loss: float | None = None
        self.last_accuracy: float | None = None

    def add(self, mean_loss: float, correct: int, n: int) -> None:
        self.loss_sum += mean_loss * n
        self.correct += correct
        self.count += n
        self.last_loss, self.last_accuracy = mean_loss, correct / n

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.count if self.count else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.count if self.count else None
