"""Two-phase transfer learning: extract features once, train a classifier on them,
optionally fine-tune; checkpoints of every phase behave like any other."""

import numpy as np
import pytest
import torch
from conftest import TINY

import mlwidgets as mw
from mlwidgets import features
from mlwidgets.checkpoints import CheckpointError
from mlwidgets.coreml import verify
from mlwidgets.models import build_model


def transfer(backbone, **changes):
    return TINY.replace(weights_file=backbone, **{"max_iterations": 3, **changes})


@pytest.fixture(scope="module")
def transferred(tiny_data, backbone, tmp_path_factory):
    session = mw.TrainingSession.create(tiny_data, transfer(backbone),
                                        tmp_path_factory.mktemp("t") / "s")
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    return session


def test_weights_make_transfer_learning_the_default(backbone):
    params = transfer(backbone)
    assert params.algorithm == "transfer_learning"
    assert params.phases == ["extracting_features", "training"]
    with pytest.raises(ValueError, match="pretrained"):
        mw.ModelParameters(feature_extractor=None, algorithm="transfer_learning")


def test_features_are_extracted_once_then_the_classifier_trains(transferred):
    phases = [(c.phase, c.iteration) for c in transferred.checkpoints]
    assert phases == [("extracting_features", 2), ("training", 1), ("training", 2),
                      ("training", 3)]
    extracting = transferred.checkpoints[0]
    with pytest.raises(CheckpointError, match="no trained classifier"):
        mw.ImageClassifier.from_checkpoint(extracting)
    reports = [e["phase"] for e in transferred.events if e["type"] == "report"]
    assert reports[0] == "extracting_features" and reports[-1] == "training"


def test_a_training_checkpoint_is_a_whole_classifier(transferred, tiny_data):
    checkpoint = transferred.checkpoints[-1]
    classifier = mw.ImageClassifier.from_checkpoint(checkpoint)
    # The restored network = the frozen backbone + the trained head: on the validation
    # images it gives exactly the head applied to the cached features.
    cached = features.find(transferred.directory / "features", transferred.feature_key())
    head = torch.nn.Linear(256, 3)
    head.load_state_dict({"weight": checkpoint.load_model_state()["head.2.weight"],
                          "bias": checkpoint.load_model_state()["head.2.bias"]})
    with torch.no_grad():
        expected = torch.softmax(head(cached.tensors["valid_x"]), dim=1).numpy()
    valid = [item.path for item in transferred.split[1]]
    assert np.abs(classifier.probabilities(valid) - expected).max() < 1e-5


def test_the_head_alone_is_read_without_the_frozen_body(transferred, monkeypatch):
    checkpoint = transferred.checkpoints[-1]
    whole = checkpoint.load_model_state()
    read: list[str] = []
    real = type(checkpoint).read_verified
    monkeypatch.setattr(type(checkpoint), "read_verified",
                        lambda self, name: read.append(name) or real(self, name))
    head = checkpoint.load_model_state(head_only=True)
    assert read == ["model.safetensors"]  # the body is by far the largest file
    assert head.keys() == {k for k in whole if k.startswith("head.")}
    for key, tensor in head.items():
        assert torch.equal(tensor, whole[key])


def test_the_frozen_backbone_is_stored_once(transferred):
    training = [c for c in transferred.checkpoints if c.phase == "training"]
    inodes = {(c.path / "body.safetensors").stat().st_ino for c in training}
    cached = features.find(transferred.directory / "features", transferred.feature_key())
    assert inodes == {(cached.directory / "body.safetensors").stat().st_ino}
    for c in training:
        c.verify()


def test_a_training_checkpoint_exports_and_verifies(transferred, tmp_path):
    classifier = mw.ImageClassifier.from_checkpoint(transferred.checkpoints[-1])
    result = classifier.write(tmp_path / "transfer.mlpackage")
    report = verify(result.path, classifier, [i.path for i in transferred.split[1]])
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-4


def test_another_session_reuses_the_features(transferred, tiny_data, backbone, tmp_path,
                                             monkeypatch):
    session = mw.TrainingSession.create(tiny_data, transfer(backbone), tmp_path / "again")
    session.reuse_extracted_features(transferred.directory)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(features, "extract", no_extraction)
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    assert session.checkpoints[0].phase == "extracting_features"
    with pytest.raises(ValueError, match="already has checkpoints"):
        session.reuse_extracted_features(transferred)


def test_features_of_other_settings_are_refused(transferred, tiny_data, backbone, tmp_path):
    other = mw.TrainingSession.create(tiny_data, transfer(backbone, image_size=48),
                                      tmp_path / "other")
    with pytest.raises(ValueError, match="no features extracted from the same"):
        other.reuse_extracted_features(transferred)


