"""Between tensor shardings and factor shardings: project a tensor's dims onto an op's factors,
merge what every tensor of the op says about each factor, and project back."""
from __future__ import annotations

import functools
import math

from .mesh import DimSharding, Mesh, Sharding, extends_dim, restrict_dim, split_part
from .rules import FactorRule



class FactorAxes(dict):
    """factor → mesh axes (major to minor); `layouts[f]` holds a factor's layout where it is
    not one plain split: a DimSharding over the factor's size with an `outer` stride (a fused
    dim, such as QKV, that must keep whole blocks per device) or compound parts (a factor that
    is itself a merge of dims split over different axes)."""

    def __init__(self, *args, layouts: dict[int, DimSharding] | None = None):
        super().__init__(*args)
        self.layouts = dict(layouts or {})
        self.priority: dict[int, int] = {}  # factor → priority of the tensor it came from

    def dim(self, f: int) -> DimSharding:
        """The factor's layout, as a DimSharding over the factor's size."""
        return self.layouts.get(f) or _plain(self.get(f, ()))

    def set(self, f: int, d: DimSharding) -> None:
        if not d.axes:
            return
        self[f] = d.axes
        if d.strided:
            self.layouts[f] = d

    def restrict(self, keep) -> "FactorAxes":
        return FactorAxes({f: a for f, a in self.items() if f in keep},
                          layouts={f: o for f, o in self.layouts.items() if f in keep})


_plain = functools.lru_cache(maxsize=1024)(DimSharding)   # one split over these axes (immutable)


def project(s: Sharding, dims: list[list[int]], rule: FactorRule, mesh: Mesh) -> FactorAxes:
    """What a tensor's sharding says about each of its factors (factors it cannot express: nothing).
    Each dim's layout (its (size, axes) parts) is cut at its factors' boundaries."""
    out = FactorAxes()
    for d, fs in zip(s.dims, dims):
        if not d.axes:
            continue
        parts = list(d.layout(math.prod(rule.sizes[f] for f in fs)))
        for f in fs:
            need, mine = rule.sizes[f], []
            while need > 1 and parts:
                size, axes = parts[0]
                if need % size == 0:
                    mine.append(parts.pop(0))
                    need //= size
                elif size % need == 0:
                    major, minor = split_part(size, axes, need, mesh)
                    mine.append(major)
                    need = 1
                    if minor is None:
                        parts = []  # the rest of this dim says nothing its factors can hold
                    else:
                        parts[0] = minor
                else:
                    parts = []
                    mine = []
            if need > 1:
                mine = []  # sizes do not line up: this factor learns nothing
            if mine:
                out.set(f, DimSharding.compound(mine, mesh))
    return out


def unproject(fa: FactorAxes, dims: list[list[int]], rule: FactorRule, mesh: Mesh) -> tuple[DimSharding, ...]:
    """A tensor's dims from its factors' layouts: each dim is its factors' parts, major first."""
    out = []
    for fs in dims:
        parts = []
        for f in fs:
            if rule.sizes[f] > 1:
                parts += fa.dim(f).layout(rule.sizes[f])
        out.append(DimSharding.compound(parts, mesh))
    return tuple(out)


