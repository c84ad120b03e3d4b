"""Symbolic index expressions: how a kernel names the element of a tensor it is working on.

Every fused kernel walks a tile of its iteration space; a tensor's element at that tile is named by
one expression per dim (`Ix`), in terms of the tile's index variables (e.g. `rm` rows, `rn` cols).
Layout ops never move data: broadcast, transpose, slice and reshape only rewrite these expressions
(a reshape regroups dims whose sizes multiply to the same product). `deps` records which tile
variables an expression depends on, so a kernel knows which masks a load needs and whether a
reduction can be computed from the tile it holds.

The text is Python-syntax integer arithmetic, shared by the Triton and (later) Pallas emitters.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..ir.shapes import reshape_groups


class Ix:
    """One index expression: source text, and the tile variables it depends on."""

    __slots__ = ("text", "deps")

    def __init__(self, text: str | int, deps=frozenset()):
        self.text = str(text)
        self.deps = frozenset(deps)

    @property
    def const(self) -> int | None:
        """The value when the expression is an integer literal."""
        if not self.deps and self.text.lstrip("-").isdigit():
            return int(self.text)
        return None

    def __add__(self, k: "Ix | int") -> "Ix":
        k = _ix(k)
        if self.const is not None and k.const is not None:
            return Ix(self.const + k.const)
        if k.const == 0:
            return self
        if self.const == 0:
            return k
        return Ix(f"({self.text} + {k.text})", self.deps | k.deps)

    def __sub__(self, k: int) -> "Ix":
        return self + (-k)

    def __mul__(self, k: int) -> "Ix":
        if k == 1 or self.const == 0:
            return self
        if k == 0:
            return Ix(0)
        if self.const is not None:
            return Ix(self.const * k)
        return Ix(f"{self.text} * {k}", self.deps)

    def __floordiv__(self, k: int) -> "Ix":
        if k == 1:
            return self
        if self.const is not None:
            return Ix(self.const // k)
        return Ix(f"({self.text} // {k})", self.deps)

    def __mod__(self, k: int) -> "Ix":
        if k == 1:
            return Ix(0)
        if self.const is not None:
            return Ix(self.const % k)
        return Ix(f"({self.text} % {k})", self.deps)

    def __eq__(self, other) -> bool:
        return isinstance(other, Ix) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text


def _ix(k) -> Ix:
    return k if isinstance(k, Ix) else Ix(int(k))


Index = tuple  # tuple[Ix, ...], one per dim


def strides(shape: Sequence[int]) -> list[int]:
    """Row-major (contiguous) strides in elements."""
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def flatten(idx: Sequence[Ix], shape: Sequence[int]) -> Ix:
    """Row-major linear offset of a multi-index."""
    total = Ix(0)
    for i, st, d in zip(idx, strides(shape), shape):
        if d != 1:
            total = total + i * st
    return total


def unflatten(flat: Ix, shape: Sequence[int]) -> Index:
    """Multi-index of a row-major linear offset (`flat` ranges over prod(shape))."""
    out = []
    st = strides(shape)
    for d, size in enumerate(shape):
        if size == 1:
            out.append(Ix(0))
            continue
        e = flat // st[d]
        if math.prod(shape[:d]) > 1:
            e = e % size
        out.append(e)
    return tuple(out)


def reshape_index(idx: Sequence[Ix], out_shape: Sequence[int], in_shape: Sequence[int]) -> Index:
    """The operand index of `reshape(x: in_shape) -> out_shape` at result index `idx`."""
    if math.prod(out_shape) != math.prod(in_shape):
        raise ValueError(f"reshape {list(in_shape)} -> {list(out_shape)} changes the size")
    res: list[Ix] = [Ix(0)] * len(in_shape)
    for gi, gj in reshape_groups(in_shape, out_shape):
        flat = flatten([idx[j] for j in gj], [out_shape[j] for j in gj])
        for d, e in zip(gi, unflatten(flat, [in_shape[i] for i in gi])):
            res[d] = e
    return tuple(res)
