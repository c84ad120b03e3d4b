"""Plans that fill in specs: "dp" splits the batch over the data axis; "fsdp" (ZeRO-3) also
splits parameters and optimizer state, gathered before use, gradients reduce-scattered. State
is what a model owns (torch parameters and buffers) or a pytree leaf of an argument
("params['w']", "opt_state['m']['w']"); batch inputs are plain array arguments."""
from __future__ import annotations

from ..errors import ShardingError
from ..ir import Graph, Node
from .mesh import DimSharding, Mesh, Sharding
from .propagate import PLAN, WEAK, TensorSharding
from .specs import leaf_key

PLANS = ("dp", "fsdp")


def data_axis(mesh: Mesh) -> str:
    for name in ("dp", "data", "fsdp", "batch"):
        if name in mesh.axes:
            return name
    return mesh.axis_names[0]


def is_state(g: Graph, p: Node) -> bool:
    """Model-owned tensors, or leaves of dict arguments ("params['w']"); list entries
    ("inputs[0]") and plain arguments are batch data."""
    return p.name in g.bound or "['" in p.name or '["' in p.name


def _split_first_dim(shape, axis: str, mesh: Mesh) -> Sharding:
    n = mesh.axes[axis]
    dims = [DimSharding()] * len(shape)
    even = [d for d, s in enumerate(shape) if s % n == 0 and s >= n]
    d = even[0] if even else max(range(len(shape)), key=lambda d: shape[d])
    dims[d] = DimSharding((axis,))
    return Sharding(tuple(dims))


def plan_seeds(g: Graph, mesh: Mesh, plan: str, taken: set[Node]) -> tuple[dict[Node, TensorSharding], dict[int, Sharding]]:
    if plan not in PLANS:
        raise ShardingError(f"unknown plan {plan!r} (plans: {', '.join(PLANS)})")
    axis = data_axis(mesh)
    seeds: dict[Node, TensorSharding] = {}
    outputs: dict[int, Sharding] = {}
    state_by_key: dict[str, Sharding] = {}
    for p in g.inputs:
        if p in taken or not p.rank:
            continue
        if not is_state(g, p):
            dims = (DimSharding((axis,)),) + (DimSharding(),) * (p.rank - 1)
            seeds[p] = TensorSharding(Sharding(dims), PLAN, True, f"plan {plan!r}: batch over {axis!r}")
        elif plan == "fsdp":
            s = _split_first_dim(p.shape, axis, mesh)
            seeds[p] = TensorSharding(s, WEAK, True, f"plan 'fsdp': state split over {axis!r}, gathered for use")
            state_by_key.setdefault(leaf_key(p.name) + str(p.shape), s)
    if plan == "fsdp":  # updated state leaves come out split like the state that went in
        for i, (o, name) in enumerate(zip(g.outputs, g.output_names)):
            s = state_by_key.get(leaf_key(name) + str(o.shape))
            if s is not None and "[" in name:
                outputs[i] = s
                if o not in taken and o not in seeds:
                    seeds[o] = TensorSharding(s, WEAK, True, f"plan 'fsdp': updated state split over {axis!r}")
    return seeds, outputs


def sequence_parallel_specs(g: Graph, axis: str = "tp", priority: int = 1) -> dict:
    """Sequence parallelism: split dim 1 (the sequence) of every batch input over `axis`, at a
    priority below tensor-parallel weights, so activations outside TP regions stay split by
    sequence (all-gather in, reduce-scatter out) while weights keep their split."""
    from .mesh import P
    return {p.name: P(None, axis, priority=priority) for p in g.free_inputs
            if not is_state(g, p) and p.rank >= 2}
