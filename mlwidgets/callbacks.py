"""fastai callbacks that connect a Learner to a training run, one job each.

They talk to a `sink` (the run in `trainer.py`) through a few plain methods, so they
hold no session logic themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.callback.core import Callback, CancelFitException

from . import distributed
from .augment import augment_batch
from .parameters import Augmentation
from .resume import PausePoint, RngStates, iteration_seed, seed_everything


class AugmentBatch(Callback):
    """Apply the session's augmentations to training batches only."""

    order = 5

    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation

    def before_batch(self) -> None:
        if self.training and self.augmentation.enabled:
            self.learn.xb = (augment_batch(self.xb[0], self.augmentation),)


class SeedIterations(Callback):
    """Seed torch, NumPy and Python at the start of every iteration, from the session's
    seed, the phase and the iteration number, so an iteration's data order and
    augmentations never depend on what ran before it (see resume.py)."""

    order = -50  # before anything draws a random number in the iteration

    def __init__(self, seed: int, phase: str):
        self.seed, self.phase = seed, phase

    def before_epoch(self) -> None:
        seed_everything(iteration_seed(self.seed, self.phase, self.epoch))


class ResumeInsideIteration(Callback):
    """Continue an iteration a pause cut short: skip its trained batches in the same data
    order, put the one-cycle schedule where it was, and restore the RNG states."""

    order = -5  # after TrainEvalCallback sets pct_train, before AugmentBatch draws

    def __init__(self, point: PausePoint):
        self.point = point
        self.pending_rng = False

    def before_train(self) -> None:
        p = self.point
        if self.epoch != p.iteration:
            return
        # fastai's own arithmetic, repeated: pct_train grows by one step per batch.
        step = 1.0 / (p.batches * self.n_epoch)
        for _ in range(p.batch):
            self.learn.pct_train += step
        if p.order is not None:
            loader = distributed.inner_loader(self.dls.train)
            if sorted(p.order) != list(range(loader.n)):  # the record names another data set
                raise ValueError(f"the paused iteration's data order does not fit the "
                                 f"{loader.n} training items; resume from another checkpoint")
            loader.resume_at = (p.order, p.batch)
        self.pending_rng = True

    def before_batch(self) -> None:
        self._restore_rng()

    def before_validate(self) -> None:
        self._restore_rng()  # a pause after the last batch: no batch restored them

    def _restore_rng(self) -> None:
        if self.pending_rng:
            self.pending_rng = False
            self.point.rng.restore()


class RelayMetrics(Callback):
    """Measure loss and accuracy per iteration; stream batch losses; hand both to the sink."""

    order = 60  # after fastai's Recorder

    def __init__(self, sink: Any):
        self.sink = sink

    def before_train(self) -> None:
        self.train_totals = self.sink.iteration_started(self.epoch)
        self.seen: int | None = None  # rows of this pass so far (set at its first batch)

    def before_validate(self) -> None:
        self.valid = ValidationTally()
        self.seen = None

    def after_batch(self) -> None:
        y, pred, loss = self.yb[0], self.pred, float(self.loss.detach())
        self.n_classes = pred.shape[1]
        if self.seen is None:
            self.seen = getattr(self.dl, "skipped_rows", 0)
        real = distributed.real_rows(self.dl, self.seen, len(y))
        self.seen += len(y)
        if real < len(y):  # a data-parallel loader's padding repeats samples: not counted
            y, pred = y[:real], pred[:real]
        real_loss = loss if real == len(y) or not real else float(self.loss_func(pred, y))
        if self.training:
            if real:
                self.train_totals.add(real_loss, int((pred.argmax(dim=1) == y).sum()), real)
            self.sink.batch_done(loss)
        elif real:
            self.valid.add(pred, y, real_loss)

    def after_epoch(self) -> None:
        if getattr(self, "train_totals", None) is not None:  # an iteration that trained
            valid = getattr(self, "valid", None) or ValidationTally()
            train, valid = over_ranks(self.train_totals, valid, self.n_classes)
            if train.count:
                self.sink.iteration_done(self.epoch + 1, metrics_of(train, valid),
                                         valid.confusion())
        self.train_totals, self.valid = None, None

    @property
    def in_iteration(self) -> bool:
        """True between the first training batch of an iteration and its end."""
        totals = getattr(self, "train_totals", None)
        return totals is not None and totals.count > 0


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
    """End training after the batch where the sink asks to stop (or before an iteration)."""

    order = 90  # after RelayMetrics has counted the batch that was just trained

    def __init__(self, sink: Any):
        self.sink = sink

    def before_train(self) -> None:
        if self.sink.stop_agreed():
            raise CancelFitException

    def after_batch(self) -> None:
        if self.training and self.sink.stop_agreed():
            self.sink.stopping_after_batch()
            raise CancelFitException


