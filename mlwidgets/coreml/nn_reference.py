"""Runs a neural-network classifier (.mlmodel) in NumPy, the way Core ML would.

The layers are read from the spec with coremltools' protobuf classes; weights may be
float32, float16 or quantized (linear or lookup table, 1-8 bits). Core ML runs neural
networks in float32 on the CPU, so everything here computes in float32. Image
preprocessing (channel scale and per-channel biases) comes from the spec, as on device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import reference_ops as ops
from .reference_ops import UnsupportedOperation, VerificationError

# A layer is compiled once from its parameters (weights decoded), then run per batch.
Run = Callable[[list[np.ndarray], int], np.ndarray]
Layer = Callable[[Any], Run]


def weights(params: Any, count: int | None = None) -> np.ndarray:
    """A WeightParams message as a flat float32 array (dequantized if need be)."""
    if len(params.floatValue):
        values = np.array(params.floatValue, np.float32)
    elif len(params.float16Value):
        values = np.frombuffer(params.float16Value, np.float16).astype(np.float32)
    elif params.HasField("quantization") and (params.rawValue or params.int8RawValue):
        values = _dequantize(params, count)
    else:
        raise VerificationError("a layer has weights in a form the NumPy reference cannot read")
    if count is not None and values.size != count:
        raise VerificationError(f"expected {count} weights, the layer has {values.size}")
    return values


def _dequantize(params: Any, count: int | None) -> np.ndarray:
    q, bits = params.quantization, params.quantization.numberOfBits
    if params.int8RawValue:
        codes = np.frombuffer(params.int8RawValue, np.int8).astype(np.float32)
    elif bits == 8:
        codes = np.frombuffer(params.rawValue, np.uint8).astype(np.float32)
    else:  # n-bit codes packed most significant bit first (coremltools' NN quantization)
        if count is None:
            raise VerificationError(f"{bits}-bit weights need a known weight count")
        flat = np.unpackbits(np.frombuffer(params.rawValue, np.uint8))[:bits * count]
        codes = (flat.reshape(count, bits) << np.arange(bits - 1, -1, -1)).sum(axis=1)
    codes = codes[:count] if count is not None else codes
    if q.WhichOneof("QuantizationType") == "lookupTableQuantization":
        return np.array(q.lookupTableQuantization.floatValue, np.float32)[codes.astype(np.int64)]
    scale = np.array(q.linearQuantization.scale, np.float32)
    bias = np.array(q.linearQuantization.bias or [0.0], np.float32)
    # One (scale, bias) per output channel: the weights' leading axis.
    per_channel = codes.reshape(len(scale), -1) if len(scale) > 1 else codes.reshape(1, -1)
    return (per_channel * scale.reshape(-1, 1) + bias.reshape(-1, 1)).reshape(-1)


def _padding(p: Any, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
             dilations: Sequence[int]) -> list[int]:
    """[top, bottom, left, right] of a convolution or pooling layer."""
    conv = p.DESCRIPTOR.name == "ConvolutionLayerParams"
    which = p.WhichOneof("ConvolutionPaddingType" if conv else "PoolingPaddingType")
    if which == "same":
        mode = "same" if p.same.asymmetryMode == 0 else "same_lower"  # 0: BOTTOM_RIGHT_HEAVY
        return ops.spatial_pads(mode, size, kernel, strides, dilations)
    if which == "includeLastPixel":  # symmetric (height, width) padding, ceil-mode windows
        h, w = list(p.includeLastPixel.paddingAmounts) or [0, 0]
        return [h, h, w, w]
    amounts = p.valid.paddingAmounts.borderAmounts if which == "valid" else []
    if not amounts:
        return [0, 0, 0, 0]
    return [amounts[0].startEdgeSize, amounts[0].endEdgeSize,
            amounts[1].startEdgeSize, amounts[1].endEdgeSize]


def _convolution(p: Any) -> Run:
    if p.isDeconvolution:
        raise UnsupportedOperation("deconvolution", "a convolution layer")
    kernel = list(p.kernelSize) or [3, 3]
    strides, dilations = list(p.stride) or [1, 1], list(p.dilationFactor) or [1, 1]
    groups = p.nGroups or 1
    shape = (p.outputChannels, p.kernelChannels, *kernel)
    w = weights(p.weights, int(np.prod(shape))).reshape(shape)
    b = weights(p.bias, p.outputChannels) if p.hasBias else None
    return lambda xs, n: ops.conv2d(xs[0], w, b, strides,
                                    _padding(p, xs[0].shape[2:], kernel, strides, dilations),
                                    dilations, groups)


def _pooling(p: Any, xs: list[np.ndarray], batch: int) -> np.ndarray:
    x = xs[0].astype(np.float32, copy=False)
    if p.type not in (0, 1):
        raise UnsupportedOperation("L2 pooling", "a pooling layer")
    kind = "max" if p.type == 0 else "avg"
    if p.globalPooling:
        return x.max(axis=(2, 3), keepdims=True) if kind == "max" \
            else x.mean(axis=(2, 3), keepdims=True)
    kernel, strides = list(p.kernelSize) or [3, 3], list(p.stride) or [1, 1]
    pads = _padding(p, x.shape[2:], kernel, strides, [1, 1])
    return ops.pool2d(x, kind, kernel, strides, pads, ceil_mode=p.HasField("includeLastPixel"),
                      exclude_padding=p.avgPoolExcludePadding)


def _activation(p: Any, xs: list[np.ndarray], batch: int) -> np.ndarray:
    x, kind = xs[0].astype(np.float32, copy=False), p.WhichOneof("NonlinearityType")
    a = getattr(p, kind)
    if kind == "ReLU":
        return np.maximum(x, 0)
    if kind == "linear":
        return np.float32(a.alpha) * x + np.float32(a.beta)
    if kind == "sigmoidHard":
        return ops.hard_sigmoid(x, a.alpha, a.beta)
    if kind == "thresholdedReLU":
        return np.where(x >= a.alpha, x, 0).astype(np.float32)
    if kind == "leakyReLU":
        return np.where(x >= 0, x, np.float32(a.alpha) * x)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    raise UnsupportedOperation(f"activation/{kind}", "an activation layer")


def _pad_layer(p: Any, xs: list[np.ndarray], batch: int) -> np.ndarray:
    kind = p.WhichOneof("PaddingType")
    mode = {"constant": "constant", "reflection": "reflect", "replication": "replicate"}.get(kind)
    if mode is None:
        raise UnsupportedOperation(f"padding/{kind}", "a padding layer")
    amounts = p.paddingAmounts.borderAmounts  # (height, width), or none: no padding
    widths = [(b.startEdgeSize, b.endEdgeSize) for b in amounts] or [(0, 0), (0, 0)]
    return ops.pad(xs[0], widths, mode, p.constant.value if mode == "constant" else 0.0)


def _inner_product(p: Any) -> Run:
    if p.int8DynamicQuantize:  # Core ML would quantize the activations too
        raise UnsupportedOperation("innerProduct with int8 dynamic quantization",
                                   "an innerProduct layer")
    w = weights(p.weights, p.inputChannels * p.outputChannels)
    w = w.reshape(p.outputChannels, p.inputChannels)
    b = weights(p.bias, p.outputChannels) if p.hasBias else None

    def run(xs: list[np.ndarray], batch: int) -> np.ndarray:
        x = xs[0]
        flat = x.reshape(x.shape[0], -1) if x.ndim == 4 else x  # rank-4 blobs: (N, C, 1, 1)
        out = ops.linear(flat, w, b)
        return out.reshape(x.shape[0], -1, 1, 1) if x.ndim == 4 else out
    return run


def _batchnorm(p: Any) -> Run:
    if p.computeMeanVar or p.instanceNormalization:
        raise UnsupportedOperation("batchnorm with computed statistics", "a batchnorm layer")
    c = p.channels
    gamma, beta = weights(p.gamma, c), weights(p.beta, c)
    mean, var = weights(p.mean, c), weights(p.variance, c)
    scale = gamma / np.sqrt(var + np.float32(p.epsilon or 1e-5))

    def run(xs: list[np.ndarray], batch: int) -> np.ndarray:
        shape = (1, c) + (1,) * (xs[0].ndim - 2)
        return (xs[0] - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)
    return run


def _reduce_mean(p: Any, xs: list[np.ndarray], batch: int) -> np.ndarray:
    axes = None if p.reduceAll else tuple(p.axes)
    return xs[0].astype(np.float32).mean(axis=axes, keepdims=p.keepDims)


def _load_constant(p: Any) -> Run:
    value = weights(p.data, int(np.prod(p.shape))).reshape(list(p.shape))
    return lambda xs, n: value


def _simple(fn: Callable[[Any, list[np.ndarray], int], np.ndarray]) -> Layer:
    """A layer without weights: nothing to compile."""
    return lambda p: lambda xs, n: fn(p, xs, n)


def _elementwise(fn: Callable[..., np.ndarray]) -> Layer:
    def run(p: Any, xs: list[np.ndarray], batch: int) -> np.ndarray:
        if len(xs) == 1:
            return fn(xs[0], np.float32(p.alpha))
        out = xs[0].astype(np.float32)
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return _simple(run)


LAYERS: dict[str, Layer] = {
    "convolution": _convolution, "innerProduct": _inner_product, "batchnorm": _batchnorm,
    "loadConstantND": _load_constant, "loadConstant": _load_constant,
    "add": _elementwise(np.add), "multiply": _elementwise(np.multiply),
    "pooling": _simple(_pooling), "activation": _simple(_activation),
    "padding": _simple(_pad_layer),
    "reduceMean": _simple(_reduce_mean),
    "reshapeStatic": _simple(lambda p, xs, n: xs[0].reshape(
        ops.batched_shape(p.targetShape, xs[0].shape, n))),
    "flattenTo2D": _simple(lambda p, xs, n: xs[0].reshape(
        int(np.prod(xs[0].shape[:p.axis])), -1)),
    "squeeze": _simple(lambda p, xs, n: np.squeeze(
        xs[0], None if p.squeezeAll else tuple(p.axes))),
    "expandDims": _simple(lambda p, xs, n: np.expand_dims(xs[0], tuple(p.axes))),
    "softmaxND": _simple(lambda p, xs, n: ops.softmax(xs[0], p.axis)),
    "softmax": _simple(lambda p, xs, n: ops.softmax(xs[0], -3 if xs[0].ndim >= 3 else -1)),
    "clip": _simple(lambda p, xs, n: np.clip(xs[0], p.minVal, p.maxVal)),
}


class NNReference:
    """A neural-network classifier's layers, ready to run on batches of RGB pixels."""

    backend = "numpy-reference"

    def __init__(self, spec: Any, source: str = "neural network"):
        if spec.WhichOneof("Type") != "neuralNetworkClassifier":
            raise VerificationError(f"{source} is not a neural-network classifier "
                                 f"(it is a {spec.WhichOneof('Type')})")
        nn = spec.neuralNetworkClassifier
        self.source, self.layers = source, list(nn.layers)
        self.input_name, self.color_space, self.size = ops.image_input(spec)
        self.runs: list[Run] = []
        for i, layer in enumerate(self.layers):
            kind, where = layer.WhichOneof("layer"), f"layer {i} {layer.name!r} of {source}"
            if kind not in LAYERS:
                raise UnsupportedOperation(kind, where)
            try:
                self.runs.append(LAYERS[kind](getattr(layer, kind)))
            except UnsupportedOperation as e:
                raise UnsupportedOperation(e.op_type, where) from None
            except VerificationError as e:
                raise VerificationError(f"{where}: {e}") from None
        labels = nn.WhichOneof("ClassLabels")
        self.classes = [str(c) for c in getattr(nn, labels).vector] if labels else []
        self.output = nn.labelProbabilityLayerName or self.layers[-1].output[0]
        self.drops = _last_uses(self.layers, self.output)
        self.scale, self.bias = np.float32(1), np.zeros((1, 3, 1, 1), np.float32)
        for pre in nn.preprocessing:
            if pre.featureName not in ("", self.input_name):
                continue
            if pre.WhichOneof("preprocessor") != "scaler":
                raise UnsupportedOperation("meanImage preprocessing", f"input {self.input_name!r}")
            s = pre.scaler  # biases follow the input's channel order
            order = (s.redBias, s.greenBias, s.blueBias) if self.color_space == ops.RGB \
                else (s.blueBias, s.greenBias, s.redBias)
            self.scale = np.float32(s.channelScale)
            self.bias = np.array(order, np.float32).reshape(1, 3, 1, 1)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities, in `classes` order, for (N, 3, H, W) RGB pixels."""
        x = ops.channels_for(pixels, self.color_space, self.size)
        blobs = {self.input_name: x * self.scale + self.bias}
        for i, (layer, run) in enumerate(zip(self.layers, self.runs)):
            where = f"layer {i} {layer.name!r} of {self.source}"
            try:
                inputs = [blobs[name] for name in layer.input]
            except KeyError as e:
                raise VerificationError(f"{where} reads {e.args[0]!r}, which nothing defines") \
                    from None
            try:
                out = run(inputs, len(x))
            except UnsupportedOperation as e:
                raise UnsupportedOperation(e.op_type, where) from None
            except (ValueError, IndexError, TypeError) as e:
                kind = layer.WhichOneof("layer")
                raise VerificationError(f"{kind} failed at {where}: {e}") from e
            blobs[layer.output[0]] = np.asarray(out, np.float32)
            for name in self.drops[i]:  # a 224 px batch would otherwise keep every activation
                blobs.pop(name, None)
        return blobs[self.output].reshape(len(x), -1)


def _last_uses(layers: list[Any], keep: str) -> list[list[str]]:
    """For each layer, the blobs no later layer reads (to free once it has run)."""
    last: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for name in [*layer.input, layer.output[0]]:
            last[name] = i
    drops: list[list[str]] = [[] for _ in layers]
    for name, i in last.items():
        if name != keep:
            drops[i].append(name)
    return drops
