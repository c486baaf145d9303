"""Runs an ML program (.mlpackage) in NumPy, the way Core ML would, for verification.

The program is read from the saved package with coremltools' protobuf classes only:
functions, blocks, operations and their values, with weights from `weights/weight.bin`.
Every op computes in float32 and stores its result in the type the program declares, so
a float16 program rounds where Core ML's float16 storage rounds. Constants and the
constexpr_* decompression ops are evaluated once, when the program is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import reference_ops as ops
from .mil_values import CAST_TYPES, NUMPY_TYPES, ValueReader
from .reference_ops import UnsupportedOperation, VerificationError


class Args(dict):
    """An op's named inputs and attributes, with defaults for the optional ones."""

    def f32(self, name: str) -> np.ndarray:
        return np.asarray(self[name]).astype(np.float32, copy=False)

    def ints(self, name: str, default: Any = None) -> list[int]:
        value = self.get(name, default)
        return [int(v) for v in np.ravel(value)]

    def scalar(self, name: str, default: Any = None) -> Any:
        value = self.get(name, default)
        return value.item() if isinstance(value, np.ndarray) else value


def _float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Args], Any]:
    return lambda a: fn(_float(np.asarray(a["x"])), _float(np.asarray(a["y"])))


def _conv(a: Args) -> np.ndarray:
    x, w = a.f32("x"), a.f32("weight")
    k = w.shape[2:]
    strides, dilations = a.ints("strides", [1, 1]), a.ints("dilations", [1, 1])
    pads = ops.spatial_pads(a.scalar("pad_type", "valid"), x.shape[2:], k, strides, dilations,
                            a.ints("pad", [0, 0, 0, 0]))
    bias = a.f32("bias") if "bias" in a else None
    return ops.conv2d(x, w, bias, strides, pads, dilations, a.scalar("groups", 1))


def _pool(kind: str) -> Callable[[Args], np.ndarray]:
    def run(a: Args) -> np.ndarray:
        x, k, strides = a.f32("x"), a.ints("kernel_sizes"), a.ints("strides", [1, 1])
        if len(k) != 2:
            raise VerificationError(f"{kind} pooling over {len(k)} dimensions")
        pads = ops.spatial_pads(a.scalar("pad_type", "valid"), x.shape[2:], k, strides, [1, 1],
                                a.ints("pad", [0, 0, 0, 0]))
        return ops.pool2d(x, kind, k, strides, pads, bool(a.scalar("ceil_mode", False)),
                          bool(a.scalar("exclude_padding_from_average", False)))
    return run


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[Args], np.ndarray]:
    def run(a: Args) -> np.ndarray:
        axes = tuple(a.ints("axes")) if a.get("axes") is not None else None
        return fn(_float(np.asarray(a["x"])), axis=axes,
                  keepdims=bool(a.scalar("keep_dims", False)))
    return run


def _batch_norm(a: Args) -> np.ndarray:
    shape = (1, -1) + (1,) * (np.ndim(a["x"]) - 2)
    gamma = a.f32("gamma") if "gamma" in a else np.float32(1)
    beta = a.f32("beta") if "beta" in a else np.float32(0)
    scale = gamma / np.sqrt(a.f32("variance") + np.float32(a.scalar("epsilon", 1e-5)))
    return (a.f32("x") - a.f32("mean").reshape(shape)) * np.reshape(scale, shape) \
        + np.reshape(beta, shape)


