"""JAX integration: `shardc.jax.jit(fn, mesh=..., in_specs=..., out_specs=...)` returns a function
that captures, partitions and compiles `fn` on its first call for each input signature, then runs
it as one jax.jit(shard_map) program over the mesh's devices.

It is differentiable: the function is a jax.custom_vjp whose forward rule runs the partitioned
forward program and whose backward rule runs a partitioned VJP program (`jax.vjp` of `fn`,
captured and compiled on the first backward; it recomputes the forward inside). Every input,
cotangent and gradient of the VJP program is pinned to the forward program's sharding of the same
array, so `jax.grad(loss_of(shardc.jax.jit(f, ...)))` runs forward and backward partitioned.
The rules run shardc's programs on concrete arrays: under jax.jit or jax.vmap of the wrapper
(tracers without values) it refuses in one line.

Specs: a dict maps names or globs; otherwise, as jax.jit's in_shardings, a pytree prefix of the
arguments (a tuple with an entry per argument) whose P or None applies to a whole subtree
(`(None, P("dp"))`: every array of the first argument replicated, the second split over dp).
"""
from __future__ import annotations

from .errors import Error, ShardingError
from .partition import Mesh, P


def _is_spec(x) -> bool:
    if x is None or isinstance(x, P):
        return True
    from jax.sharding import PartitionSpec
    return isinstance(x, PartitionSpec)


def _specs_by_name(names: list[str], specs, tree, what: str) -> dict:
    """A dict maps names or globs (a name's last pytree key counts: {"w": P("tp")} matches
    "params['w']"); anything else (a P, None, a tuple with an entry per argument) is a pytree
    prefix of `tree` (the arguments, or the outputs) whose P or None covers every array below it."""
    import jax
    if specs is None:
        return {}
    if isinstance(specs, dict):
        return {k: v for k, v in specs.items() if v is not None}
    if isinstance(specs, list) and isinstance(tree, tuple):  # as jax.jit: a list of per-argument specs
        specs = tuple(specs)
    spec_leaves, spec_tree = jax.tree_util.tree_flatten(specs, is_leaf=_is_spec)
    try:
        subtrees = spec_tree.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ShardingError(f"{what} {specs!r} is not a prefix of the structure "
                            f"{jax.tree_util.tree_structure(tree)}") from None
    per_leaf = []
    for s, sub in zip(spec_leaves, subtrees):
        per_leaf += [s] * len(jax.tree_util.tree_leaves(sub))
    if len(per_leaf) != len(names):
        raise ShardingError(f"{what} {specs!r} give {len(per_leaf)} entries for {len(names)} arrays ({', '.join(names)})")
    return {n: s for n, s in zip(names, per_leaf) if s is not None}


def _is_float(x) -> bool:
    import jax.numpy as jnp
    return jnp.issubdtype(getattr(x, "dtype", type(x)), jnp.inexact)


