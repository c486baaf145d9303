"""One training run: the session's phases, each continued from the latest checkpoint.

Phases (Create ML's MLPhase), by `ModelParameters.algorithm`:
- from_scratch:      training (the whole network, on images)
- transfer_learning: extracting_features (once) -> training (the classifier, on the
                     cached features) -> fine_tuning (optional, the whole network)
- fine_tune:         fine_tuning (the whole pretrained network, discriminative rates)

The run is the `sink` of the callbacks in `callbacks.py`: it counts steps and
iterations, turns metrics into reports, commits checkpoints and stops on request.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from . import features as feats
from .callbacks import AugmentBatch, CheckpointEvery, RelayMetrics, StopOnRequest
from .checkpoints import BODY_FILE
from .loaders import make_dataloaders
from .models import build_model, model_record, split_features_and_classifier

if TYPE_CHECKING:
    from .checkpoints import Checkpoint
    from .session import TrainingSession

BATCH_EVENT_INTERVAL = 0.1  # seconds between streamed batch events, so observers keep up


class Stopped(Exception):
    """Raised inside slow preparation (decoding images) when a stop was requested."""


class TrainingRun:
    """Train `session` from its latest checkpoint through the rest of its phases."""

    def __init__(self, session: TrainingSession):
        self.session = session
        self.stop_requested = False
        self.stop_reason: str | None = None
        latest = session.latest_checkpoint
        self.phase = latest.phase if latest else session.parameters.phases[0]
        self.completed_iterations = latest.iteration if latest else 0
        self.start_iteration = self.completed_iterations
        self.step = latest.step_number if latest else 0
        self.committed_step = self.step if latest else -1
        self.metrics: dict[str, float | None] = dict(latest.metrics) if latest else {}
        self.confusion: list[list[int]] | None = latest.confusion if latest else None
        self.started = time.monotonic()
        self.elapsed_before = session.elapsed
        self._last_event: dict[str, float] = {}
        self._lock = threading.Lock()
        self.learn: Any = None
        self.model: Any = None  # the whole network being trained
        self._frozen: tuple[Any, dict[str, Any]] | None = None  # linked body file, if any
        self._frozen_keys: set[str] = set()  # the weights that file holds

    def budget(self, phase: str) -> int:
        return self.session.phase_budget(phase)

    @property
    def total_iterations(self) -> int:
        return self.budget(self.phase)

    # -- the run ---------------------------------------------------------------------

    def run(self) -> None:
        phases = self.session.parameters.phases
        for phase in phases[phases.index(self.phase):]:
            if phase != self.phase:  # a new phase: its own iterations and metrics
                self.phase, self.completed_iterations, self.metrics = phase, 0, {}
                self.start_iteration = 0
            if self.completed_iterations < self.budget(phase):
                if phase == "extracting_features":
                    self._extract_features()
                else:
                    self._fit(phase)
            if self.stop_reason:
                return

    def _fit(self, phase: str) -> None:
        from fastai.torch_core import set_seed

        p = self.session.parameters
        on_features = phase == "training" and p.algorithm == "transfer_learning"
        try:
            self.learn = learn = self._feature_learner() if on_features else self._image_learner()
        except Stopped:
            return  # nothing trained yet in this run: nothing to commit
        set_seed(p.seed + self.completed_iterations)
        lr: Any = p.learning_rate
        if phase == "fine_tuning":  # fastai's discriminative rates: the body learns slower
            learn.unfreeze()
            lr = slice(p.learning_rate / 200, p.learning_rate / 2)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(self.budget(phase), lr_max=lr,
                                start_epoch=self.completed_iterations)
        if self.stop_reason == "pause":
            self._commit_pause_checkpoint()
        elif self.stop_reason is None and self.step != self.committed_step:
            self.commit_checkpoint()  # the final iteration is always kept

    def _network(self, frozen: dict[str, Any] | None = None) -> Any:
        """The whole network: `frozen` weights (if given), then the latest checkpoint's."""
        s = self.session
        latest = s.latest_checkpoint
        trained = latest is not None and latest.has_model
        model = build_model(s.parameters, len(s.classes),
                            with_weights=not trained and frozen is None)
        if frozen is not None:
            model.load_state_dict(frozen, strict=False)
        if trained:
            model.load_state_dict(latest.load_model_state())
        return model

    def _learner(self, model: Any, dls: Any, cbs: list[Any]) -> Any:
        import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
        import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
        import torch
        from fastai.learner import Learner
        from fastai.optimizer import Adam

        interval = self.session.session_parameters.checkpoint_interval
        cbs += [RelayMetrics(self), CheckpointEvery(self, interval), StopOnRequest(self)]
        splitter = _body_and_head if hasattr(model, "body") else _all_together
        learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), opt_func=Adam,
                        cbs=cbs, splitter=splitter)
        learn.create_opt()
        latest = self.session.latest_checkpoint
        # An optimizer's state belongs to its phase: a new phase starts afresh.
        if latest is not None and latest.phase == self.phase:
            optimizer_state = latest.load_optimizer_state()
            if optimizer_state is not None:
                learn.opt.load_state_dict(optimizer_state)
        return learn

    def _image_learner(self) -> Any:
        from fastai.torch_core import default_device

        s, p = self.session, self.session.parameters
        self.model, self._frozen = self._network(), None
        train, valid = s.split
        # Decoded once into RAM when it fits (see image_cache.py); progress streams meanwhile.
        dls = make_dataloaders(train, valid, s.classes, p.image_size, p.batch_size,
                               device=default_device(),
                               cache_mb=s.session_parameters.image_cache_mb,
                               progress=self._decoding_progress)
        return self._learner(self.model, dls, [AugmentBatch(p.augmentation)])

    def _feature_learner(self) -> Any:
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        from torch.utils.data import TensorDataset

        s, p = self.session, self.session.parameters
        cached = feats.find(s.directory / feats.FEATURES_DIR, s.feature_key())
        if cached is None:
            raise RuntimeError(f"the extracted features of {s.directory} are missing; "
                               "start again from a new session or reuse another's features")
        frozen = cached_body(cached)
        self.model = self._network(frozen=frozen)
        self._frozen, self._frozen_keys = cached.body_file, set(frozen)
        _, classifier = split_features_and_classifier(self.model)
        t = cached.tensors
        train = TensorDataset(t["train_x"], t["train_y"])
        bs = min(p.batch_size, len(train))
        dls = DataLoaders(
            DataLoader(train, bs=bs, shuffle=True, drop_last=len(train) > bs),
            DataLoader(TensorDataset(t["valid_x"], t["valid_y"]), bs=bs * 2), device="cpu")
        return self._learner(classifier, dls, [])

    def _extract_features(self) -> None:
        s, p = self.session, self.session.parameters
        directory, key = s.directory / feats.FEATURES_DIR, s.feature_key()
        if feats.find(directory, key) is None:
            model = build_model(p, len(s.classes))
            train, valid = s.split
            try:
                tensors = feats.extract(model, train, valid, s.classes, p,
                                        self.budget("extracting_features") - 2,
                                        progress=self._extraction_progress,
                                        stop=lambda: self.stop_requested,
                                        cache_mb=s.session_parameters.image_cache_mb,
                                        decoding=self._decoding_progress)
            except Stopped:  # while decoding
                tensors = None
            if tensors is None:
                return  # stopped: features are all or nothing, so nothing is kept
            feats.save(directory, key, tensors, feats.body_state(model))
        self.completed_iterations = self.budget("extracting_features")
        self.metrics = {}
        self.session.emit(self._report("report"))
        checkpoint = s.store.commit(
            phase=self.phase, iteration=self.completed_iterations, step_number=self.step,
            metrics={}, model_state=None, model=model_record(p, s.classes))
        self.committed_step = self.step
        s.emit({**self._report("checkpoint"), "id": checkpoint.id})

    def _decoding_progress(self, done: int, total: int) -> None:
        if self.stop_requested:
            raise Stopped
        self._stream("progress", {"task": "decoding images", "done": done, "total": total})

    def _extraction_progress(self, n: int, done: int, total: int) -> None:
        self.completed_iterations = n - 1
        self._stream("progress", {"task": "extracting features", "iteration": n,
                                  "done": done, "total": total})

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
        self._stream("batch", {"iteration": self.iteration_in_progress, "loss": loss})

    def _stream(self, kind: str, fields: dict[str, Any]) -> None:
        """A throttled, unrecorded event: live loss, or progress of a slow preparation."""
        now = time.monotonic()
        if now - self._last_event.get(kind, 0.0) >= BATCH_EVENT_INTERVAL:
            self._last_event[kind] = now  # each kind its own pace: progress never hides loss
            self.session.emit({"type": kind, "phase": self.phase, "step": self.step,
                               **fields}, persist=False)

    def iteration_done(self, iteration: int, metrics: dict[str, float | None],
                       confusion: list[list[int]] | None = None) -> None:
        self.completed_iterations, self.metrics, self.confusion = iteration, metrics, confusion
        interval = self.session.session_parameters.report_interval
        if iteration % interval == 0 or iteration == self.total_iterations:
            self.session.emit(self._report("report"))

    def commit_checkpoint(self) -> Checkpoint:
        s = self.session
        state = self.model.state_dict()
        linked = None
        if self._frozen is not None:  # store only what trains; link the frozen body
            state = {k: v for k, v in state.items() if k not in self._frozen_keys}
            linked = {BODY_FILE: self._frozen}
        checkpoint = s.store.commit(
            phase=self.phase, iteration=self.completed_iterations, step_number=self.step,
            metrics=self.metrics, model_state=state, model=model_record(s.parameters, s.classes),
            optimizer_state=self.learn.opt.state_dict(), linked_files=linked,
            confusion=self.confusion,
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
            self.metrics, self.confusion = relay.metrics(), relay.confusion()
        self.commit_checkpoint()

    def _report(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "phase": self.phase, "iteration": self.completed_iterations,
                "total_iterations": self.total_iterations, "step": self.step,
                "elapsed": round(self.elapsed, 3), "metrics": dict(self.metrics)}


def cached_body(cached: feats.ExtractedFeatures) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(cached.body_file[0]))


def _body_and_head(model: Any) -> list[list[Any]]:
    return [list(model.body.parameters()), list(model.head.parameters())]


def _all_together(model: Any) -> list[list[Any]]:
    return [list(model.parameters())]
