"""Architectures, pretrained weights (offline here) and local weights files."""

import pytest
import torch
from safetensors.torch import save_file

from mlwidgets import ModelParameters
from mlwidgets.models import PretrainedWeightsUnavailable, build_model


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet18", "mobilenet_v3_small"])
def test_every_architecture_maps_images_to_class_logits(architecture):
    model = build_model(ModelParameters(architecture=architecture, image_size=32), 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_offline_pretrained_weights_fail_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model(ModelParameters(architecture="resnet18", pretrained=True), 2)
    message = str(caught.value)
    assert "resnet18" in message and str(tmp_path / "torch-cache") in message
    assert "weights_file" in message and "pretrained=False" in message


def test_a_local_weights_file_fills_the_body(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()  # a whole network's state dict, with its fc
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    model = build_model(ModelParameters(architecture="resnet18", weights_file=str(path)), 2)
    assert torch.equal(model.body[0].weight, reference.conv1.weight)
    assert torch.equal(model.body[4][0].conv1.weight, reference.layer1[0].conv1.weight)


def test_bad_weights_files_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_model(ModelParameters(architecture="resnet18", weights_file=str(
            tmp_path / "missing.safetensors")), 2)
    pickle_file = tmp_path / "weights.pth"
    pickle_file.write_bytes(b"not allowed")
    with pytest.raises(ValueError, match="safetensors"):
        build_model(ModelParameters(architecture="resnet18", weights_file=str(pickle_file)), 2)
    partial = tmp_path / "partial.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(partial))
    with pytest.raises(ValueError, match="lacks"):
        build_model(ModelParameters(architecture="resnet18", weights_file=str(partial)), 2)
