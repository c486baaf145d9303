"""One training run: a fastai Learner fitted from the session's latest checkpoint.

The run is the `sink` of the callbacks in `callbacks.py`: it counts steps and
iterations, turns metrics into reports, commits checkpoints and stops on request.
Everything it learns it hands to the session through `emit` and the store.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .callbacks import AugmentBatch, CheckpointEvery, RelayMetrics, StopOnRequest
from .data import make_dataloaders
from .models import build_model, model_record

if TYPE_CHECKING:
    from .checkpoints import Checkpoint
    from .session import TrainingSession

BATCH_EVENT_INTERVAL = 0.1  # seconds between streamed batch losses, so observers keep up


class TrainingRun:
    """Train `session` from its latest checkpoint up to `total_iterations`."""

    def __init__(self, session: TrainingSession, total_iterations: int):
        self.session = session
        self.total_iterations = total_iterations
        self.phase = "training"
        self.stop_requested = False
        self.stop_reason: str | None = None
        latest = session.latest_checkpoint
        self.completed_iterations = latest.iteration if latest else 0
        self.start_iteration = self.completed_iterations
        self.step = latest.step_number if latest else 0
        self.committed_step = self.step if latest else -1
        self.metrics: dict[str, float | None] = dict(latest.metrics) if latest else {}
        self.started = time.monotonic()
        self.elapsed_before = session.elapsed
        self._last_batch_event = 0.0
        self._lock = threading.Lock()
        self.learn: Any = None

    # -- the run ---------------------------------------------------------------------

    def run(self) -> None:
        from fastai.torch_core import set_seed

        s = self.session
        self.learn = learn = self._learner()
        set_seed(s.parameters.seed + self.completed_iterations)
        if self.completed_iterations < self.total_iterations:
            with learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(self.total_iterations, lr_max=s.parameters.learning_rate,
                                    start_epoch=self.completed_iterations)
        if self.stop_reason == "pause":
            self._commit_pause_checkpoint()
        elif self.stop_reason is None and self.step != self.committed_step:
            self.commit_checkpoint()  # the final iteration is always kept

    def _learner(self) -> Any:
        import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
        import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
        import torch
        from fastai.learner import Learner
        from fastai.optimizer import Adam
        from fastai.torch_core import default_device

        s, p = self.session, self.session.parameters
        train, valid = s.split
        dls = make_dataloaders(train, valid, s.classes, p.image_size, p.batch_size,
                               device=default_device())
        latest = s.latest_checkpoint
        model = build_model(p if latest is None else p.replace(pretrained=False,
                                                                weights_file=None),
                            len(s.classes))
        if latest is not None:
            model.load_state_dict(latest.load_model_state())
        cbs = [AugmentBatch(p.augmentation), RelayMetrics(self),
               CheckpointEvery(self, s.session_parameters.checkpoint_interval),
               StopOnRequest(self)]
        learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), opt_func=Adam,
                        cbs=cbs)
        learn.create_opt()
        optimizer_state = latest.load_optimizer_state() if latest is not None else None
        if optimizer_state is not None:
            learn.opt.load_state_dict(optimizer_state)
        return learn

    def request_stop(self, reason: str) -> None:
        with self._lock:
            if not self.stop_requested:
                self.stop_requested, self.stop_reason = True, reason

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # -- the sink the callbacks call ----------------------------------------------------

    def iteration_started(self, epoch: int) -> None:
        self.iteration_in_progress = epoch + 1

    def batch_done(self, loss: float) -> None:
        self.step += 1
        now = time.monotonic()
        if now - self._last_batch_event >= BATCH_EVENT_INTERVAL:
            self._last_batch_event = now
            self.session.emit({"type": "batch", "phase": self.phase,
                               "iteration": self.iteration_in_progress, "step": self.step,
                               "loss": loss}, persist=False)

    def iteration_done(self, iteration: int, metrics: dict[str, float | None]) -> None:
        self.completed_iterations, self.metrics = iteration, metrics
        interval = self.session.session_parameters.report_interval
        if iteration % interval == 0 or iteration == self.total_iterations:
            self.session.emit(self._report("report"))

    def commit_checkpoint(self) -> Checkpoint:
        s = self.session
        checkpoint = s.store.commit(
            phase=self.phase, iteration=self.completed_iterations, step_number=self.step,
            metrics=self.metrics, model_state=self.learn.model.state_dict(),
            model=model_record(s.parameters, s.classes),
            optimizer_state=self.learn.opt.state_dict(),
        )
        self.committed_step = self.step
        sp = s.session_parameters
        s.store.apply_retention(sp.keep_last, sp.keep_best, sp.best_metric)
        s.emit({**self._report("checkpoint"), "id": checkpoint.id})
        return checkpoint

    def _commit_pause_checkpoint(self) -> None:
        if self.step == self.committed_step:
            return  # nothing changed since the last checkpoint
        relay = self.learn.cbs.filter(lambda cb: isinstance(cb, RelayMetrics))[0]
        if relay.in_iteration:
            # Stopped inside an iteration: measure the weights as they are now.
            with self.learn.no_bar(), self.learn.no_logging():
                self.learn.validate()
            self.metrics = relay.metrics()
        self.commit_checkpoint()

    def _report(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "phase": self.phase, "iteration": self.completed_iterations,
                "total_iterations": self.total_iterations, "step": self.step,
                "elapsed": round(self.elapsed, 3), "metrics": dict(self.metrics)}
