"""JAX integration: `shardc.jax.jit(fn, mesh=..., in_specs=..., out_specs=...)` returns a function
that captures, partitions and compiles `fn` on its first call for each input signature, then runs
it as one jax.jit(shard_map) program over the mesh's devices."""
from __future__ import annotations

from .partition import Mesh, P


def _is_spec(x) -> bool:
    return x is None or isinstance(x, P)


def _specs_by_name(names: list[str], specs) -> dict:
    """A dict maps names or globs (a name's last pytree key counts: {"w": P("tp")} matches
    "params['w']"); anything else is a pytree (a tuple for the arguments, as shard_map's
    in_specs) with a P or None for each array, matched in order."""
    import jax
    if specs is None:
        return {}
    if isinstance(specs, dict):
        return {k: v for k, v in specs.items() if v is not None}
    leaves = jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)
    if len(leaves) != len(names):
        from .errors import ShardingError
        raise ShardingError(f"specs {specs!r} have {len(leaves)} entries for {len(names)} arrays ({', '.join(names)})")
    return {n: s for n, s in zip(names, leaves) if s is not None}


def jit(fn, *, mesh: Mesh, in_specs=None, out_specs=None, plan: str | None = None, target: str = "pallas"):
    """Like jax.jit over a mesh: compiles on first call per shapes/dtypes, returns jax arrays."""
    import jax

    compiled: dict = {}

    def call(*args):
        import shardc
        leaves, tree = jax.tree_util.tree_flatten(args)
        key = (tree, tuple((getattr(a, "shape", ()), str(getattr(a, "dtype", type(a)))) for a in leaves))
        if key not in compiled:
            g = shardc.from_jax(fn, *args)
            specs = {**_specs_by_name(g.input_names, in_specs), **_specs_by_name(g.output_names, out_specs)}
            compiled[key] = (g, shardc.compile(shardc.partition(g, mesh, specs, plan), target=target))
        g, exe = compiled[key]
        return jax.tree_util.tree_unflatten(g.output_tree, exe.run(*args, engine="jax"))

    call.compiled = compiled  # signature → (Graph, Executable), for inspection
    return call
