"""The networks: every model is `normalize -> body -> head`.

Normalization is the model's first layer, so training, prediction and the Core ML
export all apply exactly the same per-channel mean and std to 0..1 RGB input: the
feature extractor's own (see extractors.py), or ImageNet's for the other networks.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from . import extractors
from .extractors import IMAGENET_MEAN, IMAGENET_STD
from .parameters import ARCHITECTURES, ModelParameters


class Normalize(nn.Module):
    """(x - mean) / std per channel, for input in 0..1."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def small_cnn() -> tuple[nn.Module, int]:
    """Four stride-2 conv blocks: fast from scratch on a CPU at 32-96 px."""
    widths = (3, 32, 64, 128, 256)
    body = nn.Sequential(*(_conv_block(a, b) for a, b in zip(widths, widths[1:])))
    return body, widths[-1]


def _torchvision_body(architecture: str, pretrained: bool,
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


class ExtractorWeightsUnavailable(PretrainedWeightsUnavailable):
    """A timm feature extractor's weights could neither be downloaded nor found cached."""

    def __init__(self, name: str, cause: Exception):
        RuntimeError.__init__(
            self, f"could not get the pretrained {name} weights ({type(cause).__name__}: "
            f"{cause}). Use the built-in feature_extractor='efficientnet_lite0' (no download), "
            "put the weights in timm's cache (HF_HOME) while online, or pass "
            f"weights_file='my-{name}.safetensors' with a local file")


def build_model(params: ModelParameters, n_classes: int,
                with_weights: bool = True) -> nn.Sequential:
    """A network for `params`: normalize -> body -> head (pool, flatten, classifier layers).

    `with_weights=False` builds the skeleton only (for loading a checkpoint into it).
    With a feature extractor, the body is the extractor (for `params.image_size` px) and
    the normalization its own.
    """
    if params.feature_extractor is not None:
        name = params.feature_extractor
        body, n_features = extractors.build(name, params.image_size, with_weights,
                                            params.weights_file)
        pre = extractors.preprocessing(name)
        torch.manual_seed(params.seed)  # the head's weights do not depend on the extractor's
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             *classifier_layers(params, n_features, n_classes))
        return nn.Sequential(OrderedDict(normalize=Normalize(pre.mean, pre.std), body=body,
                                         head=head))
    arch = params.architecture
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(params.seed)  # the same parameters give the same initial weights
    weights_file = params.weights_file if with_weights else None
    if arch == "small_cnn":
        body, n_features = small_cnn()
        if weights_file:
            load_weights_file(body, weights_file)
    else:
        body, n_features = _torchvision_body(arch, params.pretrained and with_weights,
                                             weights_file)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *classifier_layers(params, n_features, n_classes))
    return nn.Sequential(OrderedDict(normalize=Normalize(), body=body, head=head))


def inference_batch_size(image_size: int) -> int:
    """Images a forward pass without gradients: 4 at 224 px, more for smaller images.

    Measured on 2 idle cores with EfficientNet-Lite0 at 224 px: about 110 images/s in
    batches of 4 or 8, 67 in 16, 44 in 32 (activations outgrow the CPU caches); a batch
    holds about 18 MB of activations an image (Binder gives about 2 GB in all).
    """
    return max(4, min(128, round(4 * (224 / image_size) ** 2)))


def classifier_layers(params: ModelParameters, n_features: int, n_classes: int) -> list[nn.Module]:
    """Logistic regression (one linear layer) or an MLP with `params.mlp_layers` hidden units."""
    sizes = [n_features, *(params.mlp_layers if params.classifier == "mlp" else ()), n_classes]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return layers[:-1]  # no activation after the last layer: it gives logits


def split_features_and_classifier(model: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """(image -> pooled features, features -> logits): the two halves of transfer learning.

    They share the model's modules, so training the classifier half trains the model.
    """
    head = model.head
    features = nn.Sequential(model.normalize, model.body, head[0], head[1])
    return features, nn.Sequential(*head[2:])


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


def model_record(params: ModelParameters, classes: list[str]) -> dict[str, object]:
    """What a checkpoint stores to rebuild its network without the session around it.

    With a feature extractor, `architecture` names the extractor's network too (what an
    export reports) and `feature_extractor` is set; records without it are as before.
    """
    fx = params.feature_extractor
    if fx is None:
        return {
            "architecture": params.architecture, "classes": list(classes),
            "image_size": params.image_size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "classifier": params.classifier,
            "mlp_layers": list(params.mlp_layers),
        }
    pre = extractors.preprocessing(fx)
    return {
        "architecture": fx, "feature_extractor": fx, "classes": list(classes),
        "image_size": params.image_size, "mean": list(pre.mean), "std": list(pre.std),
        "classifier": params.classifier, "mlp_layers": list(params.mlp_layers),
    }


def skeleton_for(record: dict[str, object]) -> nn.Sequential:
    """An untrained network shaped as a checkpoint's `model` record describes."""
    backbone: dict[str, object] = {"architecture": str(record["architecture"])}
    if record.get("feature_extractor"):
        backbone = {"feature_extractor": str(record["feature_extractor"])}
    params = ModelParameters(**backbone,  # type: ignore[arg-type]
                             image_size=int(record["image_size"]),  # type: ignore[arg-type]
                             classifier=str(record.get("classifier", "logistic_regression")),
                             mlp_layers=tuple(record.get("mlp_layers", (256,))))  # type: ignore[arg-type]
    return build_model(params, len(record["classes"]), with_weights=False)  # type: ignore[arg-type]