class ValidationTally:
    """Loss, accuracy and the confusion counts over validation batches."""

    def __init__(self) -> None:
        self.totals = Totals()
        self.counts: torch.Tensor | None = None  # confusion counts, flattened
        self.n_classes = 0

    def add(self, pred: torch.Tensor, y: torch.Tensor, mean_loss: float) -> None:
        predicted = pred.argmax(dim=1)
        self.totals.add(mean_loss, int((predicted == y).sum()), len(y))
        n = self.n_classes = pred.shape[1]
        counts = torch.bincount(y * n + predicted, minlength=n * n)
        self.counts = counts if self.counts is None else self.counts + counts

    def confusion(self) -> list[list[int]] | None:
        """The confusion matrix (rows: true class, columns: predicted), if anything was seen."""
        if self.counts is None:
            return None
        return self.counts.view(self.n_classes, self.n_classes).tolist()


def measure(model: torch.nn.Module, loader: Any, loss_func: Any) -> ValidationTally:
    """Validate `model` on `loader` outside fastai's loop (which would end the iteration in
    every callback), leaving every RNG as it was."""
    rng = RngStates.capture()
    was_training = model.training
    model.eval()
    tally = ValidationTally()
    try:
        with torch.no_grad():
            for x, y in loader:
                pred = model(x)
                tally.add(pred, y, float(loss_func(pred, y)))
    finally:
        model.train(was_training)
        rng.restore()
    return tally


def over_ranks(train: Totals, valid: ValidationTally,
               n_classes: int) -> tuple[Totals, ValidationTally]:
    """The totals of every data-parallel worker summed (each worker's own when alone)."""
    if not distributed.is_distributed():
        return train, valid
    counts = valid.counts if valid.counts is not None else torch.zeros(
        n_classes * n_classes, dtype=torch.int64)
    v = valid.totals
    summed = distributed.sum_over_ranks([train.loss_sum, train.correct, train.count,
                                         v.loss_sum, v.correct, v.count, *counts.tolist()])
    whole_train = Totals(summed[0], round(summed[1]), round(summed[2]))
    whole_valid = ValidationTally()
    whole_valid.totals = Totals(summed[3], round(summed[4]), round(summed[5]))
    whole_valid.totals.last_loss, whole_valid.totals.last_accuracy = v.last_loss, v.last_accuracy
    if whole_valid.totals.count:
        whole_valid.counts = torch.tensor([round(c) for c in summed[6:]], dtype=torch.int64)
        whole_valid.n_classes = n_classes
    return whole_train, whole_valid


def metrics_of(train: Totals, valid: ValidationTally) -> dict[str, float | None]:
    """train_* over the iteration's batches; valid_* over the whole validation set."""
    v = valid.totals
    return {
        "train_loss": train.mean_loss, "train_accuracy": train.accuracy,
        "valid_loss": v.mean_loss, "valid_accuracy": v.accuracy,
        "batch_valid_loss": v.last_loss, "batch_valid_accuracy": v.last_accuracy,
    }


class Totals:
    """Running sums over an iteration's batches (kept in a pause checkpoint)."""

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, count: int = 0) -> None:
        self.loss_sum, self.correct, self.count = loss_sum, correct, count
        self.last_loss: float | None = None
        self.last_accuracy: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}

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
