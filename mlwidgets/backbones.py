"""Pretrained backbones' shared pieces: the normalization layer, torchvision bodies, local
weights files, and the errors that say what to do when weights are missing offline.

A leaf below models.py and extractors.py, which both build on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel, for input in 0..1."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def torchvision_body(architecture: str, pretrained: bool,
                      weights_file: str | None) -> tuple[nn.Module, int]:
    import torchvision

    builder = getattr(torchvision.models, architecture)
    weights = torchvision.models.get_model_weights(architecture).DEFAULT if pretrained else None
    try:
        net = builder(weights=None if weights_file else weights)
    except OSError as e:  # URLError and friends: no network, no cached file
        raise PretrainedWeightsUnavailable(architecture, weights, e) from None
    if weights_file:
        # The file holds the whole torchvision network; its own classifier is not used.
        load_weights_file(net, weights_file, ignore=("fc.", "classifier."))
    if architecture.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features
    return net.features, net.classifier[0].in_features  # mobilenet_v3


class PretrainedWeightsUnavailable(RuntimeError):
    def __init__(self, architecture: str, weights: object, cause: Exception):
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        url = getattr(weights, "url", "")
        super().__init__(
            f"could not download the pretrained {architecture} weights ({cause}). "
            f"Either copy {os.path.basename(url) or 'the weights file'} (from {url}) into "
            f"{cache} (set TORCH_HOME to use another cache), or pass "
            f"weights_file='my-{architecture}.safetensors' with a local file, "
            "or train with pretrained=False."
        )


def load_weights_file(net: nn.Module, weights_file: str | os.PathLike,
                      ignore: tuple[str, ...] = ()) -> None:
    """Load a safetensors state dict into `net`, skipping keys that start with `ignore`.

    Every other weight of `net` must be in the file, or the error lists what is missing.
    """
    from safetensors.torch import load_file

    path = Path(weights_file)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights files must be .safetensors (no pickle is loaded)")
    loaded = load_file(str(path))
    needed = [k for k in net.state_dict() if not k.startswith(ignore)]
    missing = [k for k in needed if k not in loaded]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} weights the network needs, "
                         f"e.g. {missing[:3]}")
    net.load_state_dict({k: loaded[k] for k in needed}, strict=False)
