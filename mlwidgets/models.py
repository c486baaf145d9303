"""The networks: every model is `normalize -> body -> head`.

Normalization is the model's first layer, so training, prediction and the Core ML
export all apply exactly the same per-channel mean and std to 0..1 RGB input: the
feature extractor's own (see extractors.py), or ImageNet's for the other networks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from . import extractors
from .backbones import (  # noqa: F401  (re-exported: models is where users look for them)
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    PretrainedWeightsUnavailable,
    load_weights_file,
    torchvision_body,
)
from .parameters import ARCHITECTURES, ModelParameters


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def small_cnn() -> tuple[nn.Module, int]:
    """Four stride-2 conv blocks: fast from scratch on a CPU at 32-96 px."""
    widths = (3, 32, 64, 128, 256)
    body = nn.Sequential(*(_conv_block(a, b) for a, b in zip(widths, widths[1:])))
    return body, widths[-1]


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
        return nn.Sequential(OrderedDict(normalize=Normalize(pre.mean, pre.std), body=body,
                                         head=build_head(params, n_features, n_classes)))
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
        body, n_features = torchvision_body(arch, params.pretrained and with_weights,
                                             weights_file)
    # Transfer learning trains its head alone first, on cached features (learners.py).
    head = build_head(params, n_features, n_classes,
                      seeded=params.algorithm == "transfer_learning")
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


def build_head(params: ModelParameters, n_features: int, n_classes: int,
               seeded: bool = True) -> nn.Sequential:
    """A network's head: pool, flatten, the classifier layers. `seeded`: seeded on its own,
    so its first weights depend on `params.seed` only, never on the body built before it
    (transfer learning's head phase builds the head alone, on cached features)."""
    if seeded:
        torch.manual_seed(params.seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *classifier_layers(params, n_features, n_classes))


def classifier_of(head: nn.Sequential) -> nn.Sequential:
    """The head's layers after pooling: features -> logits (sharing the head's modules)."""
    return nn.Sequential(*head[2:])


def split_features_and_classifier(model: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """(image -> pooled features, features -> logits): the two halves of transfer learning.

    They share the model's modules, so training the classifier half trains the model.
    """
    head = model.head
    features = nn.Sequential(model.normalize, model.body, head[0], head[1])
    return features, classifier_of(head)


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
