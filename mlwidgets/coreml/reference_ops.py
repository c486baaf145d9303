"""NumPy kernels shared by the two reference interpreters (ML program and neural network).

Everything here takes and returns float32 arrays in NCHW layout, so both interpreters
compute with the same code and only differ in how they read a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class VerificationError(RuntimeError):
    """An exported model cannot be checked: unreadable, not a classifier, or unsupported."""


class UnsupportedOperation(VerificationError):
    """The model uses an operation or layer the NumPy reference does not implement."""

    def __init__(self, op_type: str, where: str, detail: str = ""):
        self.op_type, self.where = op_type, where
        super().__init__(f"the NumPy reference does not implement {op_type!r} ({where})"
                         + (f": {detail}" if detail else ""))


def spatial_pads(pad_type: str, size: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int],
                 custom: Sequence[int] | None = None) -> list[int]:
    """[top, bottom, left, right] for MIL's pad types (and NN's equivalents)."""
    if pad_type == "valid":
        return [0, 0, 0, 0]
    if pad_type == "custom":
        return [int(p) for p in custom] if custom is not None else [0, 0, 0, 0]
    if pad_type not in ("same", "same_lower"):
        raise VerificationError(f"unknown pad_type {pad_type!r}")
    pads = []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        # "same" puts an odd pixel at the end (bottom/right), "same_lower" at the start.
        before = total // 2 if pad_type == "same" else total - total // 2
        pads += [before, total - before]
    return pads


def _windows(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int],
             dilations: Sequence[int]) -> np.ndarray:
    """(N, C, Ho, Wo, kh, kw) view of every (dilated, strided) window of an already padded x."""
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilations, strides
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    view = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, strides: Sequence[int],
           pads: Sequence[int], dilations: Sequence[int], groups: int) -> np.ndarray:
    """Grouped 2-D cross-correlation; weight is (C_out, C_in / groups, kh, kw)."""
    x = np.pad(x.astype(np.float32, copy=False),
               ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    weight = weight.astype(np.float32, copy=False)
    c_out, c_group, kh, kw = weight.shape
    n, c_in = x.shape[:2]
    if c_in != c_group * groups or c_out % groups:
        raise VerificationError(f"conv weight {weight.shape} does not fit {c_in} input channels "
                             f"in {groups} groups")
    win = _windows(x, (kh, kw), strides, dilations)  # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2:4]
    if groups == 1:
        out = np.tensordot(win, weight, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, C_out)
        out = out.transpose(0, 3, 1, 2)
    elif c_group == 1 and c_out == groups:
        # Depthwise: one multiply-add per kernel tap beats building per-group matrices.
        out = np.zeros((n, c_out, ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                out += win[..., i, j] * weight[None, :, 0, i, j, None, None]
    else:
        per = c_out // groups
        out = np.concatenate([
            np.tensordot(win[:, g * c_group:(g + 1) * c_group], weight[g * per:(g + 1) * per],
                         axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
            for g in range(groups)], axis=1)
    if bias is not None:
        out = out + bias.astype(np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def pool2d(x: np.ndarray, kind: str, kernel: Sequence[int], strides: Sequence[int],
           pads: Sequence[int], ceil_mode: bool = False,
           exclude_padding: bool = True) -> np.ndarray:
    """Max or average pooling; `exclude_padding` divides averages by the real pixels only."""
    x = x.astype(np.float32, copy=False)
    h, w = x.shape[2:]
    extra = []
    for n, k, s, before, after in ((h, kernel[0], strides[0], pads[0], pads[1]),
                                   (w, kernel[1], strides[1], pads[2], pads[3])):
        out = (n + before + after - k) // s + 1
        if ceil_mode:  # coremltools' rule: one more window unless it would start in the padding
            out = (n + before + after - k + s - 1) // s + 1
            if (out - 1) * s >= n + before:
                out -= 1
        extra.append(max((out - 1) * s + k - (n + before + after), 0))
    widths = ((0, 0), (0, 0), (pads[0], pads[1] + extra[0]), (pads[2], pads[3] + extra[1]))
    if kind == "max":
        padded = np.pad(x, widths, constant_values=-np.inf)
        return _windows(padded, kernel, strides, (1, 1)).max(axis=(-2, -1))
    sums = _windows(np.pad(x, widths), kernel, strides, (1, 1)).sum(axis=(-2, -1))
    # Count, per window, the pixels that take part: real ones, or real plus declared padding.
    ones = np.ones((1, 1, h, w), np.float32)
    if exclude_padding:
        counted = np.pad(ones, widths)
    else:
        counted = np.pad(np.pad(ones, widths[:2] + ((pads[0], pads[1]), (pads[2], pads[3])),
                                constant_values=1),
                         ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    counts = _windows(counted, kernel, strides, (1, 1)).sum(axis=(-2, -1))
    return (sums / np.maximum(counts, 1)).astype(np.float32)


PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def pad(x: np.ndarray, widths: Sequence[tuple[int, int]], mode: str = "constant",
        value: float = 0.0) -> np.ndarray:
    """`x` padded by (before, after) `widths` of its last dimensions (MIL `pad`, NN `padding`)."""
    if mode not in PAD_MODES:
        raise VerificationError(f"unknown padding mode {mode!r}")
    x = x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x
    full = [(0, 0)] * (x.ndim - len(widths)) + [(int(a), int(b)) for a, b in widths]
    if mode == "constant":
        return np.pad(x, full, constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, full, mode=PAD_MODES[mode])  # type: ignore[call-overload]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(np.float32(alpha) * x + np.float32(beta), 0, 1)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x @ weight.T + bias, weight (out, in) as in MIL `linear` and NN `innerProduct`."""
    out = x.astype(np.float32, copy=False) @ weight.astype(np.float32, copy=False).T
    return out if bias is None else out + bias.astype(np.float32)


