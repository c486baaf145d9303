"""The checkpoint store: atomic commits, verification, public shapes, retention."""

import json

import pytest
import torch
from fastai.optimizer import Adam

from mlwidgets.checkpoint_store import CheckpointStore
from mlwidgets.checkpoints import CheckpointError

OPENAI_METRICS = {"step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                  "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"}


def metrics(valid_loss, valid_accuracy=0.5):
    return {"train_loss": 1.0, "train_accuracy": 0.4, "valid_loss": valid_loss,
            "valid_accuracy": valid_accuracy, "batch_valid_loss": valid_loss + 0.1,
            "batch_valid_accuracy": valid_accuracy - 0.1}


def make_store(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", "session-test")
    store.open_for_writing()
    return store


def commit(store, step, valid_loss=1.0, **kw):
    net = torch.nn.Linear(3, 2)
    return store.commit(phase="training", iteration=step // 10, step_number=step,
                        metrics=metrics(valid_loss), model_state=net.state_dict(),
                        model={"architecture": "small_cnn", "classes": ["a", "b"]}, **kw)


def test_tied_weights_views_and_transposes_commit_and_load_back_equal(tmp_path):
    store = make_store(tmp_path)
    w = torch.randn(4, 4)
    state = {"tied.a": w, "tied.b": w, "row": w[1], "transposed": w.t()}
    c = store.commit(phase="training", iteration=1, step_number=3, metrics=metrics(0.5),
                     model_state=state, model={"architecture": "small_cnn"})
    restored = c.load_model_state()
    assert all(torch.equal(restored[k], v) for k, v in state.items())


def test_commit_round_trips_weights_and_optimizer_state(tmp_path):
    store = make_store(tmp_path)
    net = torch.nn.Linear(3, 2)
    opt = Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    c = store.commit(phase="training", iteration=1, step_number=12, metrics=metrics(0.7),
                     model_state=net.state_dict(), model={"architecture": "small_cnn"},
                     optimizer_state=opt.state_dict())
    assert c.id == "000012-training" and (c.path / "model.safetensors").is_file()
    restored = c.load_model_state()
    assert all(torch.equal(restored[k], v) for k, v in net.state_dict().items())
    opt2 = Adam(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    opt2.load_state_dict(c.load_optimizer_state())
    assert opt2.hypers[0]["lr"] == pytest.approx(1e-3)
    before = opt.state_dict()["state"][0]
    after = opt2.state_dict()["state"][0]
    assert torch.equal(before["grad_avg"], after["grad_avg"]) and after["step"] == before["step"]


def test_listing_is_in_time_order_and_finds_latest_and_best(tmp_path):
    store = make_store(tmp_path)
    for step, loss in [(10, 0.9), (20, 0.4), (30, 0.6)]:
        commit(store, step, loss)
    assert [c.step_number for c in store.all()] == [10, 20, 30]
    assert store.latest().step_number == 30
    assert store.best("valid_loss").step_number == 20
    assert store.get("000020-training").metrics["valid_loss"] == 0.4
    with pytest.raises(KeyError, match="nope"):
        store.get("nope")


def test_public_shapes_have_exactly_the_documented_fields(tmp_path):
    c = commit(make_store(tmp_path), 40, 0.5)
    createml = c.to_dict("createml")
    assert set(createml) == {"phase", "iteration", "date", "url", "metrics"}
    assert set(createml["metrics"]) == {"loss", "accuracy", "validationLoss", "validationAccuracy"}
    assert createml["url"].startswith("file://") and createml["url"].endswith("/")
    openai = c.to_dict("openai")
    assert set(openai) == {"object", "id", "created_at", "fine_tuned_model_checkpoint",
                           "step_number", "fine_tuning_job_id", "metrics"}
    assert openai["object"] == "fine_tuning.job.checkpoint"
    assert isinstance(openai["created_at"], int) and openai["fine_tuning_job_id"] == "session-test"
    assert set(openai["metrics"]) == OPENAI_METRICS and openai["metrics"]["step"] == 40
    # valid_* come from the last validation batch, full_valid_* from the whole set.
    assert openai["metrics"]["full_valid_loss"] == 0.5
    assert openai["metrics"]["valid_loss"] == pytest.approx(0.6)
    mistral = c.to_dict("mistral")
    assert set(mistral) == {"metrics", "step_number", "created_at"}
    assert set(mistral["metrics"]) == {"train_loss", "valid_loss", "valid_mean_token_accuracy"}
    json.dumps([c.to_dict(s) for s in ("native", "createml", "openai", "mistral")])
    with pytest.raises(ValueError, match="keras"):
        c.to_dict("keras")


def test_a_flipped_bit_is_refused_naming_the_file_and_others_stay_usable(tmp_path):
    store = make_store(tmp_path)
    good, bad = commit(store, 10), commit(store, 20)
    weights = bad.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="000020-training/model.safetensors"):
        bad.load_model_state()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        bad.verify()
    good.verify()
    assert good.load_model_state()


def test_a_truncated_file_is_refused_naming_the_file(tmp_path):
    c = commit(make_store(tmp_path), 10)
    weights = c.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        c.load_model_state()


def test_directories_without_a_valid_record_are_not_checkpoints(tmp_path):
    store = make_store(tmp_path)
    commit(store, 10)
    (store.directory / "000020-training").mkdir()  # no checkpoint.json
    broken = store.directory / "000030-training"
    broken.mkdir()
    (broken / "checkpoint.json").write_text("{ not json")
    (store.directory / ".tmp-000040-training-abcd").mkdir()  # an interrupted commit
    assert [c.id for c in CheckpointStore(store.directory, "s").all()] == ["000010-training"]
    store.open_for_writing()  # the writer sweeps what interrupted commits left
    assert not (store.directory / ".tmp-000040-training-abcd").exists()


def test_retention_keeps_the_last_n_and_the_best_k(tmp_path):
    store = make_store(tmp_path)
    for step, loss in [(10, 0.9), (20, 0.2), (30, 0.8), (40, 0.7), (50, 0.6)]:
        commit(store, step, loss)
    deleted = store.apply_retention(keep_last=2, keep_best=1, metric="valid_loss")
    assert sorted(deleted) == ["000010-training", "000030-training"]
    assert [c.step_number for c in store.all()] == [20, 40, 50]
    assert store.apply_retention(keep_last=None) == []  # the default keeps everything


def test_a_checkpoint_without_a_classifier_is_refused_clearly(tmp_path):
    store = make_store(tmp_path)
    c = store.commit(phase="extracting_features", iteration=1, step_number=0,
                     metrics={}, model_state=None)
    with pytest.raises(CheckpointError, match="holds no trained classifier"):
        c.load_model_state()


def test_same_step_twice_gets_a_new_name_instead_of_overwriting(tmp_path):
    store = make_store(tmp_path)
    first, second = commit(store, 10), commit(store, 10)
    assert first.id != second.id and len(store.all()) == 2
