"""Core ML export: the file an iOS developer gets is what Create ML would have written.

coremltools converts on Linux but cannot run predictions here, so these tests read the
saved files back and check their spec; the numbers are checked by the verifier's tests.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_python

import mlwidgets as mw
from mlwidgets.coreml import CONVERTIBLE_ARCHITECTURES, ExportError, ModelMetadata, exports_of
from mlwidgets.coreml.metadata import default_short_description
from mlwidgets.models import build_model
from mlwidgets.parameters import ARCHITECTURES, ModelParameters

ct = pytest.importorskip("coremltools")
# The package's `export` attribute is the function; the module is reached by its full name.
export_module = importlib.import_module("mlwidgets.coreml.export")

CLASSES = ["cat", "dog", "fox"]
METADATA = ModelMetadata(author="Ada", short_description="Shapes", license="MIT",
                         version="1.2", additional={"dataset": "shapes", "note": "été ✓"})


def fresh(architecture: str = "small_cnn", size: int = 32) -> mw.ImageClassifier:
    model = build_model(ModelParameters(architecture=architecture, image_size=size), 3)
    return mw.ImageClassifier.from_model(model, CLASSES, size)


def spec_of(path: Path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def class_labels(spec) -> list[str]:
    if spec.WhichOneof("Type") == "neuralNetworkClassifier":
        return list(spec.neuralNetworkClassifier.stringClassLabels.vector)
    main = spec.mlProgram.functions["main"]
    for block in main.block_specializations.values():
        for op in block.operations:
            if op.type == "classify":
                values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                return [v.immediateValue.tensor.strings.values[0] for v in values]
    raise AssertionError("no classify op in the ML program")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def session_dir(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the trained session: exports add records to it."""
    copy = tmp_path_factory.mktemp("export") / "session"
    shutil.copytree(trained_dir, copy)
    return copy