def batched_shape(shape: Sequence[int], x_shape: Sequence[int], batch: int) -> list[int]:
    """A reshape target with -1 inferred and 0 copied, and the batch of 1 widened to `batch`.

    The interpreters run many images at once through a program written for one: a target
    whose leading dimension is that 1 gets the batch size instead.
    """
    shape = [int(x_shape[i]) if s == 0 else int(s) for i, s in enumerate(shape)]
    if batch != 1 and shape and shape[0] == 1 and x_shape and x_shape[0] == batch:
        shape[0] = batch
    return shape


RGB, BGR = 20, 30  # FeatureTypes.proto ImageFeatureType.ColorSpace


def image_input(spec: object) -> tuple[str, int, tuple[int, int]]:
    """The model's one image input: its name, color space and (height, width)."""
    inputs = list(spec.description.input)  # type: ignore[attr-defined]
    if len(inputs) != 1 or inputs[0].type.WhichOneof("Type") != "imageType":
        raise VerificationError("the NumPy reference runs models with exactly one image input, "
                             f"this one has inputs {[i.name for i in inputs]}")
    image = inputs[0].type.imageType
    if image.colorSpace not in (RGB, BGR):
        raise VerificationError(f"image input {inputs[0].name!r} has color space "
                             f"{image.colorSpace}; the NumPy reference supports RGB and BGR")
    return inputs[0].name, image.colorSpace, (image.height, image.width)


def channels_for(pixels: np.ndarray, color_space: int, size: tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) RGB 0..255 pixels as the float tensor Core ML hands the model."""
    if tuple(pixels.shape[2:]) != tuple(size):
        raise VerificationError(f"the model takes {size[0]}x{size[1]} images, "
                             f"got {pixels.shape[2]}x{pixels.shape[3]}")
    x = pixels.astype(np.float32)
    return np.ascontiguousarray(x[:, ::-1]) if color_space == BGR else x
