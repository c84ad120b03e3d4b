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


def plan_seeds(g: Graph, mesh: Mesh, plan: str, seeds: dict[Node, TensorSharding]
               ) -> tuple[dict[Node, TensorSharding], dict[int, Sharding]]:
    """Seeds for the inputs the user's `seeds` leave open, and output shardings for updated state."""
    if plan not in PLANS:
        raise ShardingError(f"unknown plan {plan!r} (plans: {', '.join(PLANS)})")
    axes = data_axes(g, mesh, seeds)
    if not axes:  # every axis holds model state: nothing is left for data parallelism
        return {}, {}
    named = repr(axes[0]) if len(axes) == 1 else repr(axes)
    out: dict[Node, TensorSharding] = {}
    outputs: dict[int, Sharding] = {}
    state_by_key: dict[str, Sharding] = {}
    for p in g.inputs:
        if p in seeds or not p.rank:
            continue
        if not is_state(g, p):
            dims = (DimSharding(axes),) + (DimSharding(),) * (p.rank - 1)
            out[p] = TensorSharding(Sharding(dims), PLAN, True, f"plan {plan!r}: batch over {named}")
        elif plan == "fsdp":
            s = _split_first_dim(p.shape, axes, mesh)
            out[p] = TensorSharding(s, WEAK, True, f"plan 'fsdp': state split over {named}, gathered for use")
            state_by_key.setdefault(leaf_key(p.name) + str(p.shape), s)
    if plan == "fsdp":  # updated state leaves come out split like the state that went in
        for i, (o, name) in enumerate(zip(g.outputs, g.output_names)):
            s = state_by_key.get(leaf_key(name) + str(o.shape))
            if s is not None and "[" in name:
                outputs[i] = s
                if o not in seeds and o not in out:
                    out[o] = TensorSharding(s, WEAK, True, f"plan 'fsdp': updated state split over {named}")
    return out, outputs


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
