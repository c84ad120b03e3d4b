"""PyTorch → shardc IR.

    g = shardc.from_torch(model, (x,))                  # nn.Module: params/buffers bound, by FQN
    g = shardc.from_torch(train_step, (params, x, y))   # function: every input free
    g.evaluate(*args)                                   # the callable's own arguments

1. Capture one core-ATen FX graph.
   - nn.Module → torch.export.export(...).run_decompositions().
   - function  → wrapped in a Module and exported the same way.
   - If export fails — it cannot trace through torch.func.grad/grad_and_value, nor through
     torch.autograd.grad of tensors made inside the function, which is how training steps are
     written — the callable is traced with make_fx (fake tensors, the same decompositions).
     make_fx records autograd's backward as ordinary aten ops, so loss, gradients and the
     optimizer update become ONE graph. Its graph is not functionalized (functionalize refuses
     requires_grad_ inside it): the few in-place ops decompositions leave (copy_, sub_, ...) map
     to their functional twins here, and are refused where a view could see the mutation.
   Both keep whole the ops in torch_ops.KEEP_WHOLE (softmax/layer-norm/gelu backward, losses,
   ...), whose rules compute as torch's eager kernels do.
2. Map the FX graph node by node through the op table (torch_ops.RULES). Each aten op's final IR
   node takes the FX node's name; its source is the user's innermost "file:line".

Names: inputs are parameter/buffer FQNs, then the callable's argument names + pytree key path
("x", "params['fc1.weight']", "args[0]" for *args, the keyword for keyword arguments); outputs
are "out" for a lone tensor, else "out" + key path ("out[0]", "out['loss']").
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import operator
import os
import re
import sysconfig
import traceback
import warnings

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ..errors import Error, UnsupportedOpError
from ..ir import Graph, Node, Op, to_numpy
from . import torch_decomp
from .torch_emitter import TORCH_TO_IR, TorchEmitter
from .torch_moe_ops import STATIC_INSTEAD, data_dependent_refusal, grouped_mm_any_float
from .torch_ops import KEEP_WHOLE, lookup

# Lifted tensor constants up to this many elements become constant nodes; larger ones become
# bound inputs, so the printed IR stays readable.
SMALL_CONSTANT = 64
# aten kwargs about memory and devices: the IR has values only.
_IGNORED_KWARGS = {"device", "layout", "pin_memory", "memory_format", "non_blocking", "requires_grad"}


@dataclasses.dataclass
class _Input:
    kind: str       # "free" (the caller's), "bound" (parameter, buffer, big constant) or "const"
    name: str
    value: object   # the example tensor (free), the tensor (bound, const) or a python value


@dataclasses.dataclass
class _Capture:
    graph: torch.fx.Graph
    owner: torch.nn.Module | None   # holds get_attr targets
    inputs: list[_Input]            # one per placeholder, in order
    outputs: list                   # flat user outputs: FX nodes or python values
    output_names: list[str]


def from_torch(fn, args, kwargs=None, capture: str = "auto", decompose: bool = True, fold: bool = False) -> Graph:
    """torch.nn.Module or function + example args → Graph; see the module docstring.

    capture: "auto" (torch.export, make_fx when export fails), "export" or "make_fx".
    decompose=False (make_fx only) keeps the aten ops that core ATen would decompose, such as
    gelu_backward or native_layer_norm_backward, where the op table has a rule for them.
    fold=True holds identical layers (an nn.ModuleList of one block) once (ir/fold.py): the graph
    is partitioned once per block and unrolls to the capture exactly; `g.fold_note` says why not.
    """
    if capture not in ("auto", "export", "make_fx"):
        raise Error(f"from_torch: capture={capture!r}; valid: 'auto', 'export', 'make_fx'")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    kwargs = dict(kwargs or {})
    leaves, in_spec = pytree.tree_flatten((args, kwargs))
    names = _leaf_names(fn, args, kwargs)
    with _user_stack_traces():
        captured = _capture(fn, args, kwargs, leaves, names, capture, decompose)
    tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    flatten = _flattener(len(args), list(kwargs), in_spec, leaves, tensor_at)
    g = _convert(captured, _graph_name(fn), flatten)
    if fold:
        from ..ir.fold import fold as fold_layers
        g = fold_layers(g)
    return g


# ----------------------------------------------------------------------------------- capture
class _FunctionModule(torch.nn.Module):
    """A plain function as a Module, for torch.export."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _capture(fn, args, kwargs, leaves, names, how: str, decompose: bool) -> _Capture:
    """torch.export first; make_fx when export fails (autograd inside: training steps)."""
    module = fn if isinstance(fn, torch.nn.Module) else _FunctionModule(fn)
    attempts = {
        "torch.export": lambda: _export(module, args, kwargs, leaves, names),
        "make_fx": lambda: _make_fx(fn, args, kwargs, leaves, names, decompose),
    }
    if how == "make_fx" or not decompose:
        del attempts["torch.export"]
    elif how == "export":
        del attempts["make_fx"]
    failures, errors = [], []
    for what, attempt in attempts.items():
        try:
            with grouped_mm_any_float():
                return attempt()
        except UnsupportedOpError:
            raise
        except Exception as err:  # torch's own errors: reported with the next attempt's
            failures.append(f"{what} failed with {_first_line(err)}")
            errors.append(err)
            last = err
    refusal = data_dependent_refusal(_graph_name(fn), errors)
    if refusal is not None:
        raise UnsupportedOpError(refusal) from last
    raise UnsupportedOpError(f"shardc could not capture {_graph_name(fn)}: {'; '.join(failures)}") from last


