"""What a Create ML user writes first, in Python form (issue 13).

Each test is a line of Create ML (`MLImageClassifier`, `MLCheckpoint`, `MLTrainingSession`)
as mlwidgets spells it. Training is real but tiny: the quick CNN, 32 px, 2 iterations.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil

import pytest
from conftest import ROOT

import mlwidgets as mw
from mlwidgets.cli import _parser
from mlwidgets.cli import main as cli_main
from mlwidgets.record import split_for

QUICK = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", image_size=32,
                           batch_size=8, max_iterations=2, learning_rate=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> mw.DataSource:
    root = tmp_path_factory.mktemp("shapes")
    mw.datasets.shapes(root, images_per_class=8, image_size=32, classes=("circle", "square"))
    return mw.DataSource.labeled_directories(root)


@pytest.fixture(scope="module")
def clf(data, tmp_path_factory) -> mw.ImageClassifier:
    """`let model = try MLImageClassifier(trainingData: data, parameters: parameters)`"""
    return mw.ImageClassifier(data, QUICK,
                              session_directory=tmp_path_factory.mktemp("init") / "session")


# -- training ------------------------------------------------------------------------------


def test_init_trains_synchronously_in_a_session(clf, data):
    assert clf.session.state == "completed"
    assert clf.checkpoint == clf.session.checkpoint("latest")
    assert clf.checkpoint.iteration == 2
    assert clf.classes == data.classes
    assert clf.predict(data.items[0].path).label in data.classes
    assert clf.model_parameters == QUICK


def test_init_without_a_directory_trains_under_sessions(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clf = mw.ImageClassifier(data, QUICK.replace(max_iterations=1))
    assert clf.session.directory.parent.resolve() == (tmp_path / "sessions").resolve()
    assert clf.checkpoint.iteration == 1


def test_init_takes_a_folder_too(data, tmp_path):
    clf = mw.ImageClassifier(data.origin, QUICK.replace(max_iterations=1),
                             session_directory=tmp_path / "s")
    assert clf.classes == data.classes


def test_init_raises_when_training_fails(tmp_path):
    root = tmp_path / "shapes"
    mw.datasets.shapes(root, images_per_class=4, image_size=32, classes=("circle", "square"))
    data = mw.DataSource.labeled_directories(root)
    broken = data.items[0].path
    broken.write_bytes(b"not an image any more")
    with pytest.raises(RuntimeError, match=f"ended failed.*{broken.name}"):
        mw.ImageClassifier(data, QUICK, session_directory=tmp_path / "s")


def test_from_model_is_the_low_level_constructor(clf):
    bare = mw.ImageClassifier.from_model(clf.model, clf.classes, clf.image_size)
    assert bare.checkpoint is None and bare.session is None and bare.model_parameters is None
    assert not bare.validation_metrics.is_valid
    assert "no session" in bare.validation_metrics.error


def test_train_returns_a_job(data, tmp_path):
    job = mw.ImageClassifier.train(data, QUICK, mw.SessionParameters(
        session_directory=tmp_path / "s", checkpoint_interval=2))
    assert isinstance(job, mw.Job)
    assert job.wait(300) and job.state == "completed", job.error
    result = job.result
    assert isinstance(result, mw.ImageClassifier) and result.checkpoint.iteration == 2
    session = mw.TrainingSession.restore(tmp_path / "s")
    assert [c.iteration for c in session.checkpoints if c.phase == "training"] == [2]


def test_make_training_session_creates_or_restores(data, tmp_path):
    params = mw.SessionParameters(session_directory=tmp_path / "s", iterations=1)
    session = mw.ImageClassifier.make_training_session(data, QUICK, params)
    assert session.state == "initialized" and session.iterations == 1
    again = mw.ImageClassifier.make_training_session(data, QUICK, params)
    assert again.id == session.id and again.directory == session.directory
    job = mw.ImageClassifier.resume(again)
    assert job.wait(300) and job.state == "completed", job.error
    done = mw.ImageClassifier.make_training_session(data, QUICK, params)
    assert done.id == session.id and done.state == "completed"
    with pytest.raises(FileExistsError, match="seed"):
        mw.ImageClassifier.make_training_session(data, QUICK.replace(seed=9), params)


def test_restore_training_session(clf):
    directory = clf.session.directory
    by_params = mw.ImageClassifier.restore_training_session(
        mw.SessionParameters(session_directory=directory))
    assert by_params.id == clf.session.id
    assert mw.ImageClassifier.restore_training_session(directory).id == clf.session.id
    with pytest.raises(ValueError, match="session_directory"):
        mw.ImageClassifier.restore_training_session(mw.SessionParameters())


def test_create_takes_session_parameters_and_restores_an_existing_session(data, tmp_path):
    params = mw.SessionParameters(session_directory=tmp_path / "s", report_interval=2,
                                  checkpoint_interval=2, iterations=4)
    session = mw.TrainingSession.create(data, QUICK, params)
    sp = session.session_parameters
    assert (sp.report_interval, sp.checkpoint_interval, sp.iterations) == (2, 2, 4)
    assert sp.session_directory == str(tmp_path / "s")
    assert mw.TrainingSession.create(data, QUICK, params).id == session.id
    assert mw.TrainingSession.create(data, QUICK, tmp_path / "s").id == session.id
    assert mw.TrainingSession.restore(params).id == session.id
    other = mw.DataSource(data.items[:-1], origin="fewer")
    with pytest.raises(FileExistsError, match="other data"):
        mw.TrainingSession.create(other, QUICK, params)


# -- metrics and parameters of a trained classifier -----------------------------------------


def test_training_and_validation_metrics(clf):
    train, valid = clf.session.split
    assert clf.training_metrics.is_valid and clf.validation_metrics.is_valid
    assert len(clf.training_metrics.labels) == len(train)
    assert len(clf.validation_metrics.labels) == len(valid)
    assert clf.training_metrics is clf.training_metrics  # computed once, then cached
    assert 0 <= clf.validation_metrics.accuracy <= 1
    assert clf.validation_metrics.error is None
    restored = mw.ImageClassifier.from_checkpoint(clf.checkpoint.path)
    assert restored.model_parameters == QUICK
    assert restored.validation_metrics.accuracy == clf.validation_metrics.accuracy


@pytest.fixture(scope="module")
def no_validation(data, tmp_path_factory) -> mw.ImageClassifier:
    return mw.ImageClassifier(data, QUICK.replace(validation=0, max_iterations=1),
                              session_directory=tmp_path_factory.mktemp("nv") / "s")


def test_metrics_without_validation_data_are_invalid_not_an_exception(no_validation, data):
    assert no_validation.session.split[1] == []
    metrics = no_validation.validation_metrics
    assert metrics.is_valid is False and "no validation data" in metrics.error
    assert "invalid" in repr(metrics) and metrics.to_dict()["is_valid"] is False
    with pytest.raises(ValueError, match="no validation data"):
        _ = metrics.accuracy
    assert no_validation.training_metrics.is_valid
    assert len(no_validation.training_metrics.labels) == len(data)


def test_classifier_metrics_is_valid_and_error():
    good = mw.ClassifierMetrics.from_predictions(["a", "b"], ["a", "b"], ["a", "a"])
    assert good.is_valid and good.error is None and good.accuracy == 0.5
    bad = mw.ClassifierMetrics.invalid("the images are gone", ["a", "b"])
    assert not bad.is_valid and bad.error == "the images are gone"
    assert bad.summary() == "no metrics: the images are gone"


def test_evaluation_takes_a_folder(clf, data):
    by_folder = clf.evaluation(data.origin)
    assert len(by_folder.labels) == len(data)
    assert by_folder.accuracy == clf.evaluation(data).accuracy
    with pytest.raises(TypeError, match="DataSource or a folder"):
        clf.evaluation(42)


def test_write_takes_a_metadata_dict(clf, tmp_path):
    ct = pytest.importorskip("coremltools")
    path = tmp_path / "Shapes.mlpackage"
    clf.write(path, {"author": "Ada", "shortDescription": "Shapes", "license": "MIT"})
    meta = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description.metadata
    assert (meta.author, meta.shortDescription, meta.license) == ("Ada", "Shapes", "MIT")
    with pytest.raises(TypeError, match="colour"):
        clf.write(tmp_path / "x.mlpackage", {"colour": "red"})
    with pytest.raises(TypeError, match="ModelMetadata or a dict"):
        clf.write(tmp_path / "x.mlpackage", "Ada")


# -- data -----------------------------------------------------------------------------------


def test_stratified_split(data):
    train, test = data.stratified_split([0.75, 0.25], seed=5)
    assert isinstance(train, mw.DataSource) and isinstance(test, mw.DataSource)
    assert train.summary()["images"].tolist() == [6, 6]
    assert test.summary()["images"].tolist() == [2, 2]
    assert not {i.path for i in train.items} & {i.path for i in test.items}
    again = data.stratified_split([0.75, 0.25], seed=5)[1]
    assert [i.path for i in again.items] == [i.path for i in test.items]
    other = data.stratified_split([0.75, 0.25], seed=6)[1]
    assert [i.path for i in other.items] != [i.path for i in test.items]
    a, b, c = data.stratified_split([0.5, 0.25, 0.25], seed=0)
    assert (len(a), len(b), len(c)) == (8, 4, 4)
    with pytest.raises(ValueError, match="sum to at most 1"):
        data.stratified_split([0.8, 0.4])
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        data.stratified_split([0.95, 0.05])


# -- sessions and checkpoints ---------------------------------------------------------------


def test_remove_checkpoints(clf, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(clf.session.directory, copy)
    session = mw.TrainingSession.restore(copy)
    first, latest = session.checkpoints
    assert session.remove_checkpoints(lambda c: c.iteration == 1) == [first.id]
    assert [c.id for c in session.checkpoints] == [latest.id]
    assert session.remove_checkpoints([]) == []
    assert session.remove_checkpoints(["latest"]) == [latest.id]
    assert session.checkpoints == []


def test_checkpoint_from_dict_round_trips_every_style_through_json(clf):
    checkpoint = clf.checkpoint
    assert checkpoint.optimizer, "a training checkpoint records its optimizer"
    native = json.loads(json.dumps(checkpoint.to_dict()))
    assert mw.Checkpoint.from_dict(native) == checkpoint  # every field, exactly
    assert mw.Checkpoint.from_dict(native).load_model_state().keys() == \
        checkpoint.load_model_state().keys()
    for style in ("createml", "openai", "mistral"):
        written = json.loads(json.dumps(checkpoint.to_dict(style)))
        decoded = mw.Checkpoint.from_dict(written)
        assert decoded.to_dict(style) == written, style
        assert mw.Checkpoint.from_dict(written, style=style) == decoded
    createml = mw.Checkpoint.from_dict(checkpoint.to_dict("createml"))
    assert (createml.phase, createml.iteration, createml.path) == (
        checkpoint.phase, checkpoint.iteration, checkpoint.path.resolve())
    assert createml.metrics["valid_loss"] == checkpoint.metrics["valid_loss"]
    openai = mw.Checkpoint.from_dict(checkpoint.to_dict("openai"))
    assert (openai.id, openai.session_id, openai.step_number) == (
        checkpoint.id, checkpoint.session_id, checkpoint.step_number)
    with pytest.raises(ValueError, match="style"):
        mw.Checkpoint.from_dict({"colour": "red"})


def test_openai_style_leaves_out_metrics_that_do_not_exist(no_validation, clf):
    metrics = no_validation.checkpoint.to_dict("openai")["metrics"]
    assert None not in metrics.values()
    assert {"step", "train_loss", "train_mean_token_accuracy"} <= set(metrics)
    assert not {"valid_loss", "full_valid_loss", "full_valid_mean_token_accuracy"} & set(metrics)
    with_validation = clf.checkpoint.to_dict("openai")["metrics"]
    assert {"full_valid_loss", "full_valid_mean_token_accuracy"} <= set(with_validation)


def test_every_identifier_the_styles_print_finds_the_checkpoint(clf):
    session, checkpoint = clf.session, clf.checkpoint
    openai = checkpoint.to_dict("openai")
    for name in (checkpoint.id, openai["id"], openai["fine_tuned_model_checkpoint"],
                 checkpoint.to_dict("createml")["url"], 2, "2", "latest"):
        assert session.checkpoint(name) == checkpoint, name
    assert session.checkpoint(1).iteration == 1
    assert session.checkpoint("best") == session.best_checkpoint()
    with pytest.raises(KeyError, match="fine_tuned_model_checkpoint"):
        session.checkpoint("ckpt-nope")


def test_cli_checkpoint_takes_the_openai_name(clf, data, capsys):
    name = clf.checkpoint.to_dict("openai")["fine_tuned_model_checkpoint"]
    image = str(data.items[0].path)
    assert cli_main(["predict", image, "--session", str(clf.session.directory),
                     "--checkpoint", name, "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)[0]
    assert ours["label"] == clf.predict(image).label


# -- parameters -----------------------------------------------------------------------------


def test_max_iterations_defaults_to_25_where_a_default_is_shown():
    assert mw.ModelParameters().max_iterations == 25
    train = _parser().parse_args(["train", "data", "--session", "s"])
    assert train.iterations in (None, 25)  # None: ModelParameters' default
    commands = _parser()._subparsers._group_actions[0].choices
    assert "25" in " ".join(commands["train"].format_help().split())
    from mlwidgets.ui.parameters import ParameterForm  # the Studio's form

    assert ParameterForm().iterations.value == 25


def test_augmentation_flags_mean_a_moderate_strength():
    flags = mw.Augmentation(flip=True, rotation=True, crop=True, blur=True, exposure=True,
                            noise=True)
    assert flags == mw.Augmentation.all()
    assert mw.Augmentation(rotation=True).rotation == 15.0
    assert mw.Augmentation(rotation=False, noise=0.1) == mw.Augmentation(noise=0.1)
    assert mw.Augmentation(rotation=30).rotation == 30.0
    for bad in ({"rotation": "lots"}, {"noise": -1}, {"flip": 2}, {"crop": None}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mw.Augmentation(**bad)


@pytest.mark.parametrize("none", [0, 0.0, "none"])
def test_validation_zero_means_none(none, data):
    params = QUICK.replace(validation=none)
    assert params.validation == "none"
    assert split_for(data, params)[1] == []


@pytest.mark.parametrize("bad", [1, 1.0, 2, -0.5, True, "data_source", "sometimes", [0.2]])
def test_other_validation_values_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match="validation"):
        mw.ModelParameters(validation=bad)


def test_the_records_data_source_marker_still_restores(data):
    other = mw.DataSource(data.items[:2] + data.items[-2:], origin="held out", check=False)
    params = QUICK.replace(validation=other)
    stored = json.loads(json.dumps(params.to_dict()))
    assert stored["validation"] == "data_source"
    restored = mw.ModelParameters.from_dict(stored)
    assert restored.validation == "data_source"
    assert restored.replace(seed=3).validation == "data_source"
    assert mw.ModelParameters(validation=0.25).validation == 0.25


def test_a_session_with_separate_validation_data_restores(data, tmp_path):
    train, held_out = data.stratified_split([0.75, 0.25], seed=1)
    params = QUICK.replace(validation=held_out, max_iterations=1)
    session = mw.TrainingSession.create(train, params, tmp_path / "s")
    restored = mw.TrainingSession.restore(tmp_path / "s")
    assert restored.parameters.validation == "data_source"
    assert len(restored.split[1]) == len(held_out)
    assert mw.TrainingSession.create(train, params, tmp_path / "s").id == session.id


# -- README: "Coming from Create ML" --------------------------------------------------------

# Every type, method, property and enum case of the two seed documents (Create ML's
# MLImageClassifier and MLCheckpoint pages), as the table's first column must name them.
SEED_NAMES = [
    "MLImageClassifier", "init(trainingData:parameters:)", "init(checkpoint:)",
    "makeTrainingSession(trainingData:parameters:sessionParameters:)",
    "train(trainingData:parameters:sessionParameters:)", "resume(_:)",
    "restoreTrainingSession(sessionParameters:)", "evaluation(on:)", "trainingMetrics",
    "validationMetrics", "prediction(from:)", "predictions(from:)", "write(to:metadata:)",
    "write(toFile:metadata:)", "model", "modelParameters", "description", "debugDescription",
    "playgroundDescription", "MLImageClassifier.DataSource", "MLImageClassifier.ModelParameters",
    "MLImageClassifier.FeatureExtractorType", "MLImageClassifier.CustomFeatureExtractor",
    "MLImageClassifier.ImageAugmentationOptions", "MLClassifierMetrics", "MLModelMetadata",
    "MLCheckpoint", "MLCheckpoint.phase", "MLPhase", "MLCheckpoint.iteration",
    "MLCheckpoint.date", "MLCheckpoint.url", "MLCheckpoint.metrics", "MLProgress.Metric",
    "encode(to:)", "init(from:)", "MLJob", "MLTrainingSession", "MLTrainingSessionParameters",
    "Copyable", "Sendable", "SendableMetatype", "CustomStringConvertible",
    "CustomDebugStringConvertible", "CustomPlaygroundDisplayConvertible",
]


def _table_rows() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Coming from Create ML", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    assert rows[0] == ["Create ML", "mlwidgets", "notes"]
    assert all(len(row) == 3 for row in rows), [row for row in rows if len(row) != 3]
    return rows[1:]


def _resolve(name: str, roots: dict) -> None:
    """`mw.X.y`, `clf.y`, `mw.X(a=..., b=...)`, `str(clf)`: every part must exist."""
    name = re.sub(r"^(str|repr)\((\w+)\)$", r"\2", name)
    call = re.fullmatch(r"([\w.]+)\((.*)\)", name)
    path, args = (call[1], call[2]) if call else (name, "")
    head, *rest = path.split(".")
    assert head in roots, f"{name}: unknown name {head!r}"
    obj = roots[head]
    for part in rest:
        assert hasattr(obj, part), f"{name}: {obj!r} has no {part!r}"
        obj = getattr(obj, part)
    for keyword in re.findall(r"(\w+)=", args):
        assert keyword in inspect.signature(obj).parameters, f"{name}: no parameter {keyword}"


def test_coming_from_create_ml_covers_both_seed_documents():
    named = {re.sub(r"^`|`$", "", part.strip()) for row in _table_rows()
             for part in row[0].split("`, `")}
    assert not [n for n in SEED_NAMES if n not in named]


def test_every_name_in_coming_from_create_ml_exists(clf, data):
    # What the table's short names stand for (instances: some attributes are set in __init__).
    roots = {"mw": mw, "clf": clf, "session": clf.session, "checkpoint": clf.checkpoint,
             "data": data, "metrics": clf.validation_metrics, "job": mw.Job}
    for create_ml, ours, notes in _table_rows():
        if ours == "not applicable":
            assert notes, f"{create_ml}: not applicable needs a reason"
            continue
        names = re.findall(r"`([^`]+)`", ours)
        assert names, f"{create_ml}: no mlwidgets name"
        for name in names:
            _resolve(name, roots)
