"""Sub-axes: one mesh axis seen as two, major and minor (Shardy's "tp":(1)2 and "tp":(2)2), for
GQA with fewer KV heads than tensor-parallel devices. 2 KV heads over tp=4 cannot be split;
as Megatron and vLLM do, each KV head stays whole and is replicated over the devices whose
query heads read it: "tp" becomes tp_0 (2, one per KV head) × tp_1 (2, the devices sharing one),
the KV weights are split over tp_0 only, and every other split over "tp" is over (tp_0, tp_1),
the same blocks on the same devices. Then repeat_kv's [kv, rep] heads are kv over tp_0 and rep
over tp_1, and attention needs no collective; in training, a KV weight's gradient is reduced
over tp_1 (with dp), as Megatron reduces the gradients of replicated KV heads.

The partitioner runs on the refined mesh (same devices in the same order): the program's mesh
names the sub-axes, and its collectives may run over one of them."""
from __future__ import annotations

from ..ir import Graph, Node, Op
from ..ir.graph import is_state
from .mesh import DimSharding, Mesh, Sharding
from .propagate import _blocks_downstream, _factors_downstream
from .specs import leaf_key


def _kv_heads(p: Node, d: int, n: int, users) -> int | None:
    """How many heads dim d of p holds when the program views it (after its fused blocks) as
    [heads, head_dim] with fewer heads than the n devices splitting it (n a multiple)."""
    k = _blocks_downstream(p, d, users)
    fac = _factors_downstream(p, d, users)
    if k != 1 or not fac or len(fac) < 2:
        return None
    heads = fac[0]
    return heads if 1 < heads < n and n % heads == 0 else None


def _names(mesh: Mesh, axis: str) -> tuple[str, str]:
    i = 0
    while f"{axis}_{i}" in mesh.axes or f"{axis}_{i + 1}" in mesh.axes:
        i += 2
    return f"{axis}_{i}", f"{axis}_{i + 1}"


def refine_for_kv_heads(g: Graph, mesh: Mesh, seeds: dict, outputs: dict[int, Sharding]):
    """(mesh, seeds, outputs, note): the mesh with one axis split into sub-axes where specs split
    fewer KV heads than its devices, and the seeds ({node: (sharding, origin, priority)}, from
    specs.resolve) and output shardings rewritten onto it; unchanged (note None) elsewhere."""
    users = g.users()
    kv: dict[tuple[str, str], tuple[int, str, int]] = {}  # (leaf key, shape) → (dim, axis, heads)
    for p, (s, _, _) in seeds.items():
        if p.op is not Op.PARAMETER or not is_state(g, p):
            continue  # (only model state: its block layout is shardc's choice, a batch's is not)
        for d, ds in enumerate(s.dims):
            if len(ds.axes) == 1 and not ds.strided:
                heads = _kv_heads(p, d, mesh.axes[ds.axes[0]], users)
                if heads is not None:
                    kv[(leaf_key(p.name), str(p.shape))] = (d, ds.axes[0], heads)
    if not kv:
        return mesh, seeds, outputs, None
    (_, axis, heads), *_ = kv.values()
    kv = {key: v for key, v in kv.items() if v[1:] == (axis, heads)}  # one refinement per program
    major, minor = _names(mesh, axis)
    sizes = {}
    for a, size in mesh.axes.items():
        sizes.update({major: heads, minor: size // heads} if a == axis else {a: size})
    refined = Mesh(sizes)

    def rewrite(s: Sharding, name: str, shape) -> Sharding:
        at = kv.get((leaf_key(name), str(shape)))
        dims = []
        for d, ds in enumerate(s.dims):
            if at is not None and d == at[0] and ds.axes == (axis,):
                dims.append(DimSharding((major,)))  # KV heads: whole, replicated over the minor sub-axis
            else:
                dims.append(DimSharding(_split(ds.axes, axis, major, minor)))
        return Sharding(tuple(dims), _split(s.partial, axis, major, minor), s.partial_op)

    names = {o: n for n, o in zip(g.output_names, g.outputs)}
    new_seeds = {n: (rewrite(s, names.get(n, n.name or ""), n.shape), origin, prio)
                 for n, (s, origin, prio) in seeds.items()}
    new_outputs = {i: rewrite(s, g.output_names[i], g.outputs[i].shape) for i, s in outputs.items()}
    n_kv = refined.axes[minor]
    note = (f"mesh axis {axis!r} ({mesh.axes[axis]}) seen as {major} ({heads}) × {minor} ({n_kv}): "
            f"{heads} KV heads over {mesh.axes[axis]} devices, each KV head replicated over the "
            f"{n_kv} devices of {minor} whose query heads read it ({len(kv)} KV tensors)")
    return refined, new_seeds, new_outputs, note


def _split(axes: tuple[str, ...], axis: str, major: str, minor: str) -> tuple[str, ...]:
    return tuple(x for a in axes for x in ((major, minor) if a == axis else (a,)))
