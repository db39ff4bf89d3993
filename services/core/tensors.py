"""NumPy arrays <-> pirm.v1.Tensor: raw little-endian bytes, checked before use."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pirm.v1 import common_pb2

from services.core.errors import InvalidArgument

_DTYPES: dict[common_pb2.DataType.ValueType, np.dtype[Any]] = {
    common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    common_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise InvalidArgument(f"unsupported tensor dtype {array.dtype}; use float32 or uint8")
    return common_pb2.Tensor(
        dtype=code, shape=list(array.shape), content=np.ascontiguousarray(array, dtype).tobytes()
    )


def from_tensor(tensor: common_pb2.Tensor, what: str = "tensor") -> np.ndarray:
    """The array a Tensor message holds; InvalidArgument if its header and bytes disagree."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"{what}: unknown dtype {tensor.dtype}; use FLOAT32 or UINT8")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: negative dimension in shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(tensor.content):
        raise InvalidArgument(
            f"{what}: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"got {len(tensor.content)}"
        )
    return np.frombuffer(tensor.content, dtype=dtype).reshape(shape)


def as_unit_float32(array: np.ndarray) -> np.ndarray:
    """uint8 images become float32 / 255 (the challenge's conversion); float32 stays as it is."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return array.astype(np.float32, copy=False)
