import json

import pytest

from mlwidgets import Augmentation, ModelParameters, SessionParameters


def test_model_parameters_round_trip_through_json():
    params = ModelParameters(architecture="resnet18", image_size=96, batch_size=8,
                             learning_rate=1e-3, max_iterations=4, validation=0.25, seed=7,
                             augmentation=Augmentation(flip=True, rotation=10, noise=0.02))
    again = ModelParameters.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params
    assert isinstance(again.augmentation, Augmentation)


def test_session_parameters_round_trip_through_json():
    params = SessionParameters(report_interval=2, checkpoint_interval=3, iterations=9,
                               keep_last=2, keep_best=1)
    assert SessionParameters.from_dict(json.loads(json.dumps(params.to_dict()))) == params


@pytest.mark.parametrize("bad, needle", [
    ({"architecture": "vgg99"}, "vgg99"),
    ({"image_size": 4}, "image_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"validation": 1.5}, "1.5"),
    ({"validation": "sometimes"}, "sometimes"),
    ({"architecture": "small_cnn", "pretrained": True}, "small_cnn"),
])
def test_bad_model_parameters_are_refused_by_name(bad, needle):
    with pytest.raises(ValueError, match=needle):
        ModelParameters(**bad)


def test_bad_augmentation_is_refused_by_name():
    with pytest.raises(ValueError, match="rotation"):
        Augmentation(rotation=-3)
    with pytest.raises(ValueError, match="crop"):
        Augmentation(crop=0.9)


def test_unknown_stored_parameter_is_named():
    with pytest.raises(ValueError, match="colour"):
        ModelParameters.from_dict({"colour": "red"})