def _export(module, args, kwargs, leaves, names) -> _Capture:
    from torch.export.graph_signature import InputKind, OutputKind

    with warnings.catch_warnings():  # torch.export's own deprecation notice (LeafSpec), on every export
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        ep = torch.export.export(module, args, kwargs).run_decompositions(_core_aten_table())
    sig = ep.graph_signature
    user = [(n, leaf) for n, leaf in zip(names, leaves)]
    if sum(s.kind is InputKind.USER_INPUT for s in sig.input_specs) != len(user):
        user = [(n, leaf) for n, leaf in user if isinstance(leaf, torch.Tensor)]
    user = iter(user)
    inputs, user_names = [], {}
    for spec in sig.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            value = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            inputs.append(_Input("bound", spec.target, value))
        elif spec.kind is InputKind.CONSTANT_TENSOR:
            inputs.append(_lifted(spec.target, ep.constants[spec.target]))
        elif spec.kind is InputKind.TOKEN:  # orders side effects (an error check): no value
            inputs.append(_Input("token", spec.arg.name, None))
        elif spec.kind is InputKind.USER_INPUT:
            name, leaf = next(user)
            user_names[spec.arg.name] = name
            inputs.append(_Input("free" if isinstance(leaf, torch.Tensor) else "const", name, leaf))
        else:
            raise UnsupportedOpError(f"torch.export input {spec.target or spec.arg} of kind {spec.kind.name} "
                                     "is not supported by shardc")
    flat_out = _output_node(ep.graph).args[0]
    outputs = []
    for spec, value in zip(sig.output_specs, flat_out):
        if spec.kind is OutputKind.USER_OUTPUT:
            outputs.append(value)
        elif spec.kind is OutputKind.TOKEN:
            continue
        elif spec.kind is OutputKind.USER_INPUT_MUTATION:
            name = user_names.get(spec.target, spec.target)
            raise UnsupportedOpError(f"{_graph_name(module)} updates its input {name!r} in place, which shardc "
                                     "does not support; return the new value instead")
        # BUFFER_MUTATION (e.g. BatchNorm's running statistics) is state, not output: dropped
    return _Capture(ep.graph, None, inputs, outputs, _output_names(ep.call_spec.out_spec, len(outputs)))


@functools.lru_cache(maxsize=1)
def _core_aten_table():
    """torch.export's core-ATen table less the ops kept whole (built once: building it costs
    more than exporting a small model)."""
    table = torch.export.default_decompositions()
    for op in [op for op in table if op.overloadpacket in KEEP_WHOLE]:
        table.pop(op)
    return table


