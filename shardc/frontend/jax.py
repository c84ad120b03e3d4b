"""JAX frontend: a jaxpr → shardc IR.

    g = shardc.from_jax(fn, params, x)

`jax.make_jaxpr(fn)(*args)` gives the program; each equation goes through one rule per
primitive (jax_ops.RULES; calls, control flow and sharding constraints are here). Calls — jit,
custom_jvp/custom_vjp (their primal), remat — are inlined, scans unrolled, conds become
selects. Every node carries the "file:line" of the user's code that made it.

Names: inputs are the function's argument names plus the pytree path of each leaf
("params['w1']", "x", "state[0]"); outputs are "out" for a single array, else "out" plus the
path ("out[0]", "out['loss']"). `g.evaluate(*args)` takes the original arguments.
`g.sharding_constraints` maps the node named "constraint_<k>" made for the k-th
with_sharding_constraint to its PartitionSpec as a tuple, one entry per dim: None, an axis name
or a tuple of names (`...` where the spec leaves a dim unconstrained).
"""
from __future__ import annotations

import inspect
import os
import re

import jax
import numpy as np
from jax.extend.core import Literal

from ..errors import Error, IRError, UnsupportedOpError
from ..ir import DType, Graph, Node, Op
from ..ir.dtypes import from_numpy
from ..ir.evaluate import eval_node
from ..ir.graph import ancestors
from ..ir.ops import COLLECTIVES
from ..ir.emitter import Emitter
from . import jax_moe_ops, jax_vision_ops  # noqa: F401  (registers their rules)
from .jax_ops import RULES, rule

MAX_UNROLL = 4096  # scan/while iterations unrolled before giving up

# workarounds named in the error for primitives that will not be mapped
HINTS = {
    "while": "loops need a trip count known at capture time; use lax.scan or lax.fori_loop with static bounds",
    "random_bits": "draw random values outside the function and pass them in",
    "random_seed": "draw random values outside the function and pass them in",
    "threefry2x32": "draw random values outside the function and pass them in",
    "shard_map": "capture the function before shard_map; shardc partitions it itself",
    "ragged_all_to_all": "it belongs inside shard_map: capture the layer before shard_map, with ragged_dot over all "
                         "experts, and split the experts dim with a spec; shardc moves the tokens itself",
    **{p: "shardc's IR has no complex dtype; keep real and imaginary parts as two real arrays"
       for p in ("complex", "conj", "real", "imag")},
}


def from_jax(fn, *args, name: str = "main", fold: bool = False, **options) -> Graph:
    """jax function + example args → Graph; the args' shapes and dtypes are what is captured.
    fold=True holds identical layers (a Python loop over per-layer parameters) once
    (ir/fold.py): partitioned once per block, unrolling to the capture exactly; `g.fold_note`
    says why not."""
    if options:
        raise Error(f"from_jax: unknown options {sorted(options)} (known: name, fold)")
    if not re.fullmatch(r"[\w.\-]+", name):
        raise Error(f"from_jax: graph name {name!r} must be letters, digits, '_', '.' or '-'")
    _check_array_args(fn, args)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    leaves, in_tree = jax.tree_util.tree_flatten_with_path(args)
    arg_names = _arg_names(fn, len(args))
    in_names = [arg_names[path[0].idx] + jax.tree_util.keystr(path[1:]) for path, _ in leaves]
    if len(in_names) != len(closed.jaxpr.invars):
        raise Error(f"from_jax: {len(in_names)} argument leaves but {len(closed.jaxpr.invars)} jaxpr inputs")

    b = Emitter(name)
    conv = _Converter(b, reserved=in_names)
    conv.reject_unsupported(closed.jaxpr)
    params = [b.parameter(n, v.aval.shape, conv.dtype(v.aval.dtype, f"input {n!r}"))
              for n, v in zip(in_names, closed.jaxpr.invars)]
    outputs = conv.run(closed, params)

    out_leaves, out_tree = jax.tree_util.tree_flatten_with_path(out_shape)
    if jax.tree_util.treedef_is_leaf(out_tree):
        out_names = ["out"]
    else:
        out_names = ["out" + jax.tree_util.keystr(path) for path, _ in out_leaves]
    _eliminate_dead(b, outputs)
    g = b.build(outputs, out_names, flatten_args=FlattenArgs(in_tree))
    live = {n.name for n in g.nodes}
    g.sharding_constraints = {k: v for k, v in conv.constraints.items() if k in live}
    g.output_tree = out_tree  # to rebuild the result's pytree (shardc.jax.jit)
    g.shape_only = any(isinstance(leaf, jax.ShapeDtypeStruct) for _, leaf in leaves)  # no values
    if fold:
        from ..ir.fold import fold as fold_layers
        g = fold_layers(g)
    return g


