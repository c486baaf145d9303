"""One training run: the session's phases, each continued from the latest checkpoint.

Phases (Create ML's MLPhase), by `ModelParameters.algorithm`:
- from_scratch:      training (the whole network, on images)
- transfer_learning: extracting_features (once) -> training (the classifier, on the
                     cached features) -> fine_tuning (optional, the whole network)
- fine_tune:         fine_tuning (the whole pretrained network, discriminative rates)

The run owns the live counters (phase, iteration, step, metrics) and is the `sink` of
the callbacks in `callbacks.py`: it counts, reports, commits checkpoints, and stops
where it is asked to. It writes only through the session record (record.py).
A pause inside an iteration commits a partial checkpoint that `resume` continues
exactly (see resume.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import distributed, learners
from . import features as feats
from .batch_losses import BatchLosses
from .callbacks import (
    AugmentBatch,
    CheckpointEvery,
    RelayMetrics,
    ResumeInsideIteration,
    SeedIterations,
    StopOnRequest,
    Totals,
    measure,
    metrics_of,
)
from .checkpoints import BODY_FILE
from .commits import BackgroundCommits, optimizer_snapshot_of, snapshot_bytes, snapshot_of
from .events import EventType, Progress, RunState
from .models import build_model, classifier_of, model_record
from .resume import PausePoint, RngStates, iteration_seed, seed_everything

if TYPE_CHECKING:
    from .record import SessionRecord

BATCH_EVENT_INTERVAL = 0.1  # seconds between streamed batch events, so observers keep up
CONTROL_POLL_INTERVAL = 0.25  # seconds between looks at the session's control file
LOSSES_SAVE_INTERVAL = 1.0  # seconds between writes of the batch line (a pause, the end: now)


class Stopped(Exception):
    """Raised inside slow preparation (decoding images) when a stop was requested."""


class TrainingRun:
    """Train a session from its latest checkpoint through the rest of its phases."""

    def __init__(self, record: SessionRecord):
        self.record = record
        self.stop_reason: str | None = None  # "pause" or "cancel", once asked
        self.stop_at_step: int | None = None
        latest = record.latest_checkpoint
        self.phase = latest.phase if latest else record.parameters.phases[0]
        self.completed_iterations = latest.iteration if latest else 0
        self.start_iteration = self.completed_iterations
        self.step = latest.step_number if latest else 0
        self.committed_step = self.step if latest else -1
        self.metrics: dict[str, float | None] = dict(latest.metrics) if latest else {}
        self.confusion: list[list[int]] | None = latest.confusion if latest else None
        self.pause_point = PausePoint.of(latest) if latest is not None and latest.partial else None
        self.batches_in_iteration = 0
        self.batch_losses = BatchLosses.load(record.directory)  # the chart's batch line, kept
        self.batch_losses.truncate(self.step)  # what comes after is trained again
        self._losses_unsaved: dict[str, Any] | None = None  # written by the writer thread
        self._losses_saved_at = 0.0
        self.started = time.monotonic()
        self.elapsed_before = record.elapsed
        self.note: str | None = None  # what a pause during preparation will redo
        self._last_event: dict[str, float] = {}
        self._last_control_look = 0.0
        self._lock = threading.Lock()
        self.learn: Any = None
        self.model: Any = None  # the network being trained (on cached features, the head alone)
        self._frozen: tuple[Any, dict[str, Any]] | None = None  # linked body file, if any
        self._features: feats.ExtractedFeatures | None = None  # written or verified here
        self._rng_at_stop: RngStates | None = None
        self.main = distributed.is_main()
        self.commits = BackgroundCommits()
        # Told when a request arrives through the control file (the job records "pausing").
        self.on_request: Callable[[str], None] | None = None

    @property
    def total_iterations(self) -> int:
        return self.record.phase_budget(self.phase)

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress(self, state: RunState) -> Progress:
        """Where this run stands, with an estimate of the time left in this phase."""
        done_here = self.completed_iterations - self.start_iteration
        remaining = None
        if done_here > 0:
            pace = (self.elapsed - self.elapsed_before) / done_here
            remaining = pace * (self.total_iterations - self.completed_iterations)
        return Progress(state, self.phase, self.completed_iterations, self.total_iterations,
                        self.step, self.elapsed, dict(self.metrics), remaining)

    # -- stopping ----------------------------------------------------------------------

    def request_stop(self, reason: str, at_step: int | None = None) -> None:
        """Stop after the batch that reaches optimizer step `at_step` (None: the next one)."""
        with self._lock:
            if self.stop_reason is None or reason == "cancel":
                self.stop_reason, self.stop_at_step = reason, at_step

    def should_stop(self) -> bool:
        self._look_at_control_file()
        if self.stop_reason is None:
            return False
        return self.stop_at_step is None or self.step >= self.stop_at_step

    @property
    def stop_requested(self) -> bool:
        return self.should_stop()

    def stop_agreed(self) -> bool:
        """should_stop(), agreed by every data-parallel worker (rank 0 reads requests)."""
        return distributed.agree(self.should_stop())

    def stopping_after_batch(self) -> None:
        """Called as training stops after a batch: the RNGs are as the next batch finds them."""
        self._rng_at_stop = RngStates.capture()

    def _look_at_control_file(self) -> None:
        # Another process (the CLI, another kernel) asks through control.json.
        now = time.monotonic()
        if not self.main or now - self._last_control_look < CONTROL_POLL_INTERVAL:
            return
        self._last_control_look = now
        found = self.record.read_request()
        if found is not None and self.stop_reason is None:
            action, at_step = found
            self.request_stop("cancel" if action == "stop" else "pause", at_step)
            if self.on_request is not None:
                self.on_request(self.stop_reason)

    # -- the run ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run_phases()
        finally:
            self.commits.wait()  # the run ends when its last checkpoint is on disk
            if self._losses_unsaved is not None:
                self._save_losses(self._losses_unsaved, now=True)

    def _run_phases(self) -> None:
        phases = self.record.parameters.phases
        for phase in phases[phases.index(self.phase):]:
            self.commits.wait()  # a phase starts from its predecessor's last checkpoint
            if phase != self.phase:  # a new phase: its own iterations and metrics
                self.phase, self.completed_iterations, self.metrics = phase, 0, {}
                self.start_iteration, self.pause_point = 0, None
            if self.completed_iterations < self.total_iterations or self.pause_point:
                if phase == "extracting_features":
                    self._extract_features()
                else:
                    self._fit(phase)
            if self.stop_agreed():
                return

    def _fit(self, phase: str) -> None:
        p = self.record.parameters
        on_features = phase == "training" and p.algorithm == "transfer_learning"
        try:
            self.learn = learn = self._feature_learner() if on_features else self._image_learner()
        except Stopped:
            self.note = "paused while decoding images: decoding starts again on resume"
            return  # nothing trained yet in this run: nothing to commit
        lr: Any = p.learning_rate
        if phase == "fine_tuning":  # fastai's discriminative rates: the body learns slower
            lr = slice(p.learning_rate / 200, p.learning_rate / 2)
        cbs = [SeedIterations(p.seed, phase)]
        if self.pause_point is not None:
            cbs.append(ResumeInsideIteration(self.pause_point))
        with learn.no_bar(), learn.no_logging(), distributed.data_parallel(learn):
            learn.fit_one_cycle(self.total_iterations, lr_max=lr, cbs=cbs,
                                start_epoch=self.completed_iterations)
        stopped = self.stop_agreed()
        if self.step == self.committed_step:
            return
        if not stopped:
            self.commit_checkpoint()  # the final iteration is always kept
        elif distributed.agree(self.stop_reason == "pause"):
            self.commit_checkpoint(pause=True)

    def _image_learner(self) -> Any:
        self.model, self._frozen = learners.network(self.record, self.phase), None
        dls = learners.image_dataloaders(self.record, self._decoding_progress)
        augment = AugmentBatch(self.record.parameters.augmentation)
        return learners.learner(self.record, self.phase, self.model, dls,
                                [augment, *self._sink_callbacks()])

    def _feature_learner(self) -> Any:
        dls, self._frozen, n_features = learners.feature_dataloaders(self.record,
                                                                     self._features)
        self.model = learners.head_network(self.record, self.phase, n_features)
        return learners.learner(self.record, self.phase, classifier_of(self.model.head), dls,
                                self._sink_callbacks())

    def _sink_callbacks(self) -> list[Any]:
        interval = self.record.session_parameters.checkpoint_interval
        return [RelayMetrics(self), CheckpointEvery(self, interval), StopOnRequest(self)]

    def _extract_features(self) -> None:
        r, p = self.record, self.record.parameters
        directory, key = r.directory / feats.FEATURES_DIR, r.feature_key()
        self._features = feats.find(directory, key)
        if distributed.agree(self._features is None):
            seed_everything(iteration_seed(p.seed, self.phase, -1))
            model = build_model(p, len(r.classes))
            train, valid = r.split
            share = distributed.share  # each data-parallel worker extracts its share
            try:
                tensors = feats.extract(model, share(train), share(valid), r.classes, p,
                                        self.total_iterations - 2,
                                        progress=self._extraction_progress,
                                        stop=lambda: self.stop_requested,
                                        cache_mb=r.session_parameters.image_cache_mb,
                                        decoding=self._decoding_progress)
            except Stopped:  # while decoding
                tensors = None
            if distributed.agree(tensors is None):  # all or nothing: nothing is kept
                self.note = (f"paused while extracting features (pass "
                             f"{self.completed_iterations + 1} of {self.total_iterations}): "
                             "extraction starts again on resume")
                self.completed_iterations = 0
                return
            tensors = distributed.gather_features(tensors, len(train), len(valid))
            if self.main:
                self._features = feats.save(directory, key, tensors, feats.body_state(model))
            distributed.barrier()  # the other workers read rank 0's features
        self.completed_iterations = self.total_iterations
        self.metrics = {}
        if self.main:
            r.publish(self._report(EventType.REPORT))
            checkpoint = r.store.commit(
                phase=self.phase, iteration=self.completed_iterations, step_number=self.step,
                metrics={}, model_state=None, model=model_record(p, r.classes))
            r.publish({**self._report(EventType.CHECKPOINT), "id": checkpoint.id})
        self.committed_step = self.step

    def _decoding_progress(self, done: int, total: int) -> None:
        if self.stop_requested:
            raise Stopped
        self._stream(EventType.PROGRESS, {"task": "decoding images", "done": done,
                                          "total": total})

    def _extraction_progress(self, n: int, done: int, total: int) -> None:
        self.completed_iterations = n - 1
        self._stream(EventType.PROGRESS, {"task": "extracting features", "iteration": n,
                                          "done": done, "total": total})

    # -- the sink the callbacks call ----------------------------------------------------

    def iteration_started(self, epoch: int) -> Totals:
        """The running totals the iteration starts from (a pause's, when resuming it)."""
        self.iteration_in_progress = epoch + 1
        point, self.batches_in_iteration = self.pause_point, 0
        if point is not None and point.iteration == epoch:
            self.pause_point = None  # resumed: used once
            self.batches_in_iteration = point.batch
            shares = point.rank_totals
            if shares and len(shares) == distributed.world_size():
                return Totals(**shares[distributed.rank()])
            return Totals(**point.totals)
        return Totals()

    def batch_done(self, loss: float) -> None:
        self.step += 1
        self.batches_in_iteration += 1
        self.batch_losses.add(self.phase, self.step, loss)
        self._stream(EventType.BATCH, {"iteration": self.iteration_in_progress, "loss": loss})

    def _stream(self, kind: EventType, fields: dict[str, Any]) -> None:
        """A throttled, unrecorded event: live loss, or progress of a slow preparation."""
        now = time.monotonic()
        if now - self._last_event.get(kind, 0.0) >= BATCH_EVENT_INTERVAL:
            self._last_event[kind] = now  # each kind its own pace: progress never hides loss
            self._publish({"type": kind.value, "phase": self.phase, "step": self.step,
                                 **fields}, persist=False)

    def iteration_done(self, iteration: int, metrics: dict[str, float | None],
                       confusion: list[list[int]] | None = None) -> None:
        self.completed_iterations, self.metrics, self.confusion = iteration, metrics, confusion
        self.batches_in_iteration = 0
        interval = self.record.session_parameters.report_interval
        if iteration % interval == 0 or iteration == self.total_iterations:
            self._publish(self._report(EventType.REPORT))

    def _publish(self, event: dict[str, Any], persist: bool = True) -> None:
        if self.main:  # one voice per run: data-parallel workers other than rank 0 are quiet
            self.record.publish(event, persist)

    def commit_checkpoint(self, pause: bool = False) -> None:
        """Commit the current state; `pause`: a partial one, inside an iteration.

        The state is copied here and written by a background thread (commits.py), so
        training waits only for the copy; a pause waits for the write too."""
        r = self.record
        if not self.main:  # rank 0 writes the session; the others join its gathers
            if pause:
                self._pause_point_now()
            self.committed_step = self.step
            return
        state = self.model.state_dict()  # on cached features the head's, the body linked:
        linked = None if self._frozen is None else {BODY_FILE: self._frozen}
        resume, resume_tensors, metrics, confusion = None, None, self.metrics, self.confusion
        if pause:
            point = self._pause_point_now()
            resume, resume_tensors = point.to_record()
            relay = self.learn.cbs.filter(lambda cb: isinstance(cb, RelayMetrics))[0]
            valid = measure(self.learn.model, self.learn.dls.valid, self.learn.loss_func)
            if relay.in_iteration:  # the iteration's batches so far, and the weights now
                metrics, confusion = metrics_of(relay.train_totals, valid), valid.confusion()
        snapshot = dict(
            phase=self.phase, iteration=self.completed_iterations, step_number=self.step,
            metrics=metrics, model_state=snapshot_of(state),
            model=model_record(r.parameters, r.classes),
            optimizer_state=optimizer_snapshot_of(self.learn.opt.state_dict()),
            linked_files=linked, confusion=confusion, partial=pause, resume=resume,
            resume_tensors=resume_tensors)
        event = self._report(EventType.CHECKPOINT)
        if pause:
            event.update(metrics=dict(metrics), partial=True)
        self.committed_step = self.step
        losses = self.batch_losses.to_record()  # the chart's batch line up to this checkpoint
        self.commits.submit(lambda: self._write_checkpoint(snapshot, event, losses),
                            snapshot_bytes(snapshot["model_state"], snapshot["optimizer_state"]))
        if pause:
            self.commits.wait()

    def _write_checkpoint(self, snapshot: dict[str, Any], event: dict[str, Any],
                          losses: dict[str, Any]) -> None:
        """In the writer thread: the batch losses, the commit, retention, the observers."""
        r = self.record
        self._save_losses(losses, now=snapshot["partial"])
        checkpoint = r.store.commit(**snapshot)
        if not checkpoint.partial:
            sp = r.session_parameters
            r.store.apply_retention(sp.keep_last, sp.keep_best, sp.best_metric)
        r.publish({**event, "id": checkpoint.id})

    def _save_losses(self, losses: dict[str, Any], now: bool) -> None:
        """Write the batch line `now`, or when the last write is a second old; else keep it
        for the next checkpoint or the run's end (a file a checkpoint costs milliseconds)."""
        if now or time.monotonic() - self._losses_saved_at >= LOSSES_SAVE_INTERVAL:
            BatchLosses.save(self.record.directory, losses)
            self._losses_saved_at, self._losses_unsaved = time.monotonic(), None
        else:
            self._losses_unsaved = losses

    def _pause_point_now(self) -> PausePoint:
        relay = self.learn.cbs.filter(lambda cb: isinstance(cb, RelayMetrics))[0]
        inside = relay.in_iteration
        totals = relay.train_totals.to_dict() if inside else Totals().to_dict()
        every_rank = distributed.gather_to_main(totals)  # each worker's share of the totals
        return PausePoint(
            iteration=self.completed_iterations,
            batch=self.batches_in_iteration if inside else 0,
            # fastai's count for the pass that stopped (a data-parallel worker's share)
            batches=self.learn.n_iter if inside else len(self.learn.dls.train),
            order=self.learn.dls.train.order if inside else None,
            totals=totals, rank_totals=every_rank if distributed.is_distributed() else None,
            rng=self._rng_at_stop if inside else RngStates.capture())

    def _report(self, kind: EventType) -> dict[str, Any]:
        return {"type": kind.value, "phase": self.phase, "iteration": self.completed_iterations,
                "total_iterations": self.total_iterations, "step": self.step,
                "elapsed": round(self.elapsed, 3), "metrics": dict(self.metrics)}
