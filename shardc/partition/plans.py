"""Plans that fill in specs: "dp" splits the batch over the data axis; "fsdp" (ZeRO-3) also
splits parameters and optimizer state, gathered before use, gradients reduce-scattered. State
is what a model owns (torch parameters and buffers) or a pytree leaf of an argument
("params['w']", "opt_state['m']['w']"); batch inputs are plain array arguments."""
from __future__ import annotations

from ..errors import ShardingError
from ..ir import Graph, Node, Op
from ..ir.graph import is_state
from .mesh import DimSharding, Mesh, Sharding
from .propagate import PLAN, WEAK, TensorSharding
from .specs import leaf_key

PLANS = ("dp", "fsdp")


def data_axes(g: Graph, mesh: Mesh, seeds: dict[Node, TensorSharding]) -> tuple[str, ...]:
    """The axes a plan splits the batch (and, for fsdp, the state) over: every mesh axis that no
    spec on model state uses, in mesh order (as DTensor and MaxText put data parallelism on the
    axes that tensor parallelism leaves). dp×tp with Megatron weight specs → ("dp",); a plain
    dp×tp mesh → ("dp", "tp"), data parallel over all devices rather than tp idle."""
    model = {a for p, st in seeds.items() if p.op is Op.PARAMETER and is_state(g, p) and st.sharding
             for d in st.sharding.dims for a in d.axes}
    return tuple(a for a in mesh.axis_names if a not in model)


def _split_first_dim(shape, axes: tuple[str, ...], mesh: Mesh) -> Sharding:
    n = mesh.group_size(axes)
    dims = [DimSharding()] * len(shape)
    even = [d for d, s in enumerate(shape) if s % n == 0 and s >= n]
    d = even[0] if even else max(range(len(shape)), key=lambda d: shape[d])
    dims[d] = DimSharding(axes)
    return Sharding(tuple(dims))


def _also_split(s: Sharding, shape, axes: tuple[str, ...], mesh: Mesh) -> Sharding | None:
    """FSDP × tp: a state tensor a spec splits over tp is also split over the data axes, on the
    largest dim the spec leaves whole that they divide (None when no dim can take them)."""
    n = mesh.group_size(axes)
    free = [d for d, ds in enumerate(s.dims) if not ds.axes and shape[d] % n == 0 and shape[d] >= n]
    if not free or set(axes) & set(s.used_axes):
        return None
    d = max(free, key=lambda d: (shape[d], -d))
    return Sharding(s.dims[:d] + (DimSharding(axes),) + s.dims[d + 1:], s.partial, s.partial_op)


def _same_or_extended(spec: Sharding | None, s: Sharding, shape, axes, mesh: Mesh) -> bool:
    return spec is None or _also_split(spec, shape, axes, mesh) == s


def plan_seeds(g: Graph, mesh: Mesh, plan: str, seeds: dict[Node, TensorSharding],
               out_specs: dict[int, Sharding] | None = None
               ) -> tuple[dict[Node, TensorSharding], dict[int, Sharding], dict[Node, Sharding]]:
    """Seeds for the inputs the user's `seeds` leave open, output shardings for updated state,
    and (fsdp × tp) how state that specs split over other axes is stored: also split over the
    data axes. Those specs still say how the state is used (propagation sees them as given);
    the stored split is gathered before use, as every fsdp state is."""
    if plan not in PLANS:
        raise ShardingError(f"unknown plan {plan!r} (plans: {', '.join(PLANS)})")
    axes = data_axes(g, mesh, seeds)
    if not axes:  # every axis holds model state: nothing is left for data parallelism
        return {}, {}, {}
    named = repr(axes[0]) if len(axes) == 1 else repr(axes)
    # sequence parallel: batch inputs split over a model axis too (tp); state that no spec splits
    # then gets its gradient summed over that axis as well as the data axes (each device saw
    # other tokens), so ZeRO-3 stores it over both: the reduce-scatter of its gradient and the
    # gather for use move the same bytes as over the data axes alone, and no all-reduce is left
    seq = tuple(a for a in mesh.axis_names if a not in axes and any(
        not is_state(g, p) and a in st.sharding.used_axes for p, st in seeds.items() if p.op is Op.PARAMETER))
    out: dict[Node, TensorSharding] = {}
    outputs: dict[int, Sharding] = {}
    state_by_key: dict[str, Sharding] = {}
    stored: dict[Node, Sharding] = {}
    out_specs = out_specs or {}
    for p in g.inputs:
        if plan == "fsdp" and p in seeds and p.rank and is_state(g, p):
            s = _also_split(seeds[p].sharding, p.shape, axes, mesh)
            if s is not None:
                stored[p] = s
                state_by_key.setdefault(leaf_key(p.name) + str(p.shape), s)
            continue
        if p in seeds or not p.rank:
            continue
        if not is_state(g, p):
            dims = (DimSharding(axes),) + (DimSharding(),) * (p.rank - 1)
            out[p] = TensorSharding(Sharding(dims), PLAN, True, f"plan {plan!r}: batch over {named}")
        elif plan == "fsdp":
            s = _split_first_dim(p.shape, axes + seq, mesh)
            over = named + (f" and {seq!r} (sequence parallel: its gradient is summed there too)" if seq else "")
            out[p] = TensorSharding(s, WEAK, True, f"plan 'fsdp': state split over {over}, gathered for use")
            state_by_key.setdefault(leaf_key(p.name) + str(p.shape), s)
    if plan == "fsdp":  # updated state leaves come out split like the state that went in
        for i, (o, name) in enumerate(zip(g.outputs, g.output_names)):
            s = state_by_key.get(leaf_key(name) + str(o.shape))
            if s is not None and "[" in name:
                # where a spec names it, the plan's extension of that spec (fsdp × tp)
                if not _same_or_extended(out_specs.get(i), s, o.shape, axes, mesh):
                    continue
                outputs[i] = s
                st = seeds.get(o)
                if o not in out and (st is None or _same_or_extended(st.sharding, s, o.shape, axes, mesh)):
                    out[o] = TensorSharding(s, WEAK, True, f"plan 'fsdp': updated state split over {named}")
    return out, outputs, stored


def idle_axes(prog) -> list[str]:
    """Mesh axes (of size > 1) that no value of the program is split or reduced over: every
    device along them computes the same thing."""
    used = {a for s in prog.shardings.values() for d in s.dims for a in d.axes}
    used |= {a for s in prog.shardings.values() for a in s.partial}
    return [a for a in prog.mesh.axis_names if a not in used and prog.mesh.axes[a] > 1]


def sequence_parallel_specs(g: Graph, axis: str = "tp", priority: int = 1, batch_axes: tuple[str, ...] = ()) -> dict:
    """Sequence parallelism: split dim 1 (the sequence) of every batch input over `axis` (and dim 0,
    the batch, over `batch_axes`, e.g. dp of a dp×tp mesh), at a priority below tensor-parallel
    weights, so activations outside TP regions stay split by sequence (all-gather in,
    reduce-scatter out) while weights keep their split."""
    from .mesh import P
    batch = tuple(batch_axes) or None
    return {p.name: P(batch, axis, priority=priority) for p in g.free_inputs
            if not is_state(g, p) and p.rank >= 2}