def merge(candidates: list[tuple[tuple, FactorAxes]], rule: FactorRule, mesh: Mesh,
          extend: bool = True) -> FactorAxes:
    """One layout per factor from every tensor's projection. Candidates are tried best first
    (their sort key: priority, then larger tensors, which are dearer to reshard); a longer
    candidate that extends the chosen one wins (with `extend` off, the shorter one it extends:
    the axes the longer one adds stay free for other factors); an axis serves one factor only."""
    chosen: dict[int, DimSharding] = {}
    rank: dict[int, tuple] = {}
    for key, fa in sorted(candidates, key=lambda c: c[0]):
        for f in fa:
            if f in rule.replicated:
                continue
            cur, new = chosen.get(f), fa.dim(f)
            if cur is None or (rank[f][0] == key[0] and (
                    (extend and len(new.axes) > len(cur.axes) and extends_dim(cur, new, rule.sizes[f], mesh))
                    or (not extend and len(new.axes) < len(cur.axes) and extends_dim(new, cur, rule.sizes[f], mesh))
                    # the same split cut into whole heads (padded): the one that keeps the heads
                    or (new.axes == cur.axes and new.parts and not cur.strided))):
                chosen[f] = new
                rank.setdefault(f, key)
    used: set[str] = set()
    out = FactorAxes()
    for f in sorted(chosen, key=lambda f: rank[f]):
        d = restrict_dim(chosen[f], rule.sizes[f], set(chosen[f].axes) - used, mesh)
        if d.axes:
            out.set(f, d)
            out.priority[f] = rank[f][0]
            used.update(d.axes)
    # a factor with a strided layout of its own stays a whole dim of every tensor (merged into a
    # bigger dim, a strided split would spread over it: MoE routing's [k·tokens] stays whole)
    for f in list(out.layouts):
        if out.layouts[f].outer > 1 and any(f in fs and sum(rule.sizes[g] > 1 for g in fs) > 1
                                            for t in rule.tensors() for fs in t):
            out.pop(f, None)
            out.layouts.pop(f, None)
            out.priority.pop(f, None)
    return representable(out, rule, mesh)


def representable(fa: FactorAxes, rule: FactorRule, mesh: Mesh) -> FactorAxes:
    """Drop factor splits some tensor of the op cannot hold: every tensor must see exactly the
    op's factor sharding when its dims are written out and read back."""
    if not fa:
        return fa
    # the answer depends only on the factors' sizes and layouts and the tensors' dims: identical
    # layers ask it of the same op again and again
    tensors = tuple(tuple(tuple(fs) for fs in t) for t in rule.tensors())
    key = (tuple(rule.sizes), tensors, tuple(sorted((f, fa.dim(f)) for f in fa)), mesh)
    keep = _representable(key, fa, rule, mesh)
    if keep == set(fa):
        return fa
    restricted = fa.restrict(keep)
    restricted.priority = {f: p for f, p in fa.priority.items() if f in keep}
    return restricted


_KEPT: dict = {}


def _representable(key, fa: FactorAxes, rule: FactorRule, mesh: Mesh) -> frozenset:
    """The factors of `fa` that every tensor can hold (cached by `key`)."""
    if key in _KEPT:
        return _KEPT[key]
    while fa:
        drop = set()
        for dims in rule.tensors():
            back = project(Sharding(unproject(fa, dims, rule, mesh)), dims, rule, mesh)
            for fs in dims:
                drop |= {f for f in fs if f in fa and back.dim(f) != fa.dim(f)}
        if not drop:
            break
        fa = fa.restrict(set(fa) - drop)
    if len(_KEPT) > 1 << 14:
        _KEPT.clear()
    _KEPT[key] = frozenset(fa)
    return _KEPT[key]


def unkept(x, have: Sharding, user, mesh: Mesh) -> str:
    """Why `user` could not take x as it is: the dims whose split its factors cannot hold
    ("" when every split has a factor to go to)."""
    from .rules import rule_for
    rule = rule_for(user)
    out = []
    for i, y in enumerate(user.inputs):
        if y is not x:
            continue
        fa = project(have, rule.operands[i], rule, mesh)
        for d, (ds, fs) in enumerate(zip(have.dims, rule.operands[i])):
            kept = {a for f in fs for a in fa.get(f, ())}
            lost = [a for a in ds.axes if a not in kept]
            if lost:
                sizes = [rule.sizes[f] for f in fs if rule.sizes[f] > 1]
                out.append(f"dim {d} ({ds!r}) seen as factors {sizes}: no factor can hold {tuple(lost)}")
        break
    return f" ({'; '.join(out)})" if out else ""
