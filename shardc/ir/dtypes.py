"""The IR's element types and their numpy twins (bf16 through ml_dtypes)."""
from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.Enum):
    # members are singletons: hash them by identity (Enum's own __hash__ runs Python code, and the
    # analyses test `op in SET` millions of times at 80 layers)
    __hash__ = object.__hash__

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i32 = "i32"
    i64 = "i64"
    bool = "bool"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__

    @property
    def np(self) -> np.dtype:
        return _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f16, DType.bf16)

    @property
    def is_int(self) -> bool:
        return self in (DType.i32, DType.i64)

    @property
    def itemsize(self) -> int:
        return self._itemsize  # (set below: the analyses ask for it millions of times)

    @property
    def compute(self) -> "DType":
        """The type arithmetic runs in: half floats compute in f32 and round once per op."""
        return DType.f32 if self in (DType.f16, DType.bf16) else self


_TO_NUMPY = {
    DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16),
    DType.bf16: np.dtype(ml_dtypes.bfloat16),
    DType.i32: np.dtype(np.int32),
    DType.i64: np.dtype(np.int64),
    DType.bool: np.dtype(np.bool_),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
for _d, _n in _TO_NUMPY.items():
    _d._itemsize = _n.itemsize


def from_numpy(dt) -> DType:
    dt = np.dtype(dt)
    if dt in _FROM_NUMPY:
        return _FROM_NUMPY[dt]
    from ..errors import Error
    raise Error(f"dtype {dt} is not supported by shardc (supported: {', '.join(d.value for d in DType)})")


def parse(name: str) -> DType:
    try:
        return DType(name)
    except ValueError:
        from ..errors import IRError
        raise IRError(f"unknown dtype {name!r} (expected one of {', '.join(d.value for d in DType)})") from None
