"""Meshes, partition specs and per-tensor shardings, with the index arithmetic that maps a
device's local block to global positions (uneven dims are padded to a multiple, never wrong)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ShardingError


class Mesh:
    """Named axes over devices 0..n-1, row-major: Mesh({"dp": 2, "tp": 4})."""

    def __init__(self, axes: dict[str, int] | None = None, **kw: int):
        axes = dict(axes or {}, **kw)
        if not axes:
            raise ShardingError("a Mesh needs at least one axis, e.g. Mesh({'dp': 2})")
        for name, size in axes.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ShardingError(f"mesh axis name {name!r} must be an identifier")
            if not isinstance(size, (int, np.integer)) or size < 1:
                raise ShardingError(f"mesh axis {name!r} has size {size!r}; sizes must be positive ints")
        self.axes = {k: int(v) for k, v in axes.items()}
        self.axis_names = tuple(self.axes)
        self.shape = tuple(self.axes.values())
        self.size = math.prod(self.shape)
        self.devices = np.arange(self.size).reshape(self.shape)

    def __repr__(self) -> str:
        return "Mesh(" + ", ".join(f"{k}={v}" for k, v in self.axes.items()) + ")"

    def __eq__(self, other) -> bool:
        return isinstance(other, Mesh) and self.axes == other.axes

    def __hash__(self) -> int:
        return hash(tuple(self.axes.items()))

    def coords(self, device: int) -> dict[str, int]:
        return dict(zip(self.axis_names, np.unravel_index(device, self.shape)))

    def group_size(self, axes) -> int:
        return math.prod(self.axes[a] for a in axes)

    def group_rank(self, device: int, axes) -> int:
        """The device's position within its group over `axes` (row-major in the order given)."""
        c = self.coords(device)
        r = 0
        for a in axes:
            r = r * self.axes[a] + int(c[a])
        return r

    def groups(self, axes) -> list[list[int]]:
        """Device groups that vary along `axes` (ordered as given) with the other axes fixed."""
        axes = tuple(axes)
        rest = [a for a in self.axis_names if a not in axes]
        order = [self.axis_names.index(a) for a in rest + list(axes)]
        arr = self.devices.transpose(order).reshape(-1, self.group_size(axes))
        return [list(map(int, row)) for row in arr]


class Strided:
    """A P entry for a fused dim: the dim is `blocks` equal blocks laid end to end (a fused QKV
    weight's q, k and v rows), and each block is split over `axes`, so every device holds the
    same slice of each block: Megatron-LM's `stride`, torch DTensor's `_StridedShard`.
    `P(Strided("tp", 3), None)` on GPT-2's [3·d, d] c_attn weight gives each device whole heads
    of q, k and v; plain `P("tp", None)` cuts the dim into contiguous runs of 3·d/tp rows, which
    cross the q/k/v boundaries (the partitioner then moves the weight to reach whole heads).
    Each block must split evenly over the axes (no padding)."""
    __slots__ = ("axes", "blocks")

    def __init__(self, axes, blocks: int):
        names = (axes,) if isinstance(axes, str) else tuple(axes) if isinstance(axes, (tuple, list)) else None
        if not names or not all(isinstance(a, str) for a in names):
            raise ShardingError(f"Strided({axes!r}, {blocks!r}): axes must be an axis name or a tuple of axis names")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 2:
            raise ShardingError(f"Strided({axes!r}, {blocks!r}): blocks must be an int >= 2 "
                                f"(one block is the plain entry {axes!r})")
        self.axes, self.blocks = names, blocks

    def __eq__(self, other) -> bool:
        return isinstance(other, Strided) and (self.axes, self.blocks) == (other.axes, other.blocks)

    def __hash__(self) -> int:
        return hash((Strided, self.axes, self.blocks))

    def __repr__(self) -> str:
        a = self.axes[0] if len(self.axes) == 1 else self.axes
        return f"Strided({a!r}, {self.blocks})"


def entry_axes(e) -> tuple[str, ...]:
    """The mesh axes one P entry splits over (None, a name, a tuple of names, or a Strided)."""
    return () if e is None else (e,) if isinstance(e, str) else e.axes if isinstance(e, Strided) else tuple(e)