class _Signature:
    """One input signature: its forward program, made on the first call, and its VJP program,
    made on the first backward."""

    def __init__(self, owner, key):
        self.owner, self.key = owner, key
        self.vjp = None  # (Graph, Executable, float leaf positions)

    def forward(self, args):
        import jax
        o = self.owner
        _refuse_tracers(args)
        if self.key not in o.compiled:
            import shardc
            g = shardc.from_jax(o.fn, *args)
            outs = jax.tree_util.tree_unflatten(g.output_tree, list(g.output_names))
            specs = {**_specs_by_name(g.input_names, o.in_specs, args, "in_specs"),
                     **_specs_by_name(g.output_names, o.out_specs, outs, "out_specs")}
            o.compiled[self.key] = (g, shardc.compile(shardc.partition(g, o.mesh, specs, o.plan), target=o.target))
        g, exe = o.compiled[self.key]
        from .runtime import run
        return jax.tree_util.tree_unflatten(g.output_tree, run(exe, *args, engine="jax"))

    def backward(self, args, ct):
        import jax
        _refuse_tracers((args, ct))
        if self.vjp is None:
            self.vjp = self._compile_vjp(args, ct)
        g, exe, fl = self.vjp
        from .runtime import run
        grads = run(exe, args, ct, engine="jax")
        leaves, tree = jax.tree_util.tree_flatten(args)
        out = [None] * len(leaves)
        for i, gr in zip(fl, grads):
            out[i] = gr
        return jax.tree_util.tree_unflatten(tree, out)

    def _compile_vjp(self, args, ct):
        import jax

        import shardc
        from .pins import pin
        o = self.owner
        fwd_g, fwd_exe = o.compiled[self.key]
        bad = [n for n, x in zip(fwd_g.output_names, jax.tree_util.tree_leaves(ct)) if not _is_float(x)]
        if bad:
            raise Error(f"shardc.jax.jit: cannot differentiate {o.name} through its integer output {bad[0]!r}; "
                        "return it from a separate function")
        leaves, tree = jax.tree_util.tree_flatten(args)
        fl = [i for i, x in enumerate(leaves) if _is_float(x)]
        fn = o.fn

        def vjp(args, ct):
            flat = jax.tree_util.tree_leaves(args)

            def f(*floats):
                full = list(flat)
                for i, v in zip(fl, floats):
                    full[i] = v
                return fn(*jax.tree_util.tree_unflatten(tree, full))

            _, pull = jax.vjp(f, *[flat[i] for i in fl])
            return list(pull(ct))

        g = shardc.from_jax(vjp, args, ct, name=f"{fwd_g.name}_backward")
        fwd = fwd_exe.prog
        n = len(leaves)
        specs = {}
        for i, p in enumerate(g.inputs):
            s = fwd.input_shardings[i] if i < n else fwd.output_shardings[i - n]
            specs[p.name] = pin(s)
        for k, name in enumerate(g.output_names):
            specs[name] = pin(fwd.input_shardings[fl[k]])
        specs = {k: v for k, v in specs.items() if v is not None}
        return g, shardc.compile(shardc.partition(g, o.mesh, specs), target=o.target), fl


def _refuse_tracers(tree):
    import jax
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree)):
        raise Error("shardc.jax.jit functions run their compiled programs on concrete arrays: call them "
                    "outside jax.jit / jax.vmap (jax.grad, jax.vjp and jax.value_and_grad work)")


class _Jit:
    def __init__(self, fn, mesh, in_specs, out_specs, plan, target):
        self.fn, self.mesh, self.in_specs, self.out_specs, self.plan, self.target = \
            fn, mesh, in_specs, out_specs, plan, target
        self.name = getattr(fn, "__name__", "fn")
        self.compiled: dict = {}     # signature → (Graph, Executable) of the forward
        self.signatures: dict = {}   # signature → _Signature (its custom_vjp function and VJP program)

    def entry(self, key):
        import jax
        if key not in self.signatures:
            sig = _Signature(self, key)

            @jax.custom_vjp
            def call(args):
                return sig.forward(args)

            call.defvjp(lambda args: (sig.forward(args), args), lambda args, ct: (sig.backward(args, ct),))
            self.signatures[key] = (sig, call)
        return self.signatures[key][1]


def jit(fn, *, mesh: Mesh, in_specs=None, out_specs=None, plan: str | None = None, target: str = "pallas"):
    """Like jax.jit over a mesh: compiles on first call per shapes/dtypes, returns jax arrays;
    differentiable with jax.grad (the backward runs partitioned too)."""
    import jax

    j = _Jit(fn, mesh, in_specs, out_specs, plan, target)

    def call(*args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        key = (tree, tuple((getattr(a, "shape", ()), str(getattr(a, "dtype", type(a)))) for a in leaves))
        return j.entry(key)(args)

    call.compiled = j.compiled  # signature → (Graph, Executable), for inspection
    call.backward_compiled = j.signatures  # signature → (state with .vjp = (Graph, Executable, ...), fn)
    return call
