"""Strategies for automatic sharding (Alpa's intra-op space, over shardc's factor rules).

A node's strategy gives each factor of its rule a set of mesh axes (an axis serves one factor;
factors a rule keeps whole get none; a factor smaller than its axes is skipped, an uneven one is
padded). From the factor axes come the result's sharding and the sharding each operand must
arrive in. A split reduction factor leaves partial sums: the strategy pays an all-reduce, or a
reduce-scatter onto a result dim (how FSDP's weight gradients come out split).

Costs come from shardc.analysis: compute is the roofline of `analysis.analyze` on the local
shapes (dots at peak FLOP/s, other ops at HBM bandwidth), collectives the α-β model over the
interconnect levels the axes span. Resharding an edge compares dims by their axes only: how a
split dim is cut into blocks (the fused-QKV per-head layout, compound dims) is a block-layout
choice that `block_layouts` and propagation make consistent at no communication, so a fused
QKV weight split over tp costs what whole heads cost.

Nodes that must follow their operand (one non-constant input, an op that only moves or maps
elements) are merged into it: they take the sharding their operand's strategy gives them, and
their cost and memory are added to it. Constants, iotas and what is made from them alone are
free (each device makes its own block)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from ..analysis import collectives as coll
from ..analysis.analyze import op_flops
from ..ir import Graph, Node, Op
from ..ir.ops import ELEMENTWISE
from .factors import FactorAxes, project, representable, unproject
from .mesh import DimSharding, Mesh, Sharding, local_shape
from .rules import FactorRule, rule_for

FOLLOW_OPS = frozenset(ELEMENTWISE | {Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE, Op.PAD,
                                      Op.CONCATENATE, Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN})
FREE_OPS = frozenset({Op.CONSTANT, Op.IOTA, Op.AXIS_INDEX})
ZERO_COST = frozenset({Op.PARAMETER, Op.CONSTANT, Op.IOTA, Op.AXIS_INDEX, Op.BROADCAST, Op.RESHAPE})
MODEL_AXIS_NAMES = frozenset({"tp", "mp", "model", "tensor", "ep", "expert"})
DATA_AXIS_NAMES = frozenset({"dp", "data", "batch", "fsdp", "ddp", "replica"})


def axes_key(s: Sharding) -> tuple:
    """What communication sees of a sharding: the axes of each dim (block layouts aside)."""
    return tuple(d.axes for d in s.dims)


@dataclass
class Strategy:
    fa: FactorAxes
    out: Sharding                   # the result's sharding (partial sums resolved)
    operands: list[Sharding]        # the sharding each operand must arrive in
    seconds: float                  # compute + the strategy's own collectives
    memory: float                   # bytes held for it per device (state, saved activations)
    label: str
    followers: dict = field(default_factory=dict)   # follower node → its sharding


class Pricer:
    """Seconds of ops and collectives on `hw` over `mesh` (shardc.analysis's models)."""

    def __init__(self, hw, mesh: Mesh):
        self.hw, self.mesh = hw, mesh
        self.spans = hw.axis_levels(mesh)

    def collective(self, kind: str, nbytes: float, axes) -> float:
        if not axes or nbytes <= 0:
            return 0.0
        return coll.seconds(kind, nbytes, [s for a in axes for s in self.spans[a]])

    def compute(self, n: Node, shards: int, local_bytes: float, operand_bytes: float) -> float:
        """Roofline of n computed on 1/shards of its work (`analyze`'s pricing of the same op)."""
        if n.op in ZERO_COST:
            return 0.0
        fl = op_flops(n) / shards
        if n.op is Op.DOT_GENERAL:
            return max(fl / self.hw.flops_for(n.inputs[0].dtype), (local_bytes + operand_bytes) / self.hw.hbm_bw)
        return max(fl / self.hw.flops_for(n.dtype.compute), local_bytes / self.hw.hbm_bw)

    def reshard(self, t: Node, have: Sharding, want: Sharding) -> float:
        """Seconds to move t from `have` to `want`: an axis that leaves a dim for another is an
        all-to-all, one that leaves the tensor an all-gather; axes added are a local slice (a copy)."""
        if axes_key(have) == axes_key(want):
            return 0.0
        mesh, item = self.mesh, t.dtype.itemsize
        have_axes = {a for d in have.dims for a in d.axes}
        want_axes = {a for d in want.dims for a in d.axes}
        moved, gathered = [], []
        for h, w in zip(have.dims, want.dims):
            for a in h.axes:
                if a not in w.axes:
                    (moved if a in want_axes else gathered).append(a)
        local = t.size * item / mesh.group_size(tuple(have_axes))
        # a slice (axes added) still copies the block it keeps: one pass over HBM
        s = t.size * item / mesh.group_size(tuple(want_axes)) / self.hw.hbm_bw if want_axes - have_axes else 0.0
        if moved:
            s += self.collective("all_to_all", local, tuple(moved))
        if gathered:
            s += self.collective("all_gather", local * mesh.group_size(tuple(gathered)), tuple(gathered))
        return s


def trivial_nodes(g: Graph) -> set[Node]:
    """Constants, iotas and values made from them alone: every device makes its own block."""
    out: set[Node] = set()
    for n in g.nodes:
        if n.op in FREE_OPS or (n.op is not Op.PARAMETER and n.inputs and all(i in out for i in n.inputs)):
            out.add(n)
    return out


def saved_nodes(g: Graph, train: bool) -> set[Node]:
    """Forward values a training step's backward reads (memory.saved_activations' rule, as nodes):
    values the first output (the loss) depends on with a user it does not depend on."""
    if not train or not g.outputs:
        return set()
    forward, stack = set(), [g.outputs[0]]
    while stack:
        n = stack.pop()
        if n not in forward:
            forward.add(n)
            stack.extend(n.inputs)
    return {i for n in g.nodes if n not in forward for i in n.inputs
            if i in forward and i.op is not Op.PARAMETER}


def _assignments(rule: FactorRule, mesh: Mesh, allowed=None):
    """Every map factor → axes with each mesh axis on at most one factor (axes of one factor in
    mesh order); `allowed(f, axis)` may veto a pairing."""
    axes = [a for a in mesh.axis_names if mesh.axes[a] > 1]
    cands = [f for f, s in enumerate(rule.sizes) if s > 1 and f not in rule.replicated]
    options = []
    for a in axes:
        opts = [None] + [f for f in cands if rule.sizes[f] >= mesh.axes[a] and (allowed is None or allowed(f, a))]
        options.append(opts)
    for choice in itertools.product(*options):
        fa = FactorAxes()
        for a, f in zip(axes, choice):
            if f is not None:
                fa[f] = fa.get(f, ()) + (a,)
        yield fa


def enumerate_strategies(n: Node, mesh: Mesh, pricer: Pricer, allowed=None) -> list[Strategy]:
    """The strategies of one node (an input: the splits of its dims; an op: its rule's factors)."""
    rule = rule_for(n)
    seen, out = set(), []
    for fa in _assignments(rule, mesh, allowed):
        fa = representable(fa, rule, mesh) if fa else fa
        key = tuple(sorted((f, a) for f, a in fa.items()))
        if key in seen:
            continue
        seen.add(key)
        out.extend(_strategies_of(n, rule, fa, mesh, pricer))
    return out


def _strategies_of(n: Node, rule: FactorRule, fa: FactorAxes, mesh: Mesh, pricer: Pricer) -> list[Strategy]:
    dims = Sharding(unproject(fa, rule.result, rule, mesh))
    operands = [Sharding(unproject(fa, d, rule, mesh)) for d in rule.operands]
    used = tuple(a for axes in fa.values() for a in axes)
    shards = mesh.group_size(used)
    local = math.prod(local_shape(n.shape, dims, mesh)) * n.dtype.itemsize
    opb = sum(math.prod(local_shape(x.shape, s, mesh)) * x.dtype.itemsize for x, s in zip(n.inputs, operands))
    base = pricer.compute(n, shards, local, opb)
    partial = tuple(a for f, axes in fa.items() if f in rule.reduction for a in axes)
    label = ",".join(f"{_fname(n, rule, f)}:{'+'.join(a)}" for f, a in sorted(fa.items())) or "replicated"
    if not partial:
        return [Strategy(fa, dims, operands, base, 0.0, label)]
    out = [Strategy(fa, dims, operands, base + pricer.collective("all_reduce", local, partial), 0.0,
                    label + f" all_reduce({'+'.join(partial)})")]
    # reduce-scatter onto a result dim that is not split yet
    group = mesh.group_size(partial)
    for d, ds in enumerate(dims.dims):
        if not ds.axes and n.shape[d] >= group:
            nd = list(dims.dims)
            nd[d] = DimSharding(partial)
            cost = base + pricer.collective("reduce_scatter", local, partial)
            out.append(Strategy(fa, Sharding(tuple(nd)), operands, cost, 0.0,
                                label + f" reduce_scatter({'+'.join(partial)}→dim {d})"))
    return out


def _fname(n: Node, rule: FactorRule, f: int) -> str:
    for d, fs in enumerate(rule.result):
        if f in fs:
            return f"d{d}"
    return "k" if f in rule.reduction else f"f{f}"


def follow(n: Node, operand: int, have: Sharding, mesh: Mesh) -> Sharding:
    """The sharding a follower takes from its operand's: the operand's factors, read back out."""
    rule = rule_for(n)
    fa = project(have, rule.operands[operand], rule, mesh)
    fa = FactorAxes({f: a for f, a in fa.items() if f not in rule.replicated and f not in rule.reduction},
                    layouts={f: l for f, l in fa.layouts.items() if f not in rule.reduction})
    fa = representable(fa, rule, mesh)
    return Sharding(unproject(fa, rule.result, rule, mesh))


def follower_cost(n: Node, operands: list[Sharding | None], s: Sharding, mesh: Mesh, pricer: Pricer) -> float:
    """A follower's compute on its block, plus the all-reduce a reduction over a split dim needs."""
    shards = mesh.group_size(tuple(a for d in s.dims for a in d.axes))
    local = n.nbytes / max(shards, 1)
    sec = pricer.compute(n, shards, local, 0.0)
    if n.op in (Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN) and operands and operands[0] is not None:
        red = tuple(a for d in n.attrs["axes"] for a in operands[0].dims[d].axes)
        sec += pricer.collective("all_reduce", local, red)
    return sec
