"""Between tensor shardings and factor shardings: project a tensor's dims onto an op's factors,
merge what every tensor of the op says about each factor, and project back."""
from __future__ import annotations

import math

from .mesh import DimSharding, Mesh, Sharding
from .rules import FactorRule



class FactorAxes(dict):
    """factor → mesh axes; `outer[f]` > 1 splits only the inner part of a factor viewed as
    [outer, size/outer] (a fused dim, such as QKV, that must keep whole blocks per device)."""

    def __init__(self, *args, outer: dict[int, int] | None = None):
        super().__init__(*args)
        self.outer = dict(outer or {})
        self.priority: dict[int, int] = {}  # factor → priority of the tensor it came from

    def restrict(self, keep) -> "FactorAxes":
        return FactorAxes({f: a for f, a in self.items() if f in keep},
                          outer={f: o for f, o in self.outer.items() if f in keep})


def project(s: Sharding, dims: list[list[int]], rule: FactorRule, mesh: Mesh) -> FactorAxes:
    """What a tensor's sharding says about each of its factors (factors it cannot express: nothing)."""
    out = FactorAxes()
    for d, fs in zip(s.dims, dims):
        if not d.axes:
            continue
        real = [f for f in fs if rule.sizes[f] > 1]
        if d.outer > 1 and len(real) == 1:
            n = math.prod(mesh.axes[a] for a in d.axes)
            if rule.sizes[real[0]] % (d.outer * n) == 0:
                out[real[0]] = d.axes
                out.outer[real[0]] = d.outer
            continue
        if d.outer > 1:
            lead, prod = 0, 1
            while lead < len(real) and prod < d.outer:
                prod *= rule.sizes[real[lead]]
                lead += 1
            if prod != d.outer or lead == len(real):
                continue
            real = real[lead:]
        axes = list(d.axes)
        k = 0
        while axes and k < len(real):
            f = real[k]
            rem = rule.sizes[f] // math.prod(mesh.axes[a] for a in out.get(f, ()))
            n = mesh.axes[axes[0]]
            if rem % n == 0 or (len(real) == 1 and d.outer == 1 and rem > 1):
                out[f] = out.get(f, ()) + (axes.pop(0),)
                if rem % n:
                    break  # an uneven (padded) split ends the dim
            elif rem == 1 and k + 1 < len(real):
                k += 1
            else:
                break
    return out


def unproject(fa: FactorAxes, dims: list[list[int]], rule: FactorRule, mesh: Mesh) -> tuple[DimSharding, ...]:
    """A tensor's dims from its factors' axes: leading whole factors become a stride (`outer`),
    then axes of factors in order while each earlier one is split completely."""
    out = []
    for fs in dims:
        real = [f for f in fs if rule.sizes[f] > 1]
        if len(real) == 1 and fa.outer.get(real[0], 1) > 1 and fa.get(real[0]):
            out.append(DimSharding(fa[real[0]], fa.outer[real[0]]))
            continue
        outer, k = 1, 0
        while k < len(real) and not fa.get(real[k]):
            outer *= rule.sizes[real[k]]
            k += 1
        axes: list[str] = []
        while k < len(real) and fa.get(real[k]) and fa.outer.get(real[k], 1) == 1:
            f = real[k]
            n = math.prod(mesh.axes[a] for a in fa[f])
            if rule.sizes[f] % n and (len(real) > 1):
                break  # a padded split is only kept where the factor is the whole dim
            axes += fa[f]
            k += 1
            if n != rule.sizes[f]:
                break
        if not axes:
            outer = 1
        elif outer > 1 and (math.prod(rule.sizes[f] for f in real) // outer) % math.prod(mesh.axes[a] for a in axes):
            axes, outer = [], 1
        out.append(DimSharding(tuple(axes), outer))
    return tuple(out)


def merge(candidates: list[tuple[tuple, FactorAxes]], rule: FactorRule, mesh: Mesh) -> FactorAxes:
    """One axes tuple per factor from every tensor's projection. Candidates are tried best
    first (their sort key: priority, then larger tensors, which are dearer to reshard); a
    longer candidate that extends the chosen one wins; an axis serves one factor only."""
    chosen: dict[int, tuple[str, ...]] = {}
    outer: dict[int, int] = {}
    rank: dict[int, tuple] = {}
    for key, fa in sorted(candidates, key=lambda c: c[0]):
        for f, axes in fa.items():
            if f in rule.replicated:
                continue
            cur = chosen.get(f)
            o = fa.outer.get(f, 1)
            if cur is None or (len(axes) > len(cur) and axes[:len(cur)] == cur and rank[f][0] == key[0]
                               and outer[f] == o):
                chosen[f] = axes
                outer[f] = o
                rank.setdefault(f, key)
    used: set[str] = set()
    out = FactorAxes()
    for f in sorted(chosen, key=lambda f: rank[f]):
        axes = []
        for a in chosen[f]:
            if a in used:
                break
            axes.append(a)
        if outer[f] > 1 and rule.sizes[f] % (outer[f] * math.prod(mesh.axes[a] for a in axes)):
            continue  # a fused dim's blocks must split evenly
        if axes:
            out[f] = tuple(axes)
            out.priority[f] = rank[f][0]
            used.update(axes)
            if outer[f] > 1:
                out.outer[f] = outer[f]
    # a padded or strided split is only sound where the factor is a whole dim of every tensor
    for f, axes in list(out.items()):
        if rule.sizes[f] % math.prod(mesh.axes[a] for a in axes) or out.outer.get(f, 1) > 1:
            for t in rule.tensors():
                for fs in t:
                    if f in fs and len([g for g in fs if rule.sizes[g] > 1]) > 1:
                        out.pop(f, None)
                        out.outer.pop(f, None)
    return representable(out, rule, mesh)


def representable(fa: FactorAxes, rule: FactorRule, mesh: Mesh) -> FactorAxes:
    """Drop factor splits some tensor of the op cannot hold (a minor factor split under a major
    one that is only partly split): every tensor must see exactly the op's factor sharding."""
    while True:
        drop = set()
        for dims in rule.tensors():
            back = project(Sharding(unproject(fa, dims, rule, mesh)), dims, rule, mesh)
            for fs in dims:
                drop |= {f for f in fs if f in fa and (back.get(f) != fa[f] or back.outer.get(f, 1) != fa.outer.get(f, 1))}
        if not drop:
            return fa
        keep = set(fa) - drop
        restricted = fa.restrict(keep)
        restricted.priority = {f: p for f, p in fa.priority.items() if f in keep}
        fa = restricted