def _make_fx(fn, args, kwargs, leaves, names, decompose: bool = True) -> _Capture:
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tensor_at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    state = {}
    if isinstance(fn, torch.nn.Module):  # params and buffers become inputs, as with export
        state = {**dict(fn.named_parameters()), **dict(fn.named_buffers())}
    in_spec = pytree.tree_structure((args, kwargs))
    out_specs = []

    def flat_fn(*flat):
        full = list(leaves)
        for i, t in zip(tensor_at, flat[len(state):]):
            full[i] = t
        a, k = pytree.tree_unflatten(full, in_spec)
        if state:
            out = torch.func.functional_call(fn, dict(zip(state, flat[:len(state)])), tuple(a), k)
        else:
            out = fn(*a, **k)
        flat_out, spec = pytree.tree_flatten(out)
        out_specs.append(spec)
        return flat_out

    table = {op: f for op, f in core_aten_decompositions().items() if op.overloadpacket not in KEEP_WHOLE}
    trace = make_fx(flat_fn, decomposition_table=table if decompose else {}, tracing_mode="fake",
                    record_stack_traces=True, _allow_non_fake_inputs=True)
    # scaled_dot_product_attention through its math backend: matmuls and softmax, whose
    # autograd gives plain ops (the fused CPU kernel's backward is one opaque aten op)
    with sdpa_kernel([SDPBackend.MATH]):
        gm = trace(*[t.detach() for t in state.values()], *[leaves[i] for i in tensor_at])
    inputs = [_Input("bound", n, t.detach()) for n, t in state.items()]
    inputs += [_Input("free", names[i], leaves[i]) for i in tensor_at]
    outputs = list(_output_node(gm.graph).args[0])
    return _Capture(gm.graph, gm, inputs, outputs, _output_names(out_specs[-1], len(outputs)))


def _lifted(name: str, value) -> _Input:
    small = not isinstance(value, torch.Tensor) or value.numel() <= SMALL_CONSTANT
    return _Input("const" if small else "bound", name, value)


def _output_node(graph):
    return next(n for n in graph.nodes if n.op == "output")