@pytest.fixture(scope="module")
def from_session(session_dir: Path) -> mw.ImageClassifier:
    checkpoint = mw.TrainingSession.restore(session_dir).checkpoint("best")
    return mw.ImageClassifier.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def package(from_session: mw.ImageClassifier, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("out") / "Shapes.mlpackage"
    return from_session.write(path, METADATA), from_session


def test_package_is_an_image_classifier_ml_program(package):
    result, classifier = package
    assert result.format == "mlprogram" and result.path.is_dir()
    assert result.size_bytes == size_of(result.path) and result.seconds > 0
    spec = spec_of(result.path)
    assert spec.WhichOneof("Type") == "mlProgram"
    [image] = spec.description.input
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (32, 32)
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert "32×32" in image.shortDescription and ".centerCrop" in image.shortDescription
    outputs = {o.name: o for o in spec.description.output}
    assert set(outputs) == {"classLabel", "classLabelProbs"}
    assert outputs["classLabel"].type.WhichOneof("Type") == "stringType"
    probs = outputs["classLabelProbs"].type
    assert probs.WhichOneof("Type") == "dictionaryType"
    assert probs.dictionaryType.WhichOneof("KeyType") == "stringKeyType"
    assert all(o.shortDescription for o in outputs.values())
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabelProbs"
    assert class_labels(spec) == classifier.classes == ["circle", "square", "triangle"]
    # The program itself produces the renamed output, or a Mac could not compile it.
    [block] = spec.mlProgram.functions["main"].block_specializations.values()
    assert list(block.outputs) == ["classLabel", "classLabelProbs"]


def test_package_metadata_names_its_checkpoint(package):
    result, classifier = package
    meta = spec_of(result.path).description.metadata
    assert (meta.author, meta.license, meta.versionString, meta.shortDescription) == (
        "Ada", "MIT", "1.2", "Shapes")
    entries = dict(meta.userDefined)
    checkpoint = classifier.checkpoint
    assert entries["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert entries["mlwidgets.version"] == mw.__version__
    assert entries["mlwidgets.session_id"] == checkpoint.session_id
    assert entries["mlwidgets.checkpoint_id"] == checkpoint.id
    assert entries["mlwidgets.phase"] == "training"
    assert entries["mlwidgets.iteration"] == str(checkpoint.iteration)
    assert entries["mlwidgets.step"] == str(checkpoint.step_number)
    assert entries["mlwidgets.architecture"] == "small_cnn"
    for name, value in checkpoint.metrics.items():
        if value is not None:
            assert float(entries[f"mlwidgets.metric.{name}"]) == value
    assert entries["dataset"] == "shapes" and entries["note"] == "été ✓"


def test_export_is_recorded_in_the_session(package, session_dir):
    result, classifier = package
    assert result.record is not None and result.record.parent == session_dir / "exports"
    record = json.loads(result.record.read_text())
    assert record["path"] == str(result.path.resolve())
    assert (record["format"], record["precision"], record["quantize"]) == (
        "mlprogram", "float32", None)
    assert record["size_bytes"] == result.size_bytes
    assert record["checkpoint_id"] == classifier.checkpoint.id
    assert record["created_at"] > 0 and record["sha256_of"] == "Manifest.json"

    manifest = (result.path / "Manifest.json").read_bytes()
    assert record["sha256"] == hashlib.sha256(manifest).hexdigest()
    assert record in exports_of(session_dir)
    assert not leftovers(session_dir / "exports")


def test_neural_network_by_suffix(from_session, session_dir, tmp_path):
    result = from_session.write(tmp_path / "Shapes.mlmodel")
    assert result.format == "neuralnetwork" and result.path.is_file()
    spec = spec_of(result.path)
    assert spec.WhichOneof("Type") == "neuralNetworkClassifier"
    assert {o.name for o in spec.description.output} == {"classLabel", "classLabelProbs"}
    assert spec.description.predictedProbabilitiesName == "classLabelProbs"
    assert class_labels(spec) == ["circle", "square", "triangle"]
    network = spec.neuralNetworkClassifier
    assert network.labelProbabilityLayerName == "classLabelProbs"
    assert network.layers[-1].output == ["classLabelProbs"]  # the softmax feeds the output
    assert network.preprocessing[0].scaler.channelScale == pytest.approx(1 / 255)
    assert spec.description.metadata.shortDescription == (
        "Classifies images as circle, square or triangle; trained with mlwidgets")
    record = json.loads(result.record.read_text())
    assert record["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert record["sha256_of"] == "Shapes.mlmodel"


@pytest.mark.slow
def test_float16_halves_and_int8_quarters_the_weights(tmp_path):
    classifier = fresh("resnet18", 64)
    f32, f16, i8 = (classifier.write(tmp_path / f"r18-{name}.mlpackage", **options)
                    for name, options in [("f32", {}), ("f16", {"precision": "float16"}),
                                          ("i8", {"quantize": "int8"})])
    assert 0.45 < f16.size_bytes / f32.size_bytes < 0.55
    assert 0.22 < i8.size_bytes / f32.size_bytes < 0.30
    assert i8.quantize == "int8" and f16.precision == "float16"
    assert f32.record is None  # not from a session: nothing to record


def test_palettized_and_neural_network_compression(tmp_path):
    classifier = fresh("small_cnn", 32)
    base = classifier.write(tmp_path / "base.mlpackage")
    palettized = classifier.write(tmp_path / "p4.mlpackage", quantize="palettize-4")
    assert palettized.size_bytes / base.size_bytes < 0.2
    nn32 = classifier.write(tmp_path / "base.mlmodel")
    nn16 = classifier.write(tmp_path / "f16.mlmodel", precision="float16")
    nn8 = classifier.write(tmp_path / "i8.mlmodel", quantize="int8")
    assert 0.45 < nn16.size_bytes / nn32.size_bytes < 0.55
    assert 0.22 < nn8.size_bytes / nn32.size_bytes < 0.32
    with pytest.raises(ValueError, match="palettize-6 needs an ML program"):
        classifier.write(tmp_path / "p6.mlmodel", quantize="palettize-6")


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_converts(architecture, tmp_path):
    assert architecture in CONVERTIBLE_ARCHITECTURES
    classifier = fresh(architecture, 32)
    for suffix in (".mlpackage", ".mlmodel"):
        result = classifier.write(tmp_path / f"{architecture}{suffix}")
        spec = spec_of(result.path)
        assert class_labels(spec) == CLASSES
        assert dict(spec.description.metadata.userDefined)["mlwidgets.architecture"] == (
            architecture)


def forbid_conversion(monkeypatch):
    def convert(*args, **kwargs):
        raise AssertionError("conversion must not start")

    monkeypatch.setattr(ct, "convert", convert)


def test_bad_options_are_refused_before_any_work(monkeypatch, tmp_path):
    forbid_conversion(monkeypatch)
    classifier = fresh()
    for name in ("model.onnx", "model", "model.mlpackage.zip"):
        with pytest.raises(ValueError, match=r"\.mlpackage .* or \.mlmodel"):
            classifier.write(tmp_path / name)
    with pytest.raises(ValueError, match="precision"):
        classifier.write(tmp_path / "m.mlpackage", precision="int4")
    with pytest.raises(ValueError, match="quantize"):
        classifier.write(tmp_path / "m.mlpackage", quantize="int4")
    with pytest.raises(ValueError, match="may not replace"):
        classifier.write(tmp_path / "m.mlpackage",
                         ModelMetadata(additional={"mlwidgets.version": "9"}))
    monkeypatch.setattr(export_module, "CONVERTIBLE_ARCHITECTURES", ("resnet18",))
    with pytest.raises(ValueError, match="small_cnn cannot be exported.*resnet18"):
        classifier.write(tmp_path / "m.mlpackage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mlpackage", ".mlmodel"])
def test_existing_file_is_refused_unless_overwrite(suffix, tmp_path):
    classifier = fresh()
    path = tmp_path / f"model{suffix}"
    classifier.write(path, ModelMetadata(author="first"))
    with pytest.raises(FileExistsError, match=str(path)):
        classifier.write(path, ModelMetadata(author="second"))
    assert spec_of(path).description.metadata.author == "first"
    classifier.write(path, ModelMetadata(author="second"), overwrite=True)
    assert spec_of(path).description.metadata.author == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_paths_with_spaces_and_non_ascii(tmp_path):
    path = tmp_path / "Modèle de test" / "chat ✓.mlpackage"
    result = fresh().write(path)
    assert result.path == path and path.is_dir()
    assert class_labels(spec_of(path)) == CLASSES


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    def convert(*args, **kwargs):
        raise RuntimeError("unsupported op 'boom'")

    monkeypatch.setattr(ct, "convert", convert)
    with pytest.raises(ExportError, match="converting the small_cnn .* failed.*boom"):
        fresh().write(tmp_path / "new dir" / "model.mlpackage")
    assert list(tmp_path.iterdir()) == []
    # An existing model being overwritten survives a failed replacement.
    monkeypatch.undo()
    old = tmp_path / "old.mlmodel"
    fresh().write(old, ModelMetadata(author="old"))
    monkeypatch.setattr(ct, "convert", convert)
    with pytest.raises(ExportError):
        fresh().write(old, overwrite=True)
    assert spec_of(old).description.metadata.author == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.mlmodel"]


def test_failed_write_leaves_no_temporary_files(monkeypatch, tmp_path):
    def fail(path):
        raise OSError(f"disk full while writing {path}")

    monkeypatch.setattr(export_module, "fsync_tree", fail)
    with pytest.raises(OSError, match="disk full"):
        fresh().write(tmp_path / "model.mlpackage")
    assert list(tmp_path.iterdir()) == []


def test_model_metadata():
    meta = ModelMetadata(author="Ada")
    with pytest.raises(AttributeError):
        meta.author = "Bob"
    assert ModelMetadata().additional == {} and ModelMetadata().additional is not meta.additional
    with pytest.raises(TypeError):
        ModelMetadata(additional={"n": 1})
    assert default_short_description(["cat", "dog"]) == (
        "Classifies images as cat or dog; trained with mlwidgets")
    many = default_short_description([f"c{i}" for i in range(20)])
    assert "c0, c1" in many and "(20 classes)" in many and "c19" not in many


def test_export_does_not_load_coremltools_until_used():
    result = run_python("""
        import sys
        import mlwidgets as mw
        from mlwidgets import coreml, cli
        assert callable(mw.ImageClassifier.write)
        print("coremltools" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_cli_export(session_dir, tmp_path):
    out = tmp_path / "Shapes CLI.mlpackage"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mlwidgets", "export", "--session",
                               str(session_dir), "--out", str(out), *args],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    done = cli("--checkpoint", "latest", "--precision", "float16", "--quantize", "int8",
               "--author", "Ada", "--license", "MIT", "--description", "Shapes",
               "--version", "2.0")
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and "ML program" in done.stdout
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert f"({size:,} bytes)" in done.stdout
    meta = spec_of(out).description.metadata
    assert (meta.author, meta.license, meta.shortDescription, meta.versionString) == (
        "Ada", "MIT", "Shapes", "2.0")
    latest = mw.TrainingSession.restore(session_dir).checkpoint("latest")
    assert dict(meta.userDefined)["mlwidgets.checkpoint_id"] == latest.id
    assert any(r["path"] == str(out.resolve()) and r["quantize"] == "int8"
               for r in exports_of(session_dir))
    again = cli()
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