def _matmul(a: Args) -> np.ndarray:
    x, y = a.f32("x"), a.f32("y")
    if a.scalar("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a.scalar("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return x @ y


def _classify(a: Args) -> tuple[list[str], np.ndarray]:
    probs = a.f32("probabilities")
    classes = [str(np.asarray(c).item()) for c in a["classes"]]
    return [classes[i] for i in probs.argmax(axis=-1)], probs


def _affine_dequantize(a: Args) -> np.ndarray:
    data = np.asarray(a["quantized_data"]).astype(np.float32)
    shape = [1] * data.ndim
    shape[a.scalar("axis", 0)] = -1
    scale, zero = a.f32("scale"), a.f32("zero_point")
    return (data - zero.reshape(shape if zero.ndim else ())) * \
        scale.reshape(shape if scale.ndim else ())


def _blockwise_shift_scale(a: Args) -> np.ndarray:
    data, scale = np.asarray(a["data"]).astype(np.float32), a.f32("scale")
    offset = a.f32("offset") if a.get("offset") is not None else None
    for axis, (n, m) in enumerate(zip(data.shape, scale.shape)):
        if n != m:  # each scale (and offset) covers a block of n // m elements on this axis
            scale = np.repeat(scale, n // m, axis)
            offset = None if offset is None else np.repeat(offset, n // m, axis)
    return scale * (data if offset is None else data - offset)


def _lut_to_dense(a: Args) -> np.ndarray:
    lut, indices = np.asarray(a["lut"]), np.asarray(a["indices"])
    if "shape" in a:  # iOS 16: one table for the whole tensor, indices packed in bytes
        from .mil_values import unpack_bits

        shape = a.ints("shape")
        bits = int(np.log2(lut.size))
        count = int(np.prod(shape))
        flat = indices if bits == 8 else unpack_bits(indices, bits, count, False)
        return lut[flat[:count]].reshape(shape)
    # iOS 18: indices already typed; lut is (groups along each axis..., palette, vector)
    rank, vector = indices.ndim, lut.shape[-1]
    groups = np.zeros(indices.shape, np.int64)
    for axis in range(rank):  # the table that covers each element, as a flat group number
        block = indices.shape[axis] // lut.shape[axis]
        along = np.arange(indices.shape[axis]) // block
        groups = groups * lut.shape[axis] + along.reshape([-1 if d == axis else 1
                                                          for d in range(rank)])
    palette = lut.reshape(-1, lut.shape[-2], vector)
    values = palette[groups, indices.astype(np.int64)]  # (indices.shape..., vector)
    if vector == 1:
        return values[..., 0]
    axis = a.scalar("vector_axis") % rank
    values = np.moveaxis(values, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= vector
    return values.reshape(shape)


def _pad(a: Args) -> np.ndarray:
    # `pad` holds (before, after) for each of the last len(pad) // 2 dimensions, in order.
    amounts = a.ints("pad")
    widths = list(zip(amounts[0::2], amounts[1::2]))
    return ops.pad(np.asarray(a["x"]), widths, str(a.scalar("mode", "constant")),
                   a.scalar("constant_val", 0.0))


def _reshape(a: Args, batch: int) -> np.ndarray:
    x = np.asarray(a["x"])
    return x.reshape(ops.batched_shape(a.ints("shape"), x.shape, batch))


OPS: dict[str, Callable[[Args], Any]] = {
    "const": lambda a: a["val"],
    "identity": lambda a: a["x"],
    "cast": lambda a: np.asarray(a["x"]).astype(CAST_TYPES[a.scalar("dtype")]),
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum), "pow": _binary(np.power),
    "relu": lambda a: np.maximum(a.f32("x"), 0),
    "relu6": lambda a: np.clip(a.f32("x"), 0, 6),
    "clip": lambda a: np.clip(a.f32("x"), a.scalar("alpha"), a.scalar("beta")),
    "sigmoid": lambda a: 1 / (1 + np.exp(-a.f32("x"))),
    "sigmoid_hard": lambda a: ops.hard_sigmoid(a.f32("x"), a.scalar("alpha", 0.2),
                                               a.scalar("beta", 0.5)),
    "thresholded_relu": lambda a: np.where(a.f32("x") >= a.scalar("alpha", 1.0),
                                           a.f32("x"), 0),
    "silu": lambda a: a.f32("x") / (1 + np.exp(-a.f32("x"))),
    "tanh": lambda a: np.tanh(a.f32("x")),
    "conv": _conv, "batch_norm": _batch_norm, "pad": _pad,
    "max_pool": _pool("max"), "avg_pool": _pool("avg"),
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max),
    "squeeze": lambda a: np.squeeze(a["x"], axis=tuple(a.ints("axes")) if "axes" in a else None),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(a.ints("axes"))),
    "transpose": lambda a: np.transpose(a["x"], a.ints("perm")),
    "flatten2d": lambda a: np.reshape(
        a["x"], (int(np.prod(np.shape(a["x"])[:a.scalar("axis", 1)])), -1)),
    "linear": lambda a: ops.linear(a.f32("x"), a.f32("weight"),
                                   a.f32("bias") if "bias" in a else None),
    "matmul": _matmul,
    "softmax": lambda a: ops.softmax(a.f32("x"), a.scalar("axis", -1)),
    "classify": _classify,
    "constexpr_affine_dequantize": _affine_dequantize,
    "constexpr_blockwise_shift_scale": _blockwise_shift_scale,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_cast": lambda a: np.asarray(a["source_val"]).astype(
        CAST_TYPES[a.scalar("output_dtype")]),
}
BATCHED_OPS = {"reshape": _reshape}  # ops that take the batch size (see ops.batched_shape)
CONSTANT_OPS = {"const"} | {name for name in OPS if name.startswith("constexpr_")}