def test_fine_tuning_continues_the_timeline(tiny_data, backbone, tmp_path):
    params = transfer(backbone, max_iterations=2, fine_tune_iterations=2,
                      augmentation=mw.Augmentation(flip=True), feature_views=1)
    session = mw.TrainingSession.create(tiny_data, params, tmp_path / "ft")
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    phases = [(c.phase, c.iteration) for c in session.checkpoints]
    assert phases == [("extracting_features", 3), ("training", 1), ("training", 2),
                      ("fine_tuning", 1), ("fine_tuning", 2)]
    steps = [c.step_number for c in session.checkpoints]
    assert steps == sorted(steps)
    last = session.checkpoints[-1]
    assert "body.safetensors" not in last.files  # fine-tuning changes the whole network
    mw.ImageClassifier.from_checkpoint(last).predict(tiny_data.items[0].path)
    assert session.progress.phase == "done"


def test_transfer_learning_from_the_terminal(tiny_data_dir, backbone, tmp_path):
    from test_cli import cli

    result = cli("train", tiny_data_dir, "--session", tmp_path / "cli", "--image-size", "32",
                 "--iterations", "2", "--weights-file", backbone, "--classifier", "mlp")
    assert result.returncode == 0, result.stderr
    assert "extracted features" in result.stdout and "iteration   2/2" in result.stdout
    session = mw.TrainingSession.restore(tmp_path / "cli")
    assert session.parameters.algorithm == "transfer_learning"
    assert session.parameters.classifier == "mlp"


def test_pausing_while_the_classifier_trains_resumes_from_the_features(tiny_data, backbone,
                                                                       tmp_path):
    session = mw.TrainingSession.create(tiny_data, transfer(backbone, max_iterations=5),
                                        tmp_path / "p")

    def pause_after_first_training_report(event):
        # Reports come from the training thread (checkpoint events from the writer thread,
        # which may lag): the pause lands in the next iteration's first batch.
        if event["type"] == "report" and event["phase"] == "training":
            session.pause(wait=False)

    unsubscribe = session.on_event(pause_after_first_training_report)
    job = session.start()
    assert job.wait(300) and job.state == "paused", job.error
    unsubscribe()
    paused_at = session.latest_checkpoint
    assert paused_at.phase == "training" and paused_at.iteration < 5

    restored = mw.TrainingSession.restore(session.directory)
    job = restored.resume()
    assert job.wait(300) and job.state == "completed", job.error
    resumed = [e for e in restored.events if e["time"] > paused_at.created_at]
    assert {e["phase"] for e in resumed if e["type"] in ("report", "checkpoint")} == {"training"}
    phases = [(c.phase, c.iteration) for c in restored.checkpoints]
    assert phases[0][0] == "extracting_features" and phases[-1] == ("training", 5)
    steps = [c.step_number for c in restored.checkpoints]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    mw.ImageClassifier.from_checkpoint(restored.checkpoints[-1]).predict(tiny_data.items[0].path)


def test_augmented_views_decode_the_images_once_and_give_the_same_features(tiny_data, backbone):
    params = transfer(backbone, augmentation=mw.Augmentation(flip=True, noise=0.05))
    train, valid = tiny_data.items[:40], tiny_data.items[40:]
    decoded = []

    def extract(cache_mb):
        return features.extract(build_model(params, 3), train, valid, tiny_data.classes,
                                params, views=2, cache_mb=cache_mb,
                                decoding=lambda done, total: decoded.append((done, total)))

    streamed = extract(0)
    assert decoded == []  # cache off: every pass reads the files
    cached = extract(None)
    assert decoded[-1] == (40, 40)  # the training images, decoded once for all passes
    assert streamed.keys() == cached.keys()
    for name in streamed:
        assert torch.equal(streamed[name], cached[name]), name


def test_the_classifier_trains_on_cached_features_without_building_the_backbone(
        tiny_data, backbone, tmp_path, monkeypatch):
    from mlwidgets import learners

    params = transfer(backbone)
    # Its first weights are those of the whole network's head.
    whole = build_model(params, 3).head.state_dict()
    alone = learners.build_head(params, 256, 3).state_dict()
    assert whole.keys() == alone.keys()
    assert all(torch.equal(whole[k], alone[k]) for k in whole)

    def no_backbone(*args, **kwargs):
        raise AssertionError("the head phase built the whole network")

    session = mw.TrainingSession.create(tiny_data, params, tmp_path / "s")
    monkeypatch.setattr(learners, "build_model", no_backbone)
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    assert [c.phase for c in session.checkpoints][-1] == "training"


def test_saved_features_are_what_a_later_run_reads_back(tmp_path):
    """The run that extracts trains on what `save` returns, unread: it must be exactly what
    a resumed run reads back, verified; features already there are kept and returned."""
    key = {"backbone": "test", "views": 1}
    tensors = {"train_x": torch.randn(6, 4), "train_y": torch.arange(6) % 2,
               "valid_x": torch.randn(2, 4), "valid_y": torch.arange(2)}
    body = {"conv.weight": torch.randn(3, 3)}
    saved = features.save(tmp_path, key, tensors, body)
    found = features.find(tmp_path, key)
    assert saved.directory == found.directory and saved.record == found.record
    assert saved.body_file == found.body_file
    for name, tensor in found.tensors.items():
        assert torch.equal(saved.tensors[name], tensor)
    other = {name: t + 1 if t.is_floating_point() else t for name, t in tensors.items()}
    again = features.save(tmp_path, key, other, body)  # another run got there first
    assert torch.equal(again.tensors["train_x"], tensors["train_x"])