# ------------------------------------------------------------------------------------- names
def _leaf_names(fn, args, kwargs) -> list[str]:
    """Names of the leaves of (args, kwargs): the parameter name + pytree key path ("x",
    "params['fc1.weight']", "args[0]" for *args); keyword arguments go by their keyword."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), "args")

    def root(path) -> str:
        if path[0].idx == 1:
            return str(path[1].key)
        i = path[1].idx
        return positional[i] if i < len(positional) else f"{varargs}[{i - len(positional)}]"

    return [root(path) + pytree.keystr(path[2:]) for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]]


def _output_names(spec, n: int) -> list[str]:
    """"out" for a lone tensor, else "out" + pytree key path: "out[0]", "out['loss']"."""
    if spec.is_leaf():
        return ["out"] * n
    tree = pytree.tree_unflatten(list(range(n)), spec)
    return ["out" + pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(tree)[0]]


def _graph_name(fn) -> str:
    if isinstance(fn, _FunctionModule):
        fn = fn.fn
    raw = type(fn).__name__ if isinstance(fn, torch.nn.Module) else getattr(fn, "__name__", "fn")
    return re.sub(r"[^\w.\-]", "_", raw).strip("_") or "main"


def _flattener(n_args: int, kw_names: list[str], in_spec, leaves, tensor_at):
    """evaluate(*args) → the free input arrays: the callable's positional arguments, followed by
    the values of the keyword arguments it was captured with, in that order."""
    fixed = {i: leaf for i, leaf in enumerate(leaves) if i not in set(tensor_at)}

    def flatten_args(*call_args):
        kw = dict(zip(kw_names, call_args[n_args:]))
        got, spec = pytree.tree_flatten((tuple(call_args[:n_args]), kw))
        if spec != in_spec:
            raise Error(f"the graph was captured for arguments structured as {in_spec}, got {spec}")
        changed = [i for i, v in fixed.items() if not _same(got[i], v)]
        if changed:
            raise Error(f"non-tensor arguments are baked into the graph: argument leaf {changed[0]} was "
                        f"{fixed[changed[0]]!r} at capture, got {got[changed[0]]!r}")
        return [got[i] for i in tensor_at]

    return flatten_args


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


# ---------------------------------------------------------------------------- source lines
def _dirs(*dirs) -> tuple[str, ...]:
    return tuple(sorted({os.path.join(os.path.abspath(d), "") for d in dirs}))


# Frames under torch and shardc's compiler packages are never the user's; the standard library's
# are not either, except installed packages (transformers' models, ...) that may live under it.
# shardc's own model zoo (shardc/models) is user code.
_SHARDC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FRAMEWORK = _dirs(os.path.dirname(torch.__file__),
                   *(os.path.join(_SHARDC, d) for d in os.listdir(_SHARDC) if d != "models"))
_STDLIB = _dirs(sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
_PACKAGES = _dirs(sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@functools.lru_cache(maxsize=4096)
def _is_internal(filename: str) -> bool:
    if filename.startswith("<"):  # "<frozen runpy>", fx's "<eval_with_key>.3"; not "<stdin>"
        return filename.startswith(("<frozen", "<eval_with_key"))
    path = os.path.abspath(filename)
    if path.startswith(_FRAMEWORK):
        return True
    return path.startswith(_STDLIB) and not path.startswith(_PACKAGES)


def _source(fx_node) -> str | None:
    """The innermost user frame of the node's stack trace, as "file:line" (relative to the
    working directory when under it)."""
    for filename, line in reversed(_FRAME.findall(fx_node.meta.get("stack_trace") or "")):
        if not _is_internal(filename):
            path = os.path.abspath(filename)
            cwd = os.path.join(os.getcwd(), "")
            return f"{os.path.relpath(path) if path.startswith(cwd) else path}:{line}"
    return None


@contextlib.contextmanager
def _user_stack_traces():
    """FX keeps only frames of functions named `forward` in node.meta["stack_trace"]; keep every
    frame outside torch instead, so a node's source can be the innermost user line (in a helper
    function or a training step). A private torch hook: without it, sources are coarser."""
    from torch.fx import proxy

    original = getattr(proxy.TracerBase, "_filter_traceback_frames", None)
    if original is None:
        yield
        return

    def keep_user_frames(self, summary):
        return traceback.StackSummary.from_list([f for f in summary if not _is_internal(f.filename)])

    proxy.TracerBase._filter_traceback_frames = keep_user_frames
    try:
        yield
    finally:
        proxy.TracerBase._filter_traceback_frames = original


# -------------------------------------------------------------------------------- conversion
class _Converter:
    def __init__(self, capture: _Capture, name: str):
        self.cap = capture
        self.e = TorchEmitter(name)
        self.env: dict = {}
        self.bound: dict[str, np.ndarray] = {}
        self.used: set[str] = set()
        self.attrs: dict[str, object] = {}  # get_attr target → its IR value
        self.outer_source: str | None = None  # the user's line, inside an op's decomposition

    def run(self, flatten_args) -> Graph:
        placeholders = [n for n in self.cap.graph.nodes if n.op == "placeholder"]
        for ph, inp in zip(placeholders, self.cap.inputs):
            self.env[ph] = self.input(inp)
        for n in self.cap.graph.nodes:
            if n.op == "get_attr":
                self.env[n] = self.get_attr(n.target)
            elif n.op == "call_function":
                self.env[n] = self.call(n)
            elif n.op in ("call_module", "call_method"):
                raise UnsupportedOpError(f"FX {n.op} {n.target}{_at(_source(n))} is not supported by shardc")
        outs = [self.output(v) for v in self.cap.outputs]
        g = self.e.build(outs, self.cap.output_names, bound=self.bound, flatten_args=flatten_args)
        g.sharding_constraints = dict(getattr(self.e, "constraints", {}))  # from shardc.constrain
        g.shape_only = getattr(self, "shape_only", False)  # meta tensors or FakeTensors: no values
        return g

    # ---- leaves ----------------------------------------------------------------------------
    def input(self, inp: _Input):
        if inp.kind == "token":
            return None
        if inp.kind == "const":
            return self.constant(inp.value) if isinstance(inp.value, torch.Tensor) else inp.value
        t = inp.value
        if t.dtype not in TORCH_TO_IR:
            raise UnsupportedOpError(f"input {inp.name!r} has dtype {t.dtype}, which shardc does not support "
                                     f"(supported: {', '.join(str(d) for d in TORCH_TO_IR)})")
        if any(not isinstance(s, int) for s in t.shape):
            raise UnsupportedOpError(f"input {inp.name!r} has a dynamic shape; shardc needs static shapes")
        node = self.e.parameter(inp.name, tuple(t.shape), TORCH_TO_IR[t.dtype])
        self.used.add(inp.name)
        if inp.kind == "bound":
            self.bound[inp.name] = _value_or_shape(self, t)
        elif _has_no_data(t):
            self.shape_only = True
        return node

    def constant(self, t: torch.Tensor) -> Node:
        if t.dtype not in TORCH_TO_IR:
            raise UnsupportedOpError(f"constant tensor of dtype {t.dtype} is not supported by shardc")
        return self.e.constant(_value_or_shape(self, t, copy=False), TORCH_TO_IR[t.dtype])

    def get_attr(self, target: str):
        """make_fx keeps tensors the function closes over as module attributes."""
        if target not in self.attrs:
            value = self.cap.owner
            for part in target.split("."):
                value = getattr(value, part)
            inp = _lifted(target, value)
            self.attrs[target] = self.input(inp) if inp.kind == "bound" else self.constant(value)
        return self.attrs[target]

    def output(self, v) -> Node:
        if isinstance(v, torch.fx.Node):
            return self.env[v]
        if isinstance(v, (bool, int, float)):  # a python number the callable returned
            dt = TORCH_TO_IR[torch.tensor(v).dtype] if not isinstance(v, float) else TORCH_TO_IR[torch.float32]
            return self.e.const(v, dt)
        raise UnsupportedOpError(f"output {v!r} of type {type(v).__name__} is not supported by shardc")

    # ---- ops -------------------------------------------------------------------------------
    def call(self, n):
        target, e = n.target, self.e
        source = _source(n) or self.outer_source
        if target is operator.getitem:  # one result of a multi-output op
            out = self.env[n.args[0]][n.args[1]]
            return self.named(out, n)
        if target is getattr(torch.ops.higher_order, "with_effects", None):
            return self.with_effects(n, source)
        args = torch.fx.node.map_arg(n.args, lambda a: self.env[a])
        kwargs = {k: v for k, v in torch.fx.node.map_arg(n.kwargs, lambda a: self.env[a]).items()
                  if k not in _IGNORED_KWARGS}
        if not isinstance(target, torch._ops.OpOverload):
            if getattr(target, "__module__", None) in ("_operator", "operator") and all(
                    not isinstance(a, Node) for a in args):
                return target(*args)  # arithmetic on (static) sizes
            raise UnsupportedOpError(f"{getattr(target, '__name__', target)}{_at(source)} is not supported by shardc")
        e.op_name, e.val = str(target), n.meta.get("val")
        e.in_vals = [a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in n.args]
        rule, inplace = lookup(target), False
        if rule is None and _is_inplace(target):
            rule, inplace = lookup(_functional(target)), True
        if rule is None and torch_decomp.decomposition(target) is not None:
            out = self.decompose(n, target, source)
            e.op_name, e.val = str(target), n.meta.get("val")
            with e.loc(source):
                return self.named(_conform(e, out, e.val), n)
        with e.loc(source):
            _check_static(e, e.val)  # (a data-dependent shape is the reason, rule or not)
            if rule is None:
                raise UnsupportedOpError(f"{e.op_name}{_at(source)} is not supported by shardc; it has no rule "
                                         "in shardc/frontend/torch_ops.py")
            if inplace:
                self.check_inplace(n)
            try:
                out = rule(e, *args, **kwargs)
            except UnsupportedOpError as err:
                if str(err).startswith(e.op_name):
                    raise
                raise UnsupportedOpError(f"{e.op_name}{_at(source)}: {err}") from err
            except Error as err:
                raise type(err)(f"{e.op_name}{_at(source)}: {err}") from err
            except Exception as err:
                err.add_note(f"(shardc: while mapping {e.op_name}{_at(source)}, FX node {n.name})")
                raise
            out = _conform(e, out, e.val)
        if inplace:  # later readers of the mutated tensor see the new value
            dst = n.args[0]
            while True:
                self.env[dst] = out
                if not (dst.op == "call_function" and _is_inplace(dst.target)):
                    break
                dst = dst.args[0]
        return self.named(out, n)

    def with_effects(self, n, source):
        return torch_decomp.with_effects(n, source)

    def decompose(self, n, target, source):
        return torch_decomp.decompose(self, n, target, source)

    def check_inplace(self, n):
        """An in-place op becomes its functional twin; refuse it where something else could see
        the mutation: a graph input, or a tensor that is (or has) a view."""
        root = n.args[0]
        chain = [root]
        while root.op == "call_function" and _is_inplace(root.target):
            root = root.args[0]
            chain.append(root)
        if root.op in ("placeholder", "get_attr"):
            raise self.e.unsupported("in-place update of a graph input (return the new value instead)")
        views = [u for c in chain for u in c.users if _is_view(u)]
        if _is_view(root) or views:
            raise self.e.unsupported("in-place update of a tensor that shares memory with a view")

    def named(self, out, n):
        """The aten op's final IR node takes the FX node's name (unique in the graph)."""
        if isinstance(out, Node) and out.name is None and out.op is not Op.PARAMETER:
            name, i = n.name, 1
            while name in self.used:
                name, i = f"{n.name}_{i}", i + 1
            out.name = name
            self.used.add(name)
        return out


def _convert(capture: _Capture, name: str, flatten_args) -> Graph:
    return _Converter(capture, name).run(flatten_args)


def _is_inplace(target) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable and \
        target.overloadpacket.__name__.endswith("_")


def _functional(target):
    """aten.sub_.Tensor → aten.sub.Tensor (or the packet when that overload does not exist)."""
    packet = getattr(torch.ops.aten, target.overloadpacket.__name__[:-1], None)
    return None if packet is None else getattr(packet, target._overloadname, packet)


def _is_view(n) -> bool:
    return n.op == "call_function" and getattr(n.target, "is_view", False)


def _check_static(e, val):
    if isinstance(val, torch.Tensor):
        if any(not isinstance(s, int) for s in val.shape):
            hint = STATIC_INSTEAD.get(e.op_name.split(".")[1] if e.op_name.count(".") else e.op_name, "")
            raise e.unsupported(f"dynamic shape {list(val.shape)} (shardc needs static shapes{hint})")
    elif isinstance(val, (list, tuple)):
        for v in val:
            _check_static(e, v)
    elif isinstance(val, torch.SymInt):
        raise e.unsupported("a dynamic (symbolic) size")


def _conform(e, out, val):
    """The rule's result, checked against torch's example output: same shape, torch's dtype."""
    if isinstance(val, torch.Tensor):
        if not isinstance(out, Node):
            raise Error(f"shardc bug: the rule for {e.op_name} returned {type(out).__name__}, not a tensor")
        if out.shape != tuple(val.shape):
            raise Error(f"shardc bug: {e.op_name}{_at(e.source)} maps to shape {list(out.shape)}, torch gives "
                        f"{list(val.shape)}")
        return e.cast(out, e.dtype(val.dtype))
    if isinstance(val, (list, tuple)) and isinstance(out, (list, tuple)):
        if len(out) != len(val):
            raise Error(f"shardc bug: {e.op_name} gives {len(out)} results, torch {len(val)}")
        return type(out)(_conform(e, o, v) for o, v in zip(out, val))
    return out


def _has_no_data(t) -> bool:
    """A meta tensor or a FakeTensor: shapes and dtypes, no values (a shape-only capture)."""
    from torch._subclasses.fake_tensor import FakeTensor
    return t.is_meta or isinstance(t, FakeTensor)


def _value_or_shape(conv, t, copy: bool = True) -> np.ndarray:
    """The tensor's values, or for a tensor without data a zero-strided stand-in of its shape
    (no memory) that marks the graph shape-only."""
    if _has_no_data(t):
        conv.shape_only = True
        return np.broadcast_to(np.zeros((), TORCH_TO_IR[t.dtype].np), tuple(t.shape))
    return np.array(to_numpy(t.detach()), copy=True) if copy else to_numpy(t.detach())


def _at(source: str | None) -> str:
    return f" at {source}" if source else ""


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