class MILReference:
    """An ML program's main function, ready to run on batches of RGB pixels."""

    backend = "numpy-reference"

    def __init__(self, spec: Any, model_dir: Path, source: str = "ML program"):
        if spec.WhichOneof("Type") != "mlProgram":
            raise VerificationError(f"{source} is not an ML program")
        functions = spec.mlProgram.functions
        if "main" not in functions:
            raise VerificationError(f"{source} has no 'main' function")
        main = functions["main"]
        if main.opset not in main.block_specializations:
            raise VerificationError(f"{source}: 'main' has no block for its opset {main.opset}")
        block = main.block_specializations[main.opset]
        self.source = source
        self.input_name, self.color_space, self.size = ops.image_input(spec)
        declared = {i.name: i.type.tensorType.dataType for i in main.inputs}
        self.input_type = NUMPY_TYPES.get(declared.get(self.input_name), np.float32)
        reader = ValueReader(model_dir)
        self.constants: dict[str, Any] = {}
        self.steps: list[tuple[Any, str, dict[str, list[Any]]]] = []
        classify = None
        for i, op in enumerate(block.operations):
            where = f"operation {i} of function 'main' in {source}, output " \
                    f"{op.outputs[0].name if op.outputs else '?'!r}"
            if op.type not in OPS and op.type not in BATCHED_OPS:
                raise UnsupportedOperation(op.type, where)
            if len(op.blocks):
                raise UnsupportedOperation(op.type, where, "operations with nested blocks")
            bindings = {name: [("var", b.name) if b.WhichOneof("binding") == "name"
                               else ("value", reader.read(b.value)) for b in arg.arguments]
                        for name, arg in op.inputs.items()}
            bindings.update({name: [("value", reader.read(v))]
                             for name, v in op.attributes.items() if name != "name"})
            if op.type in CONSTANT_OPS:  # weights: decoded (and decompressed) once
                self.constants.update(self._execute(op, where, bindings, self.constants, 1))
            else:
                self.steps.append((op, where, bindings))
            if op.type == "classify":
                classify = (op, bindings)
        if classify is None:
            raise VerificationError(f"{source} is not a classifier (no classify operation)")
        op, bindings = classify
        self.output = op.outputs[1].name
        self.drops = _last_uses(self.steps, keep={self.output, *self.constants})
        self.classes = [str(np.asarray(c).item())
                        for c in self._arguments({"classes": bindings["classes"]}, self.constants,
                                                "classify")["classes"]]

    @staticmethod
    def _arguments(bindings: dict[str, list[Any]], env: dict[str, Any], where: str) -> Args:
        args = Args()
        for name, values in bindings.items():
            try:
                resolved = [env[v] if kind == "var" else v for kind, v in values]
            except KeyError as e:
                raise VerificationError(f"{where} reads {e.args[0]!r}, which nothing defines") \
                    from None
            args[name] = resolved[0] if len(resolved) == 1 else resolved
        return args

    def _execute(self, op: Any, where: str, bindings: dict[str, list[Any]], env: dict[str, Any],
                 batch: int) -> dict[str, Any]:
        args = self._arguments(bindings, env, where)
        try:
            result = BATCHED_OPS[op.type](args, batch) if op.type in BATCHED_OPS \
                else OPS[op.type](args)
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise VerificationError(f"{op.type} failed at {where}: {e}") from e
        results = result if len(op.outputs) > 1 else (result,)
        return {out.name: _stored(value, out) for out, value in zip(op.outputs, results)}

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities, in `classes` order, for (N, 3, H, W) RGB pixels."""
        x = ops.channels_for(pixels, self.color_space, self.size).astype(self.input_type)
        env = dict(self.constants)
        env[self.input_name] = x
        for (op, where, bindings), drop in zip(self.steps, self.drops):
            env.update(self._execute(op, where, bindings, env, len(x)))
            for name in drop:  # a 224 px batch would otherwise keep every activation
                del env[name]
        return np.asarray(env[self.output], dtype=np.float32).reshape(len(x), -1)


def _last_uses(steps: list[tuple[Any, str, dict[str, list[Any]]]],
               keep: set[str]) -> list[list[str]]:
    """For each step, the variables no later step reads (to free once it has run)."""
    last: dict[str, int] = {}
    for i, (op, _, bindings) in enumerate(steps):
        for values in bindings.values():
            for kind, name in values:
                if kind == "var":
                    last[name] = i
        for out in op.outputs:  # an output nothing reads is freed where it is made
            last.setdefault(out.name, i)
    drops: list[list[str]] = [[] for _ in steps]
    for name, i in last.items():
        if name not in keep:
            drops[i].append(name)
    return drops


def _stored(value: Any, output: Any) -> Any:
    """The value in the type the program declares for it (float16 rounds here)."""
    kind = output.type.WhichOneof("type")
    if kind == "tensorType" and output.type.tensorType.dataType in NUMPY_TYPES \
            and isinstance(value, (np.ndarray, np.generic, float, int)):
        return np.asarray(value).astype(NUMPY_TYPES[output.type.tensorType.dataType], copy=False)
    return value