class P(tuple):
    """PartitionSpec as in jax.sharding: one entry per dim, None, an axis name, or a tuple of names
    (and shardc's `Strided(axes, blocks)` for fused dims).
    `priority` (0 strongest, as Shardy's p0, p1, ...) settles conflicts between specs: e.g. a
    sequence split of the inputs at priority 1 yields to tensor-parallel weights at 0."""

    def __new__(cls, *entries, priority: int = 0):
        norm = []
        for e in entries:
            if e is None or isinstance(e, (str, Strided)):
                norm.append(e)
            elif isinstance(e, (tuple, list)) and all(isinstance(a, str) for a in e):
                norm.append(tuple(e) if len(e) != 1 else e[0])
            else:
                raise ShardingError(f"P entry {e!r} must be None, an axis name, a tuple of axis names "
                                    f"or Strided(axes, blocks)")
        self = super().__new__(cls, norm)
        if not isinstance(priority, int) or priority < 0:
            raise ShardingError(f"P priority must be a non-negative int, got {priority!r}")
        self.priority = priority
        return self

    def __repr__(self) -> str:
        pr = f", priority={self.priority}" if self.priority else ""
        return "P(" + ", ".join(repr(e) for e in self) + pr + ")"


Part = tuple  # (size, axes): one factor of a dim and the mesh axes it is split over


