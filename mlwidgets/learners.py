"""The networks, loaders and fastai Learners a training run trains, phase by phase.

Each phase continues from the session's latest checkpoint: its weights always, its
optimizer state when it belongs to the same phase. Everything that reads checkpoints
checks them against the network first (names and shapes, parameter counts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastai.learner import Learner, event

from . import features as feats
from .loaders import make_dataloaders
from .models import build_head, build_model
from .resume import iteration_seed, seed_everything

if TYPE_CHECKING:
    from .record import SessionRecord


def network(record: SessionRecord, phase: str) -> Any:
    """The whole network: the latest checkpoint's weights, or its first (pretrained) ones."""
    latest = record.latest_checkpoint
    trained = latest is not None and latest.has_model
    seed_everything(iteration_seed(record.parameters.seed, phase, -1))  # a seeded init
    model = build_model(record.parameters, len(record.classes), with_weights=not trained)
    if trained:
        model.load_state_dict(latest.load_model_state(expected=model.state_dict()))
    return model


def head_network(record: SessionRecord, phase: str, n_features: int) -> Any:
    """Transfer learning's head alone, its weights named as in the whole network
    (`head.…`): the latest checkpoint's, or its seeded first ones. The frozen extractor
    is not built: the head trains on its cached features."""
    from collections import OrderedDict

    from torch import nn

    latest = record.latest_checkpoint
    seed_everything(iteration_seed(record.parameters.seed, phase, -1))
    head = build_head(record.parameters, n_features, len(record.classes))
    model = nn.Sequential(OrderedDict(head=head))
    if latest is not None and latest.has_model:
        model.load_state_dict(latest.load_model_state(expected=model.state_dict(),
                                                      head_only=True))
    return model


def learner(record: SessionRecord, phase: str, model: Any, dls: Any, cbs: list[Any]) -> Any:
    """A fastai Learner (Adam, cross-entropy) with the phase's optimizer state, if any."""
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    import torch
    from fastai.optimizer import Adam

    splitter = _body_and_head if hasattr(model, "body") else _all_together
    learn = QuickDispatchLearner(dls, model, loss_func=torch.nn.CrossEntropyLoss(),
                                 opt_func=Adam, cbs=cbs, splitter=splitter)
    learn.create_opt()
    if phase == "fine_tuning":
        learn.unfreeze()  # before loading the optimizer state: unfreezing clears it
    latest = record.latest_checkpoint
    # An optimizer's state belongs to its phase: a new phase starts afresh.
    if latest is not None and latest.phase == phase:
        n_params = sum(len(group) for group in learn.opt.param_lists)
        optimizer_state = latest.load_optimizer_state(n_params=n_params)
        if optimizer_state is not None:
            learn.opt.load_state_dict(optimizer_state)
    return learn


def image_dataloaders(record: SessionRecord, progress: Callable[[int, int], None]) -> Any:
    """Loaders over the session's images: decoded once into RAM when they fit (see
    image_cache.py), `progress(done, total)` meanwhile."""
    from fastai.torch_core import default_device

    p = record.parameters
    train, valid = record.split
    return make_dataloaders(train, valid, record.classes, p.image_size, p.batch_size,
                            device=default_device(),
                            cache_mb=record.session_parameters.image_cache_mb,
                            progress=progress)


def feature_dataloaders(record: SessionRecord,
                        cached: feats.ExtractedFeatures | None = None) -> tuple[Any, Any, int]:
    """(loaders over the cached features, the frozen body's file record, the feature size):
    `cached` when this run has just written or verified them, else read from the session."""
    from fastai.data.core import DataLoaders

    from .image_cache import GatheringDataLoader, TensorRows

    if cached is None:
        cached = feats.find(record.directory / feats.FEATURES_DIR, record.feature_key())
    if cached is None:
        raise RuntimeError(f"the extracted features of {record.directory} are missing; "
                           "start again from a new session or reuse another's features")
    t = cached.tensors
    train = TensorRows(t["train_x"], t["train_y"])
    bs = min(record.parameters.batch_size, len(train))
    # Seeded loaders: fastai's own draws its generator from Python's global RNG when made.
    dls = DataLoaders(
        GatheringDataLoader(train, bs=bs, shuffle=True, drop_last=len(train) > bs),
        GatheringDataLoader(TensorRows(t["valid_x"], t["valid_y"]), bs=bs * 2),
        device="cpu")
    return dls, cached.body_file, t["train_x"].shape[1]


class QuickDispatchLearner(Learner):
    """fastai's Learner, calling each event only on the callbacks that handle it.

    fastai asks every callback about every event (9 callbacks, 7 events a batch), and a
    callback finds a handler missing only after asking the Learner and then the model
    (fastcore's attribute delegation): more Python than a linear head's whole step on
    cached features. Each handler still runs through `Callback.__call__` (its run flags
    and error wrapping), and `after_fit` still reaches every callback (it resets `run`)."""

    def __call__(self, event_name: Any) -> None:
        for name in [event_name] if isinstance(event_name, str) else event_name:
            self._call_one(name)

    def _call_one(self, event_name: str) -> None:
        if not hasattr(event, event_name):
            raise ValueError(f"missing {event_name}")
        for cb in self.cbs.sorted("order"):
            if event_name == "after_fit" or _handles(cb, event_name):
                cb(event_name)


def _handles(cb: Any, event_name: str) -> bool:
    """Whether `cb` has its own handler for `event_name` (a method, or one passed in)."""
    return hasattr(type(cb), event_name) or event_name in vars(cb)


def _body_and_head(model: Any) -> list[list[Any]]:
    return [list(model.body.parameters()), list(model.head.parameters())]


def _all_together(model: Any) -> list[list[Any]]:
    return [list(model.parameters())]
