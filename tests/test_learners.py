"""learners.QuickDispatchLearner: fastai's training loop, events sent only to the callbacks
that handle them. Everything a callback can see must stay exactly as with fastai's Learner."""

from __future__ import annotations

import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner, event
from fastai.optimizer import Adam

from mlwidgets.image_cache import GatheringDataLoader, TensorRows
from mlwidgets.learners import QuickDispatchLearner

EVENTS = [e for e in dir(event) if not e.startswith("_")]


class EveryEvent(Callback):
    """Records every event it is sent, with the loop's position at that moment."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, bool]] = []

    def _note(self, name: str) -> None:
        learn = self.learn
        self.seen.append((name, getattr(learn, "epoch", -1), getattr(learn, "iter", -1),
                          getattr(learn, "training", None)))


for _name in EVENTS:  # one handler per event, each recording its own name
    setattr(EveryEvent, _name, lambda self, _n=_name: self._note(_n))


class SkipsValidation(Callback):
    """Turns itself off for the rest of a fit after its first validation: `run` is reset
    only by `after_fit`, which must still reach it."""

    def __init__(self) -> None:
        self.validations = 0

    def before_validate(self) -> None:
        self.validations += 1
        self.run = False


def fit(learner_class: type, epochs: int = 2):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    dls = DataLoaders(GatheringDataLoader(TensorRows(x[:30], y[:30]), bs=8, shuffle=True),
                      GatheringDataLoader(TensorRows(x[30:], y[30:]), bs=16), device="cpu")
    recorder, skipper, passed_in = EveryEvent(), SkipsValidation(), []
    kwargs_cb = Callback(after_loss=lambda _cb: passed_in.append(1))  # a handler passed in
    learn = learner_class(dls, torch.nn.Linear(6, 3), loss_func=torch.nn.CrossEntropyLoss(),
                          opt_func=Adam, cbs=[recorder, skipper, kwargs_cb])
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, lr=1e-2)
        learn.fit(1, lr=1e-2)  # a second fit: after_fit turned the skipper back on
    return learn, recorder.seen, skipper.validations, len(passed_in)


@pytest.mark.parametrize("epochs", [1, 3])
def test_every_callback_sees_what_fastais_learner_shows_it(epochs):
    theirs, seen_theirs, skips_theirs, passed_theirs = fit(Learner, epochs)
    ours, seen_ours, skips_ours, passed_ours = fit(QuickDispatchLearner, epochs)
    assert seen_ours == seen_theirs
    assert {name for name, *_ in seen_ours} >= {"before_fit", "after_batch", "after_fit"}
    assert skips_ours == skips_theirs == 2
    assert passed_ours == passed_theirs == 5 * (epochs + 1)  # 4 training batches, 1 valid
    for a, b in zip(ours.model.parameters(), theirs.model.parameters()):
        assert torch.equal(a, b)


def test_an_unknown_event_is_refused_as_fastai_refuses_it():
    learn, *_ = fit(QuickDispatchLearner, 1)
    with pytest.raises(Exception, match="missing before_lunch"):
        learn("before_lunch")