@dataclass(frozen=True)
class DimSharding:
    """How one dim is split: over `axes` (major to minor). `outer` > 1 views the dim as
    [outer, size/outer] and splits only the inner factor, so fused dims (QKV) keep whole heads.
    `parts` (compound layouts, as Shardy's compound factors) views the dim as factors
    (size, axes), major to minor, each split over its own axes and padded to a multiple on its
    own: a merged [b·h] dim with b over dp and h over tp is ((b, ('dp',)), (h, ('tp',))). Use
    `compound`, which gives the plain or `outer` form wherever one says the same. A compound
    layout has `outer` 0 (no single stride), so code that only knows plain and strided splits
    (`outer == 1` means one contiguous block per device) never mistakes it for a plain one."""
    axes: tuple[str, ...] = ()
    outer: int = 1
    parts: tuple[Part, ...] = ()

    def layout(self, size: int) -> tuple[Part, ...]:
        """The dim as (size, axes) factors, major to minor, whatever form it is written in."""
        if self.parts:
            return self.parts
        if self.outer > 1:
            return ((self.outer, ()), (size // self.outer, self.axes))
        return ((size, self.axes),)

    @property
    def strided(self) -> bool:
        """Not one contiguous block per device (an `outer` stride or a compound layout)."""
        return self.outer > 1 or bool(self.parts)

    @staticmethod
    def compound(parts, mesh: "Mesh") -> "DimSharding":
        """The canonical DimSharding of a dim laid out as `parts`: factors that one split can
        say merge (an unsplit minor factor under an evenly split major one; a major factor
        split into one element per device); then plain, `outer`, or compound."""
        # (propagation asks this of the same few layouts very often)
        return _compound(tuple((int(s), tuple(a)) for s, a in parts), mesh)

    @staticmethod
    def _compound(parts, mesh: "Mesh") -> "DimSharding":
        out: list[Part] = []
        for size, axes in parts:
            size, axes = int(size), tuple(axes)
            if size == 1 and not axes:
                continue
            if out:
                s0, a0 = out[-1]
                n0, n1 = mesh.group_size(a0), mesh.group_size(axes)
                if (not axes and s0 % n0 == 0) or (not a0 and not axes) or (s0 == n0 and size % n1 == 0):
                    out[-1] = (s0 * size, a0 + axes)
                    continue
            out.append((size, axes))
        if not any(a for _, a in out):
            return DimSharding()
        if len(out) == 1:
            return DimSharding(out[0][1])
        if len(out) == 2 and not out[0][1] and out[1][0] % mesh.group_size(out[1][1]) == 0:
            return DimSharding(out[1][1], out[0][0])
        return DimSharding(tuple(a for _, ax in out for a in ax), 0, tuple(out))

    def __repr__(self) -> str:
        if self.parts:
            return "·".join(f"{s}" if not a else f"{a[0] if len(a) == 1 else a!r}:{s}" for s, a in self.parts)
        a = self.axes[0] if len(self.axes) == 1 else self.axes
        return repr(a) if self.outer == 1 else f"{a!r}/{self.outer}"


_compound = functools.lru_cache(maxsize=1 << 14)(DimSharding._compound)


def restrict_dim(d: DimSharding, size: int, keep, mesh: "Mesh") -> DimSharding:
    """The dim with only the axes in `keep`: each factor keeps the longest prefix of its axes
    that are kept (so the blocks of the result are unions of the blocks of `d`)."""
    parts = []
    for s, axes in d.layout(size):
        k = 0
        while k < len(axes) and axes[k] in keep:
            k += 1
        parts.append((s, axes[:k]))
    return DimSharding.compound(parts, mesh)


def split_part(size: int, axes: tuple[str, ...], major: int, mesh: "Mesh"):
    """Cut one (size, axes) part into (major, ...) and (size/major, ...) with the same blocks:
    the major piece takes the leading axes while they divide it; the rest go to the minor piece
    only if the major one is split completely and the minor one evenly (else None)."""
    take, prod = [], 1
    for a in axes:
        if major % (prod * mesh.axes[a]):
            break
        take.append(a)
        prod *= mesh.axes[a]
    rest = axes[len(take):]
    if rest and (prod != major or (size // major) % mesh.group_size(rest)):
        return (major, tuple(take)), None
    return (major, tuple(take)), (size // major, tuple(rest))


def align(a: DimSharding, b: DimSharding, size: int, mesh: "Mesh"):
    """Both layouts of a dim over common factors: [(size, axes in a, axes in b)], major first;
    None where some factor's split cannot be cut where the other layout needs it."""
    pa, pb = list(a.layout(size)), list(b.layout(size))
    out = []
    while pa and pb:
        (sa, xa), (sb, xb) = pa[0], pb[0]
        if sa == sb:
            out.append((sa, xa, xb))
            pa.pop(0)
            pb.pop(0)
            continue
        big, small = (pa, pb) if sa > sb else (pb, pa)
        s0, x0 = big[0]
        if s0 % small[0][0]:
            return None
        major, minor = split_part(s0, x0, small[0][0], mesh)
        if minor is None:
            return None
        big[0:1] = [major, minor]
    return out if not pa and not pb else None


def extends_dim(cur: DimSharding, new: DimSharding, size: int, mesh: "Mesh") -> bool:
    """Is `new` the layout `cur` with more splits (each of its factors split further)?"""
    if not cur.axes:
        return True
    common = align(cur, new, size, mesh)
    return common is not None and all(nb[:len(ca)] == ca for _, ca, nb in common)


REPLICATED_DIM = DimSharding()


@dataclass(frozen=True)
class Sharding:
    """A tensor's layout: each dim's split, and the axes over which it is a pending partial
    reduction (`partial_op` sum, max or min) that has not been all-reduced yet."""
    dims: tuple[DimSharding, ...]
    partial: tuple[str, ...] = ()
    partial_op: str = "sum"

    @staticmethod
    def replicated(rank: int) -> "Sharding":
        return Sharding((REPLICATED_DIM,) * rank)

    @staticmethod
    def from_spec(spec: P, rank: int) -> "Sharding":
        dims = [DimSharding(e.axes, e.blocks) if isinstance(e, Strided) else DimSharding(entry_axes(e)) for e in spec]
        return Sharding(tuple(dims) + (REPLICATED_DIM,) * (rank - len(dims)))

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def used_axes(self) -> tuple[str, ...]:
        return tuple(a for d in self.dims for a in d.axes) + tuple(self.partial)

    @property
    def is_replicated(self) -> bool:
        return not self.used_axes

    def without_partial(self) -> "Sharding":
        return Sharding(self.dims)

    def spec(self) -> P:
        return P(*[None if not d.axes else d.axes[0] if len(d.axes) == 1 else d.axes for d in self.dims])

    def __repr__(self) -> str:
        body = ", ".join("-" if not d.axes else repr(d) for d in self.dims)
        part = f" partial({self.partial_op}:{','.join(self.partial)})" if self.partial else ""
        return f"[{body}]{part}"


def _pads(size: int, d: DimSharding, mesh: Mesh) -> bool:
    return any(s % mesh.group_size(a) for s, a in d.layout(size))


def padded(size: int, d: DimSharding, mesh: Mesh) -> bool:
    """Does the local block of this dim hold padding on some device?"""
    return bool(d.axes) and _pads(size, d, mesh)


def local_dim(size: int, d: DimSharding, mesh: Mesh) -> int:
    """Local extent of a dim: ceil(size / n) per device (padded), per outer block when strided,
    the product of its factors' (padded) local extents when compound."""
    if d.parts:
        return math.prod(-(-s // mesh.group_size(a)) for s, a in d.parts)
    n = mesh.group_size(d.axes)
    if d.outer > 1:
        return d.outer * (size // d.outer // n)
    return -(-size // n)


def local_shape(shape, s: Sharding, mesh: Mesh) -> tuple[int, ...]:
    return tuple(local_dim(n, d, mesh) for n, d in zip(shape, s.dims))


def global_indices(size: int, d: DimSharding, mesh: Mesh, device: int) -> np.ndarray:
    """Global position of each local position of a dim on `device` (may run past size: padding)."""
    n = mesh.group_size(d.axes)
    r = mesh.group_rank(device, d.axes)
    loc = local_dim(size, d, mesh)
    if d.parts:
        p = np.arange(loc)
        g = np.zeros(loc, dtype=np.int64)
        valid = np.ones(loc, dtype=bool)
        rest = p
        locs = [-(-s // mesh.group_size(a)) for s, a in d.parts]
        stride = loc
        for (s, a), ls in zip(d.parts, locs):
            stride //= ls
            li = rest // stride
            rest = rest % stride
            gi = mesh.group_rank(device, a) * ls + li if a else li
            valid &= gi < s
            g = g * s + gi
        return np.where(valid, g, size + p)
    if d.outer > 1:
        inner = size // d.outer
        per = inner // n
        p = np.arange(loc)
        return (p // per) * inner + r * per + p % per
    return r * loc + np.arange(loc)


def shard_array(x: np.ndarray, s: Sharding, mesh: Mesh, device: int) -> np.ndarray:
    """The device's local block of a global array (padding repeats the last element: finite data)."""
    out = x
    for ax, d in enumerate(s.dims):
        if d.axes:
            idx = np.minimum(global_indices(x.shape[ax], d, mesh, device), x.shape[ax] - 1)
            out = np.take(out, idx, axis=ax)
    return np.array(out, order="C", copy=True)  # (ascontiguousarray would make 0-d arrays 1-d)


def unshard_arrays(blocks: list[np.ndarray], shape, s: Sharding, mesh: Mesh,
                   check_replicas: bool = True, what: str = "tensor") -> np.ndarray:
    """Reassemble a global array from every device's block; replicas must agree (exactly)."""
    if s.partial:
        raise ShardingError(f"{what}: cannot assemble a pending partial {s}")
    out = np.empty(shape, dtype=blocks[0].dtype)
    written = np.zeros(shape, dtype=bool)
    for dev, blk in enumerate(blocks):
        sel = []
        for ax, d in enumerate(s.dims):
            g = global_indices(shape[ax], d, mesh, dev) if d.axes else np.arange(shape[ax])
            sel.append(g)
        valid = [g < shape[ax] for ax, g in enumerate(sel)]
        local = blk[np.ix_(*valid)] if blk.ndim else blk
        index = np.ix_(*[g[v] for g, v in zip(sel, valid)]) if blk.ndim else ()
        if check_replicas:
            seen = written[index]
            if seen.any():
                prev, new = out[index][seen], local[seen]
                if not np.array_equal(prev, new, equal_nan=True):
                    raise ShardingError(f"{what}: replicas disagree on device {dev} (a partitioner bug)")
        out[index] = local
        written[index] = True
    if not written.all():
        raise ShardingError(f"{what}: devices do not cover the whole tensor (a partitioner bug)")
    return out
