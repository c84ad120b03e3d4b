"""Resharding a local value from one sharding to another with the fewest bytes: reduce-scatter
or all-reduce for pending partials, all-to-all when a split moves between dims, all-gather for
splits that go, and a local slice (no communication) for splits that come. Uneven dims are
padded; where a padded layout would not line up, the dim is gathered whole and cut again."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..ir.emitter import Emitter
from ..ir import DType, Node, Op
from .mesh import DimSharding, Mesh, Sharding, align, local_dim, local_shape, padded
from .program import CollectiveRecord, wire_bytes


def partwise(c: DimSharding, t: DimSharding, size: int, mesh: Mesh):
    """How a compound dim goes from layout c to t factor by factor: [(size, axes in c, axes in
    t)] where each factor only gathers a suffix of its axes or splits further, evenly; else None."""
    if not (c.parts or t.parts) or c == t:
        return None
    return factorwise(c, t, size, mesh)


def factorwise(c: DimSharding, t: DimSharding, size: int, mesh: Mesh):
    """partwise for any two layouts of a dim, plain and strided (`outer`) ones included."""
    common = align(c, t, size, mesh)
    if common is None:
        return None
    for s, ca, ta in common:
        if ca == ta:
            continue
        if ca[:len(ta)] != ta and ta[:len(ca)] != ca:
            return None
        if s % mesh.group_size(ca) or s % mesh.group_size(ta):
            return None
    return common


def scatter_part(c: DimSharding, t: DimSharding, size: int, pending, mesh: Mesh):
    """(the common factors, the factor index, the pending axes to scatter it over) where a
    pending sum can be reduce-scattered straight into one factor of a compound or strided target
    (a fused-QKV bias gradient into its 'dp'/3 layout: a reduce-scatter, not all-reduce + cut)."""
    common = factorwise(c, t, size, mesh) if (c.strided or t.strided) and c != t else None
    for i, (s, ca, ta) in enumerate(common or ()):
        take = ta[len(ca):]
        if ta[:len(ca)] == ca and take and all(a in pending for a in take[:1]):
            k = 0
            while k < len(take) and take[k] in pending:
                k += 1
            return common, i, take[:k]
    return None


def reshard_cost(shape, itemsize: int, have: Sharding, want: Sharding, mesh: Mesh) -> int:
    """Estimated bytes a reshard moves: partial sums reduced (a reduce-scatter where the target
    splits a dim over a pending axis, else an all-reduce: twice) and splits gathered."""
    if have == want:
        return 0
    local = math.prod(local_shape(shape, have, mesh)) * itemsize
    cost = 0
    if have.partial:
        scatter = any(a in want.dims[d].axes and not want.dims[d].strided and not have.dims[d].strided
                      for d in range(len(shape)) for a in have.partial)  # as _resolve_partial can
        scatter = scatter or any(scatter_part(have.dims[d], want.dims[d], shape[d], have.partial, mesh)
                                 for d in range(len(shape)))
        cost += local if scatter else 2 * local
    grow = 1
    for c, t, size in zip(have.dims, want.dims, shape):
        common = partwise(c, t, size, mesh) if c.axes else None
        if common is not None:  # factor by factor: only what each factor drops
            grow *= math.prod(mesh.group_size(ca[len(ta):]) for _, ca, ta in common if ca[:len(ta)] == ta)
        elif c.axes and t.axes and c != t and (c.outer != t.outer or c.parts or t.parts):
            grow *= mesh.group_size(c.axes)  # a different block layout: gathered whole, cut again
        else:
            grow *= mesh.group_size(tuple(a for a in c.axes if a not in t.axes))
    if grow > 1:
        cost += local * grow
    return cost


class Resharder:
    def __init__(self, b: Emitter, mesh: Mesh):
        self.b, self.mesh = b, mesh
        self.ledger: list[CollectiveRecord] = []
        self._ranks: dict[tuple, Node] = {}
        self.why: tuple[str, str | None, str] = ("", None, "")  # (tensor, source, reason)

    # ---- device-dependent index arithmetic -----------------------------------------------
    def group_rank(self, axes: tuple[str, ...]) -> Node:
        """This device's index within its group over `axes` (XLA's partition-id arithmetic)."""
        if axes not in self._ranks:
            b = self.b
            r = None
            for a in axes:
                i = b.add(Op.AXIS_INDEX, [], axis=a)
                r = i if r is None else b.binary(Op.ADD, b.binary(Op.MUL, r, b.const(self.mesh.axes[a], DType.i32)), i)
            self._ranks[axes] = r if r is not None else b.const(0, DType.i32)
        return self._ranks[axes]

    def global_index(self, size: int, d: DimSharding) -> Node:
        """i32 vector: the global position of each local position of a dim (past `size`: padding)."""
        b = self.b
        n = self.mesh.group_size(d.axes)
        loc = local_dim(size, d, self.mesh)
        if d.parts:
            return self._compound_index(size, d)
        r = self.group_rank(d.axes)
        if d.outer > 1:
            inner = size // d.outer
            per = inner // n
            p = np.arange(loc)
            base = b.const((p // per) * inner + p % per, DType.i32)
            return b.binary(Op.ADD, base, b.binary(Op.MUL, r, b.const(per, DType.i32)))
        iota = b.iota((loc,), 0, DType.i32)
        return b.binary(Op.ADD, iota, b.binary(Op.MUL, r, b.const(loc, DType.i32)))

    def _compound_index(self, size: int, d: DimSharding) -> Node:
        """global_index of a compound layout: each part's global index, in the global strides;
        a padding position (some part past its size) reads `size`."""
        b, mesh = self.b, self.mesh
        locs = [-(-s // mesh.group_size(a)) for s, a in d.parts]
        loc = int(np.prod(locs))
        p = np.arange(loc)
        base = np.zeros(loc, dtype=np.int64)
        gstride, lstride = size, loc
        terms, checks = [], []
        for (s, a), ls in zip(d.parts, locs):
            gstride //= s
            lstride //= ls
            li = (p // lstride) % ls
            base += li * gstride
            if a:
                r = self.group_rank(a)
                terms.append(b.binary(Op.MUL, r, b.const(ls * gstride, DType.i32)))
                if s % mesh.group_size(a):
                    gi = b.binary(Op.ADD, b.const(li.astype(np.int32), DType.i32),
                                  b.binary(Op.MUL, r, b.const(ls, DType.i32)))
                    checks.append(b.binary(Op.LT, gi, s))
        g = b.const(base.astype(np.int32), DType.i32)
        for t in terms:
            g = b.binary(Op.ADD, g, t)
        if checks:
            ok = checks[0]
            for c in checks[1:]:
                ok = b.binary(Op.AND, ok, c)
            g = b.select(ok, g, b.const(np.full(loc, size, np.int32), DType.i32))
        return g

    def mask(self, x: Node, dim: int, size: int, d: DimSharding, fill) -> Node:
        """Replace the padding of a split dim by `fill` (the identity of what reduces over it)."""
        if not padded(size, d, self.mesh):
            return x
        b = self.b
        valid = b.binary(Op.LT, self.global_index(size, d), size)
        valid = b.add(Op.BROADCAST, [valid], shape=x.shape, dims=[dim])
        return b.add(Op.SELECT, [valid, x, b.const(fill, x.dtype, x.shape)])

    # ---- collectives --------------------------------------------------------------------
    def collective(self, kind: Op, x: Node, axes: tuple[str, ...], **attrs) -> Node:
        out = self.b.add(kind, [x], axes=tuple(axes), **attrs)
        nbytes = out.nbytes if kind is Op.ALL_GATHER else x.nbytes
        n = self.mesh.group_size(axes)
        tensor, source, reason = self.why
        self.ledger.append(CollectiveRecord(kind.value, tuple(axes), nbytes, wire_bytes(kind.value, nbytes, n),
                                            tensor, source, reason, out))
        return out

    def _split_dim(self, x: Node, d: int, outer: int) -> Node:
        shape = list(x.shape)
        shape[d:d + 1] = [outer, shape[d] // outer]
        return self.b.reshape(x, shape)

    def _merge_dim(self, x: Node, d: int) -> Node:
        shape = list(x.shape)
        shape[d:d + 2] = [shape[d] * shape[d + 1]]
        return self.b.reshape(x, shape)

    # ---- the three steps ------------------------------------------------------------------
    def reshard(self, x: Node, shape: tuple[int, ...], src: Sharding, dst: Sharding) -> Node:
        if src == dst:
            return x
        cur = src
        if cur.partial:
            x, cur = self._resolve_partial(x, shape, cur, dst)
        for d in range(len(shape)):
            common = partwise(cur.dims[d], dst.dims[d], shape[d], self.mesh)
            if common is not None:
                x, cur = self._partwise(x, d, common, cur, dst)
        for d in range(len(shape)):
            x, cur = self._drop_axes(x, shape, cur, dst, d)
        for d in range(len(shape)):
            x, cur = self._add_axes(x, shape, cur, dst, d)
        assert cur == dst.without_partial() and not dst.partial, (cur, dst)
        return x

    def _resolve_partial(self, x, shape, cur: Sharding, dst: Sharding):
        pending = [a for a in self.mesh.axis_names if a in cur.partial]
        dims = list(cur.dims)
        if cur.partial_op == "sum":
            for d, (c, t) in enumerate(zip(cur.dims, dst.dims)):
                found = scatter_part(c, t, shape[d], pending, self.mesh)
                if found is not None:  # into one factor of a compound dim
                    common, i, take = found
                    x = self._view_parts(x, d, [(s, ca) for s, ca, _ in common])
                    x = self.collective(Op.REDUCE_SCATTER, x, take, dim=d + i)
                    parts = [(s, ca + take if j == i else ca) for j, (s, ca, _) in enumerate(common)]
                    x = self._merge_parts(x, d, len(parts))
                    dims[d] = DimSharding.compound(parts, self.mesh)
                    pending = [a for a in pending if a not in take]
                    break
                if c.strided or t.strided or t.axes[:len(c.axes)] != c.axes:
                    continue
                take = []
                for a in t.axes[len(c.axes):]:
                    if a not in pending:
                        break
                    take.append(a)
                if not take:
                    continue
                new = DimSharding(c.axes + tuple(take))
                n = self.mesh.group_size(take)
                if x.shape[d] != n * local_dim(shape[d], new, self.mesh):
                    continue  # uneven: all-reduce, then cut locally
                x = self.collective(Op.REDUCE_SCATTER, x, tuple(take), dim=d)
                dims[d] = new
                pending = [a for a in pending if a not in take]
                break
        if pending:
            x = self.collective(Op.ALL_REDUCE, x, tuple(pending), reduce=cur.partial_op)
        return x, Sharding(tuple(dims))

    def _drop_axes(self, x, shape, cur: Sharding, dst: Sharding, d: int):
        c, t = cur.dims[d], dst.dims[d]
        if c == t:
            return x, cur
        k = 0
        if c.outer == t.outer or not t.axes:
            while k < min(len(c.axes), len(t.axes)) and c.axes[k] == t.axes[k]:
                k += 1
        if (c.outer != t.outer or c.parts or t.parts) and t.axes:
            k = 0  # another block layout: gathered whole, cut again
        extra = c.axes[k:]
        if not extra:
            return x, cur
        # a split that moves whole to another dim: all-to-all instead of gather + slice
        for e, (ce, te) in enumerate(zip(cur.dims, dst.dims)):
            if (e != d and k == 0 and not c.strided and not ce.strided and not te.strided
                    and te.axes == ce.axes + extra):
                n = self.mesh.group_size(extra)
                new_e = DimSharding(te.axes)
                if (shape[d] % (n * self.mesh.group_size(c.axes[:k])) == 0
                        and x.shape[e] == n * local_dim(shape[e], new_e, self.mesh)):
                    x = self.collective(Op.ALL_TO_ALL, x, extra, split_dim=e, concat_dim=d)
                    dims = list(cur.dims)
                    dims[d], dims[e] = DimSharding(c.axes[:k]), new_e
                    return x, Sharding(tuple(dims))
        keep = c.axes[:k]
        if c.parts:
            return self._gather_compound(x, d, shape[d], cur)
        if c.outer > 1:
            x = self._split_dim(x, d, c.outer)
            x = self.collective(Op.ALL_GATHER, x, extra, dim=d + 1)
            x = self._merge_dim(x, d)
            new = DimSharding(keep, c.outer if keep else 1)
        else:
            n = self.mesh.group_size(extra)
            if keep and n * x.shape[d] != local_dim(shape[d], DimSharding(keep), self.mesh):
                keep, extra = (), c.axes  # padded layouts do not nest: gather the dim whole
            x = self.collective(Op.ALL_GATHER, x, extra, dim=d)
            new = DimSharding(keep)
            if not keep and x.shape[d] > shape[d]:
                x = self.b.slice(x, d, 0, shape[d])
        dims = list(cur.dims)
        dims[d] = new
        return x, Sharding(tuple(dims))

    def _view_parts(self, x: Node, d: int, parts) -> Node:
        shape = list(x.shape)
        shape[d:d + 1] = [-(-s // self.mesh.group_size(a)) for s, a in parts]
        return self.b.reshape(x, shape)

    def _merge_parts(self, x: Node, d: int, k: int) -> Node:
        shape = list(x.shape)
        shape[d:d + k] = [math.prod(shape[d:d + k])]
        return self.b.reshape(x, shape)

    def _partwise(self, x: Node, d: int, common, cur: Sharding, dst: Sharding):
        """A compound dim to another layout factor by factor: gather the axes a factor drops,
        cut locally the ones it gains; the other factors stay as they are."""
        b = self.b
        x = self._view_parts(x, d, [(s, ca) for s, ca, _ in common])
        for i, (s, ca, ta) in enumerate(common):
            if ca[:len(ta)] == ta and len(ca) > len(ta):
                x = self.collective(Op.ALL_GATHER, x, ca[len(ta):], dim=d + i)
        for i, (s, ca, ta) in enumerate(common):
            if ta[:len(ca)] == ca and len(ta) > len(ca):
                new = ta[len(ca):]
                per = s // self.mesh.group_size(ta)
                idx = b.binary(Op.ADD, b.iota((per,), 0, DType.i32),
                               b.binary(Op.MUL, self.group_rank(new), b.const(per, DType.i32)))
                x = b.add(Op.GATHER, [x, idx], axis=d + i)
        x = self._merge_parts(x, d, len(common))
        dims = list(cur.dims)
        dims[d] = dst.dims[d]
        return x, Sharding(tuple(dims))

    def _gather_compound(self, x, d: int, size: int, cur: Sharding):
        """All of a compound dim: view it as its parts, gather each split part over its axes,
        cut the padding of each, merge back."""
        parts = cur.dims[d].parts
        locs = [-(-s // self.mesh.group_size(a)) for s, a in parts]
        shape = list(x.shape)
        shape[d:d + 1] = locs
        x = self.b.reshape(x, shape)
        for i, (s, a) in enumerate(parts):
            if a:
                x = self.collective(Op.ALL_GATHER, x, a, dim=d + i)
                if x.shape[d + i] > s:
                    x = self.b.slice(x, d + i, 0, s)
        shape = list(x.shape)
        shape[d:d + len(parts)] = [size]
        x = self.b.reshape(x, shape)
        dims = list(cur.dims)
        dims[d] = DimSharding()
        return x, Sharding(tuple(dims))

    def _add_axes(self, x, shape, cur: Sharding, dst: Sharding, d: int):
        c, t = cur.dims[d], dst.dims[d]
        if c == t:
            return x, cur
        b = self.b
        size = shape[d]
        g = self.global_index(size, t)
        if not c.axes:
            local = b.binary(Op.MIN, g, size - 1)  # padding repeats the last element: finite data
        else:
            n_new = self.mesh.group_size(t.axes[len(c.axes):])
            if (c.outer != t.outer or c.parts or t.parts
                    or n_new * local_dim(size, t, self.mesh) != x.shape[d]):
                x, cur = self._drop_axes(x, shape, cur, replace(cur, dims=cur.dims[:d] + (DimSharding(),) + cur.dims[d + 1:]), d)
                return self._add_axes(x, shape, cur, dst, d)
            # position of each wanted global index inside the block this device holds now
            if c.outer > 1:
                inner = size // c.outer
                per = inner // self.mesh.group_size(c.axes)
                r0 = b.binary(Op.MUL, self.group_rank(c.axes), b.const(per, DType.i32))
                blk = b.floor_div(g, inner)
                within = b.binary(Op.SUB, b.binary(Op.SUB, g, b.binary(Op.MUL, blk, b.const(inner, DType.i32))), r0)
                local = b.binary(Op.ADD, b.binary(Op.MUL, blk, b.const(per, DType.i32)), within)
            else:
                off = b.binary(Op.MUL, self.group_rank(c.axes), b.const(x.shape[d], DType.i32))
                local = b.binary(Op.SUB, g, off)
            local = b.binary(Op.MIN, local, x.shape[d] - 1)
        x = b.add(Op.GATHER, [x, local], axis=d)
        dims = list(cur.dims)
        dims[d] = t
        return x, Sharding(tuple(dims))
