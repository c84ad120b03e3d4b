"""User specs → seeds for propagation. Keys are input, output or intermediate names, or fnmatch
globs; a key also matches a name's last pytree key ("*.fc1.weight" matches
"params['layers.0.fc1.weight']"). Exact names win over globs, then dict order. A folded graph
(ir/fold.py) also takes the names of what it holds once: a middle layer's, or a scan's stacked
array (the spec of its pieces after its layer dim)."""
from __future__ import annotations

import fnmatch
import re

from ..errors import ShardingError
from ..ir import Graph, Node
from .mesh import Mesh, P, Sharding, Strided, entry_axes

_LAST_KEY = re.compile(r"\[(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")\]$")


def leaf_key(name: str) -> str:
    """The innermost string key of a pytree path ("out[1]['fc.w']" → "fc.w"), else the name."""
    m = _LAST_KEY.search(name)
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else name


def as_spec(spec, key: str) -> P:
    if isinstance(spec, P):
        return spec
    if spec is None:
        return P()
    if isinstance(spec, (tuple, list)):
        return P(*spec)
    try:
        from jax.sharding import PartitionSpec  # accept JAX's own PartitionSpec too
        if isinstance(spec, PartitionSpec):
            return P(*spec)
    except ImportError:  # pragma: no cover - jax is a dependency
        pass
    raise ShardingError(f"spec {key!r}: {spec!r} is not a P(...) partition spec")


def to_sharding(spec: P, node: Node, mesh: Mesh, key: str) -> Sharding:
    what = f"spec {key!r} = {spec!r} for {node.describe()}"
    if len(spec) > node.rank:
        raise ShardingError(f"{what}: {len(spec)} entries for a tensor of rank {node.rank}")
    seen = set()
    for d, e in enumerate(spec):
        if isinstance(e, Strided):
            n, size = mesh.group_size(a for a in e.axes if a in mesh.axes), node.shape[d]
            if size % e.blocks or (size // e.blocks) % n:
                raise ShardingError(f"{what}: dim {d} of size {size} is not {e.blocks} blocks that each split "
                                    f"evenly over {n} devices (a strided split cannot pad)")
        for a in entry_axes(e):
            if a not in mesh.axes:
                raise ShardingError(f"{what}: axis {a!r} is not in {mesh} (axes: {', '.join(mesh.axis_names)})")
            if a in seen:
                raise ShardingError(f"{what}: axis {a!r} is used twice")
            seen.add(a)
    return Sharding.from_spec(spec, node.rank)


def named_targets(g: Graph) -> list[tuple[str, Node, str]]:
    """(name, node, role) for every input, output and named intermediate."""
    out = [(p.name, p, "input") for p in g.inputs]
    out += [(name, o, "output") for name, o in zip(g.output_names, g.outputs)]
    inputs = set(g.inputs)
    out += [(n.name, n, "value") for n in g.nodes if n.name and n not in inputs]
    return out


def resolve(g: Graph, mesh: Mesh, specs: dict | None) -> tuple[dict[Node, tuple[Sharding, str, int]], dict[int, Sharding]]:
    """Node seeds {node: (sharding, origin, priority)} and output shardings {output index: sharding}."""
    specs = dict(specs or {})
    targets = named_targets(g)
    seeds: dict[Node, tuple[Sharding, str, int]] = {}
    outputs: dict[int, Sharding] = {}
    assigned: set[tuple[str, str]] = set()

    def apply(key, spec, name, node, role):
        s = to_sharding(spec, node, mesh, key)
        origin = f"spec {key!r} = {spec!r}"
        if role == "output":
            outputs[g.output_names.index(name)] = s
            if node in seeds:
                return
        seeds.setdefault(node, (s, origin, spec.priority))

    aliases = getattr(g, "spec_names", {})   # a folded graph's names for what it holds once (ir/fold.py)
    by_name = {(name, role): node for name, node, role in targets}

    def apply_alias(key, spec, alias, glob=False):
        for name, drop in aliases[alias]:
            s = spec
            if drop:
                if len(spec) and spec[0] is not None:
                    raise ShardingError(f"spec {key!r} = {spec!r}: {alias!r} is stacked layers that the graph holds "
                                        "one per layer (shardc.fold), so its first dim cannot be split")
                s = P(*spec[1:], priority=spec.priority)
            for role in ("input", "output"):
                if (name, role) in by_name and not (glob and (name, role) in assigned):
                    node = by_name[(name, role)]
                    if (name, role) in assigned and node in seeds and seeds[node][0] != to_sharding(s, node, mesh, key):
                        raise ShardingError(f"spec {key!r} = {spec!r} for {alias!r} differs from the spec of "
                                            f"{name!r}, which stands for it in the folded graph (shardc.fold)")
                    apply(key, s, name, node, role)
                    assigned.add((name, role))

    globs = []
    for key, spec in specs.items():
        if not isinstance(key, str):
            raise ShardingError(f"spec key {key!r} must be a name or glob string")
        spec = as_spec(spec, key)
        exact = [(name, node, role) for name, node, role in targets if key in (name, leaf_key(name))]
        if not exact and key in aliases:
            apply_alias(key, spec, key)
        elif exact:
            for name, node, role in exact:
                apply(key, spec, name, node, role)
                assigned.add((name, role))
        elif any(c in key for c in "*?["):
            globs.append((key, spec))
        else:
            raise ShardingError(f"spec {key!r} matches no input, output or value of graph {g.name!r} "
                                f"(inputs: {', '.join(g.input_names[:8])}{', ...' if len(g.inputs) > 8 else ''})")
    for key, spec in globs:
        hit = False
        for name, node, role in targets:
            if fnmatch.fnmatchcase(name, key) or fnmatch.fnmatchcase(leaf_key(name), key):
                hit = True
                if (name, role) not in assigned:
                    apply(key, spec, name, node, role)
                    assigned.add((name, role))
        for alias in aliases:
            if fnmatch.fnmatchcase(alias, key) or fnmatch.fnmatchcase(leaf_key(alias), key):
                hit = True
                apply_alias(key, spec, alias, glob=True)
        if not hit:
            raise ShardingError(f"spec glob {key!r} matches no input, output or value of graph {g.name!r}")
    for name, spec in getattr(g, "sharding_constraints", {}).items():  # with_sharding_constraint
        node = g.node_by_name(name)
        spec = as_spec(spec, name)
        seeds[node] = (to_sharding(spec, node, mesh, name), f"with_sharding_constraint {spec!r}", spec.priority)
    return seeds, outputs
