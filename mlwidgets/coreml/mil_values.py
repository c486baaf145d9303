"""Reading an ML program's values: immediate tensors and blobs in `weights/weight.bin`.

The weight file is MIL's blob storage format: a 64-byte storage header (blob count,
version 2), then for each blob a 64-byte metadata record (sentinel 0xDEADBEEF, blob data
type, size in bytes, data offset) followed by the data, each 64-byte aligned. A
`BlobFileValue` names the file and the offset of a metadata record.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from .reference_ops import VerificationError

# MIL.proto DataType numbers (coremltools.proto.MIL_pb2.DataType) -> numpy storage type.
NUMPY_TYPES: dict[int, Any] = {
    1: np.bool_, 10: np.float16, 11: np.float32, 12: np.float64, 21: np.int8, 22: np.int16,
    23: np.int32, 24: np.int64, 31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64,
}
STRING = 2
# Sub-byte types: DataType -> (bits, signed); stored packed, least significant bit first.
SUB_BYTE: dict[int, tuple[int, bool]] = {
    25: (4, True), 35: (4, False), 36: (2, False), 37: (1, False), 38: (6, False), 39: (3, False),
}
# What the blob metadata's data type must be for each MIL DataType.
BLOB_TYPES = {10: 1, 11: 2, 31: 3, 21: 4, 13: 5, 22: 6, 32: 7, 25: 8, 37: 9, 36: 10, 35: 11,
              39: 12, 38: 13, 23: 14, 33: 15}
# The cast op's dtype strings.
CAST_TYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8,
              "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32,
              "int64": np.int64, "bool": np.bool_}
BLOB_SENTINEL = 0xDEADBEEF


def unpack_bits(data: bytes | np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """`count` integers of `bits` bits each, packed from the least significant bit up."""
    raw = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data.view(np.uint8)
    if raw.size * 8 < bits * count:
        raise VerificationError(f"{raw.size} bytes cannot hold {count} {bits}-bit values")
    flat = np.unpackbits(raw, bitorder="little")[:bits * count].reshape(count, bits)
    values = (flat.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.astype(np.int8 if signed else np.uint8)


class BlobFile:
    """One weight file, read once; blobs are decoded on request."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise VerificationError(f"cannot read the weight file {path}: {e}") from None
        if len(self.data) < 64:
            raise VerificationError(f"{path} is too short to be a Core ML weight file")
        count, version = struct.unpack_from("<II", self.data, 0)
        if version != 2:
            raise VerificationError(f"{path}: unknown weight file version {version} (expected 2)")
        self.count = count

    def read(self, offset: int, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
        if offset + 64 > len(self.data):
            raise VerificationError(f"{self.path}: blob offset {offset} is past its end")
        sentinel, blob_type, size, start = struct.unpack_from("<IIQQ", self.data, offset)
        if sentinel != BLOB_SENTINEL:
            raise VerificationError(f"{self.path}: no blob metadata at offset {offset} "
                                 f"(sentinel {sentinel:#x})")
        if BLOB_TYPES.get(dtype) != blob_type:
            raise VerificationError(f"{self.path}: blob at {offset} has data type {blob_type}, "
                                 f"the program expects MIL type {dtype}")
        if start + size > len(self.data):
            raise VerificationError(f"{self.path}: blob at {offset} runs past the end of the file")
        raw = self.data[start:start + size]
        count = int(np.prod(shape, dtype=np.int64))
        if dtype in SUB_BYTE:
            bits, signed = SUB_BYTE[dtype]
            return unpack_bits(raw, bits, count, signed).reshape(shape)
        array = np.frombuffer(raw, NUMPY_TYPES[dtype])
        if array.size != count:
            raise VerificationError(f"{self.path}: blob at {offset} holds {array.size} values, "
                                 f"the program expects {count} {shape}")
        return array.reshape(shape)


class ValueReader:
    """Turns MIL `Value` messages into numpy arrays (tensors) or lists (list values)."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.files: dict[str, BlobFile] = {}

    def blob_file(self, name: str) -> BlobFile:
        if name not in self.files:
            relative = name.removeprefix("@model_path/")
            self.files[name] = BlobFile(self.model_dir / relative)
        return self.files[name]

    def read(self, value: Any) -> Any:
        kind = value.WhichOneof("value")
        tensor_type = value.type.tensorType if value.type.WhichOneof("type") == "tensorType" \
            else None
        if kind == "blobFileValue":
            if tensor_type is None:
                raise VerificationError("a blob file value that is not a tensor")
            blob = value.blobFileValue
            return self.blob_file(blob.fileName).read(blob.offset, tensor_type.dataType,
                                                      shape_of(tensor_type))
        immediate = value.immediateValue
        which = immediate.WhichOneof("value")
        if which == "list":
            return [self.read(v) for v in immediate.list.values]
        if which == "tuple":
            return tuple(self.read(v) for v in immediate.tuple.values)
        if which != "tensor" or tensor_type is None:
            raise VerificationError(f"cannot read a MIL value of kind {which or kind!r}")
        return tensor_value(immediate.tensor, tensor_type.dataType, shape_of(tensor_type))


def shape_of(tensor_type: Any) -> tuple[int, ...]:
    dims = []
    for dim in tensor_type.dimensions:
        if dim.WhichOneof("dimension") != "constant":
            raise VerificationError("the NumPy reference needs fixed shapes, found a flexible one")
        dims.append(dim.constant.size)
    return tuple(dims)


def tensor_value(tensor: Any, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """An immediate TensorValue as an array of the declared type and shape."""
    field = tensor.WhichOneof("value")
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == STRING:
        return np.array([s.decode() if isinstance(s, bytes) else s
                         for s in tensor.strings.values], dtype=object).reshape(shape)
    if field == "bytes":  # fp16, 8-bit, uint32 and sub-byte types are serialized as raw bytes
        raw = tensor.bytes.values
        if dtype in SUB_BYTE:
            bits, signed = SUB_BYTE[dtype]
            return unpack_bits(raw, bits, count, signed).reshape(shape)
        return np.frombuffer(raw, NUMPY_TYPES[dtype]).reshape(shape).copy()
    values = getattr(tensor, field).values if field else []
    if dtype not in NUMPY_TYPES:
        raise VerificationError(f"cannot read an immediate tensor of MIL data type {dtype}")
    return np.array(list(values), dtype=NUMPY_TYPES[dtype]).reshape(shape)