class FlattenArgs:
    """Turns the original arguments into the jaxpr's input arrays (a class, so graphs pickle)."""

    def __init__(self, in_tree):
        self.in_tree = in_tree

    def __call__(self, *args) -> list:
        leaves, tree = jax.tree_util.tree_flatten(args)
        if tree != self.in_tree:
            raise Error(f"arguments do not match the captured structure:\n  expected {self.in_tree}\n  got      {tree}")
        return leaves


def _check_array_args(fn, args) -> None:
    """Every argument leaf must be an array (or a number, or a ShapeDtypeStruct): a string or an
    object is a shardc.Error that names its path, not JAX's TypeError."""
    names = _arg_names(fn, len(args))
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, bool, int, float, complex)):
            continue
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            continue
        where = names[path[0].idx] + jax.tree_util.keystr(path[1:])
        raise Error(f"from_jax: argument {where} is a {type(leaf).__name__} ({leaf!r:.40}), not an array; "
                    "pass arrays (close over other values, or use functools.partial)")


def _arg_names(fn, n: int) -> list[str]:
    """Names of the first n positional arguments: parameter names, "args[i]" for *args."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    names: list[str] = []
    for p in (sig.parameters.values() if sig else ()):
        if len(names) == n:
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            names += [f"{p.name}[{i}]" for i in range(n - len(names))]
    return names + [f"arg{i}" for i in range(len(names), n)]


def _eliminate_dead(b: Emitter, outputs: list[Node]):
    """Drop nodes no output needs (literals, branches of static conds, unused jaxpr values)."""
    live = ancestors(outputs)
    b.nodes = [n for n in b.nodes if n in live or n.op is Op.PARAMETER]


def _location(eqn) -> str | None:
    """'file:line' of the innermost user frame that made eqn (relative to cwd when under it)."""
    try:
        from jax._src import source_info_util
        frame = source_info_util.user_frame(eqn.source_info.traceback)
    except Exception:  # a private API: a missing location must not stop the capture
        return None
    if frame is None:
        return None
    path, cwd = frame.file_name, os.getcwd()
    if path.startswith(cwd + os.sep):
        path = os.path.relpath(path, cwd)
    return f"{path}:{frame.start_line}"


_NOT_STATIC = frozenset({Op.PARAMETER, Op.AXIS_INDEX}) | COLLECTIVES

# Narrow integers (sort's uint32 iota in JAX's sort JVP, uint8 pixels) widen to i32/i64. That
# keeps their values exact through moves, compares, indexing and widening casts, but not through
# arithmetic that would wrap: those primitives are refused on them.
_NARROW = {np.dtype(np.int8): DType.i32, np.dtype(np.int16): DType.i32, np.dtype(np.uint8): DType.i32,
           np.dtype(np.uint16): DType.i32, np.dtype(np.uint32): DType.i64}
_NARROW_OK = frozenset({
    "iota", "sort", "broadcast_in_dim", "reshape", "squeeze", "transpose", "rev", "slice", "concatenate",
    "pad", "split", "select_n", "gather", "dynamic_slice", "dynamic_update_slice", "scatter", "scatter-add",
    "eq", "ne", "lt", "le", "gt", "ge", "max", "min", "reduce_max", "reduce_min", "argmax", "argmin",
    "convert_element_type", "copy", "copy_p", "stop_gradient", "optimization_barrier", "device_put",
    "sharding_constraint", "name", "debug_callback", "debug_print",
    "jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_jvp_call", "custom_vjp_call",
    "custom_vjp_call_jaxpr", "scan", "while", "cond"})


class _Converter:
    """Walks jaxprs, keeps the current equation (for errors) and source line (for nodes)."""

    def __init__(self, b: Emitter, reserved=()):
        self.b = b
        self.eqn = None
        self.loc: str | None = None
        self.constraints: dict[str, tuple] = {}
        self.names: set[str] = set(reserved)  # node names taken (inputs, checkpoint names)
        self._static: dict[Node, np.ndarray | None] = {}

    # ---- walking ------------------------------------------------------------------------------
    def run(self, jaxpr, args) -> list[Node]:
        """Emit a ClosedJaxpr or Jaxpr applied to args; returns its outputs."""
        consts = getattr(jaxpr, "consts", ())
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
        if len(args) != len(jaxpr.invars):
            raise IRError(f"jaxpr takes {len(jaxpr.invars)} inputs, got {len(args)}")
        env: dict = {}
        with self.b.loc(self.loc):
            for v, value in zip(jaxpr.constvars, consts):
                env[v] = self.b.constant(np.asarray(value), self.dtype(v.aval.dtype, "a constant"))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            outs = self.emit(eqn, [self.read(env, v) for v in eqn.invars])
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [self.read(env, v) for v in jaxpr.outvars]

    def read(self, env, v) -> Node:
        if isinstance(v, Literal):
            with self.b.loc(self.loc):
                return self.b.constant(np.asarray(v.val), self.dtype(v.aval.dtype, "a literal"))
        return env[v]

    def emit(self, eqn, inputs: list[Node]) -> list[Node]:
        saved = self.eqn, self.loc
        self.eqn, self.loc = eqn, _location(eqn) or self.loc  # no user frame: the caller's line
        try:
            name = eqn.primitive.name
            fn = RULES.get(name)
            if fn is None:
                raise self.unsupported()
            narrow = self._narrow_arithmetic(eqn)
            for v in eqn.outvars:
                self.dtype(v.aval.dtype, "its result")
            try:
                with self.b.loc(self.loc):
                    out = fn(self, *inputs, **eqn.params)
            except IRError as e:
                raise IRError(f"jax primitive {name!r}{f' at {self.loc}' if self.loc else ''}: {e}") from e
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            self._check(outs)
            if narrow:
                self._check_no_wrap(outs, narrow)
            return outs
        finally:
            self.eqn, self.loc = saved

    def _check(self, outs: list[Node]):
        """A rule must give exactly what JAX says the equation gives (a frontend bug otherwise)."""
        want = [(tuple(v.aval.shape), self.dtype(v.aval.dtype, "its result")) for v in self.eqn.outvars]
        got = [(o.shape, o.dtype) for o in outs]
        if got != want:
            raise IRError(f"frontend bug: jax primitive {self.eqn.primitive.name!r} at {self.loc} "
                          f"gave {got}, jax has {want}")

    # ---- helpers for rules ----------------------------------------------------------------------
    def reject_unsupported(self, jaxpr, loc: str | None = None):
        """Raise for the first primitive without a rule, anywhere in the program, before any
        other error (a dtype the IR lacks, say) can hide which primitive is at fault."""
        for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
            eqn_loc = _location(eqn) or loc
            if eqn.primitive.name not in RULES:
                self.eqn, self.loc = eqn, eqn_loc
                raise self.unsupported()
            for value in eqn.params.values():
                for sub in (value if isinstance(value, (tuple, list)) else [value]):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        self.reject_unsupported(sub, eqn_loc)

    def _narrow_arithmetic(self, eqn) -> list[str]:
        """The narrow int types of an equation that could wrap on them (else [])."""
        avals = [v.aval for v in list(eqn.invars) + list(eqn.outvars)]
        narrow = sorted({str(a.dtype) for a in avals if getattr(a, "dtype", None) in _NARROW})
        name = eqn.primitive.name
        cast_into = name == "convert_element_type" and eqn.outvars[0].aval.dtype in _NARROW \
            and not np.can_cast(eqn.invars[0].aval.dtype, eqn.outvars[0].aval.dtype, "safe")
        return narrow if narrow and (name not in _NARROW_OK or cast_into) else []

    def _check_no_wrap(self, outs: list[Node], narrow: list[str]):
        """Narrow-int arithmetic is exact when its results are known and in range (the ids
        JAX's scatter JVP counts with iota + 1, say); otherwise it is refused."""
        for o, v in zip(outs, self.eqn.outvars):
            value, dt = self.static(o), np.dtype(v.aval.dtype)
            if dt in _NARROW and (value is None or value.min(initial=0) < np.iinfo(dt).min
                                  or value.max(initial=0) > np.iinfo(dt).max):
                raise self.unsupported(f"arithmetic on traced {', '.join(narrow)} values (shardc "
                                       "widens them to i32/i64, which would not wrap as they do)")

    def dtype(self, dt, what: str) -> DType:
        if np.dtype(dt) in _NARROW:
            return _NARROW[np.dtype(dt)]
        try:
            return from_numpy(dt)
        except Error:
            supported = ", ".join(d.np.name for d in DType)
            prim = f"jax primitive {self.eqn.primitive.name!r}{f' at {self.loc}' if self.loc else ''}: " if self.eqn is not None else ""
            raise UnsupportedOpError(f"{prim}{what} has dtype {dt}, which shardc does not support "
                                     f"(supported: {supported})") from None

    def out_dtype(self, i: int) -> DType:
        return self.dtype(self.eqn.outvars[i].aval.dtype, "its result")

    def unsupported(self, detail: str = "") -> UnsupportedOpError:
        name = self.eqn.primitive.name
        where = f" at {self.loc}" if self.loc else ""
        why = f": {detail}" if detail else ""
        hint = f" ({HINTS[name]})" if name in HINTS else ""
        return UnsupportedOpError(f"jax primitive {name!r}{where} is not supported by shardc{why}{hint}")

    def static(self, node: Node, limit: int = 1 << 16) -> np.ndarray | None:
        """node's value if it depends on no input (constants, iotas and ops on them), else None."""
        if node in self._static:
            return self._static[node]
        value = None
        try:
            if node.op in (Op.CONSTANT, Op.IOTA):
                value = eval_node(node, [])
            elif node.op not in _NOT_STATIC and node.size <= limit:
                args = [self.static(i) for i in node.inputs]
                if all(a is not None for a in args):
                    value = eval_node(node, args)
        except RecursionError:
            value = None
        self._static[node] = value
        return value


# ---- calls and control flow -------------------------------------------------------------------
@rule("jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_jvp_call",
      "custom_vjp_call", "custom_vjp_call_jaxpr")
def _inline(c: _Converter, *args, **params):
    """Calls inline; custom derivatives keep their primal function (grads are already in the jaxpr)."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if params.get(key) is not None:
            return c.run(params[key], list(args))
    raise c.unsupported("no jaxpr to inline")


@rule("scan")
def _scan(c: _Converter, *args, jaxpr, length, reverse, num_consts, num_carry, **_):
    """Unrolled: each step slices the xs, runs the body, and the ys are stacked."""
    b = c.b
    if length > MAX_UNROLL:
        raise c.unsupported(f"a scan of {length} steps (more than {MAX_UNROLL} to unroll)")
    consts, carry = list(args[:num_consts]), list(args[num_consts:num_consts + num_carry])
    xs = args[num_consts + num_carry:]
    steps: list = [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        x_t = [b.reshape(b.slice(x, 0, t, t + 1), x.shape[1:]) for x in xs]
        outs = c.run(jaxpr, consts + carry + x_t)
        carry, steps[t] = outs[:num_carry], outs[num_carry:]
    ys = []
    for k, v in enumerate(c.eqn.outvars[num_carry:]):
        if length == 0:
            ys.append(b.const(0, c.out_dtype(num_carry + k), v.aval.shape))
        else:
            ys.append(b.concat([b.reshape(s[k], (1,) + s[k].shape) for s in steps], 0))
    return carry + ys


@rule("while")
def _while(c: _Converter, *args, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, **_):
    """Unrolled while the condition is known at capture time (a counter from constants)."""
    cond_consts, body_consts = list(args[:cond_nconsts]), list(args[cond_nconsts:cond_nconsts + body_nconsts])
    carry = list(args[cond_nconsts + body_nconsts:])
    for _ in range(MAX_UNROLL + 1):
        (pred,) = c.run(cond_jaxpr, cond_consts + carry)
        value = c.static(pred)
        if value is None:
            raise c.unsupported("its condition depends on traced values")
        if not bool(value):
            return carry
        carry = c.run(body_jaxpr, body_consts + carry)
    raise c.unsupported(f"more than {MAX_UNROLL} iterations to unroll")


@rule("cond")
def _cond(c: _Converter, index, *ops, branches, **_):
    """A known index picks its branch; otherwise every branch runs (the IR is pure and has no
    control flow) and selects keep the taken one's results. The index clamps, as lax.cond's."""
    b, n = c.b, len(branches)
    value = c.static(index)
    if value is not None:
        return c.run(branches[int(np.clip(int(value), 0, n - 1))], list(ops))
    results = [c.run(br, list(ops)) for br in branches]
    out = results[0]
    for k in range(1, n):
        taken = b.binary(Op.GE, index, k)
        out = [b.select(taken, r, o) for r, o in zip(results[k], out)]
    return out


# ---- annotations --------------------------------------------------------------------------------
@rule("sharding_constraint")
def _sharding_constraint(c: _Converter, x, *, sharding, unconstrained_dims=(), **_):
    """An identity (a same-shape reshape) named constraint_<k>, its spec kept for the partitioner."""
    spec = getattr(sharding, "spec", sharding)
    try:
        entries = list(spec)
    except TypeError:
        raise c.unsupported(f"a sharding without a PartitionSpec ({type(sharding).__name__})") from None
    entries += [None] * (x.rank - len(entries))
    tup = []
    for d, e in enumerate(entries):
        if d in set(unconstrained_dims) or type(e).__name__ == "UnconstrainedSingleton":
            tup.append(...)
        elif e is None or isinstance(e, str):
            tup.append(e)
        else:
            tup.append(tuple(e))
    name = f"constraint_{len(c.constraints)}"
    c.constraints[name] = tuple(tup)
    c.names.add(name)
    return c.b.add(Op.RESHAPE, [x], name=name, shape=x.shape)


@rule("name")
def _checkpoint_name(c: _Converter, x, *, name, **_):
    """checkpoint_name(x, "attn") names the value in the graph (made unique: "attn", "attn_1")."""
    if x.name is None and x.op is not Op.PARAMETER:
        unique, k = name, 0
        while unique in c.names or re.fullmatch(r"constraint_\d+", unique):
            k += 1
            unique = f"{name}_{k}"
        c.names.add(unique)
        x.name = unique
    return x


@rule("debug_callback", "debug_print")
def _debug_callback(c: _Converter, *args, **_):
    return []  # jax.debug.print and friends: no values, nothing to compute


class FlattenByName:
    """The whole model's arguments → input arrays of the graph's `names`, matched by pytree path:
    how a repeated graph's unrolled program (ir/blocks.py) takes the full model's arguments."""

    def __init__(self, arg_names: list[str], names: list[str] | None = None):
        self.arg_names, self.names = list(arg_names), names

    def for_inputs(self, names: list[str]) -> "FlattenByName":
        return FlattenByName(self.arg_names, list(names))

    def __call__(self, *args) -> list:
        leaves = jax.tree_util.tree_flatten_with_path(args)[0]
        by_name = {self.arg_names[p[0].idx] + jax.tree_util.keystr(p[1:]): leaf for p, leaf in leaves}
        missing = [n for n in self.names if n not in by_name]
        if missing or len(by_name) != len(self.names):
            raise Error(f"arguments do not match the model: missing {missing[:4]}, "
                        f"{len(by_name)} leaves for {len(self.names)} inputs")
        return [by_name[n] for n in self.names]
