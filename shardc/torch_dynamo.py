"""The torch.compile backend: `torch.compile(model, backend=shardc.torch.backend(mesh, specs))`.

Dynamo hands each captured graph to AOTAutograd (torch._dynamo.backends.common.aot_autograd),
which traces the joint forward + backward graph and splits it in two, as it does for Inductor:
a forward graph (primals → outputs + the values saved for backward) and a backward graph (saved
values + output cotangents → a gradient per primal). Both go through shardc: captured, partitioned
over the mesh and compiled; every call runs on torch.distributed ranks. The forward takes the
user's specs and plan; the backward is pinned to the forward's shardings (a primal keeps its
forward layout, a saved value the layout the forward produced it in, a gradient its primal's).

Names. Dynamo lifts parameters and buffers into graph inputs; their source says where each came
from, e.g. L['self']._modules['h']._modules['0']._modules['attn']._parameters['bias'] (or
L['model']..., AttrSource chains, ...). Every lifted parameter and buffer is named
"params['<module path>']" ("params['h.0.attn.bias']", matched by "*attn.bias" globs), whatever
the root variable is called; user inputs keep their argument name ("x", "batch['ids']").
Gradients are named "grad['<module path or argument>']".
"""
from __future__ import annotations

from .errors import Error
from .runtime import run

_CONTAINERS = ("_modules", "_parameters", "_buffers")


def source_steps(source) -> tuple[str | None, list[tuple[str, object]]]:
    """(root variable, [("attr", name) | ("item", key), ...] from the root outward)."""
    steps = []
    while source is not None:
        member = getattr(source, "member", None)
        index = getattr(source, "index", None)
        if isinstance(member, str):
            steps.append(("attr", member))
        elif index is not None:
            steps.append(("item", getattr(index, "value", index)))
        if getattr(source, "base", None) is None:
            break
        source = source.base
    root = getattr(source, "local_name", None) or getattr(source, "global_name", None)
    return root, steps[::-1]


def input_name(placeholder) -> str | None:
    """A dynamo graph input's name by where it came from: "params['h.0.attn.c_attn.weight']" for
    a parameter or buffer (any module, any root variable), the argument name (+ key path) for a
    user input; None where dynamo recorded no source."""
    import torch
    arg = placeholder.meta.get("grapharg")
    source = getattr(arg, "source", None)
    if source is None:
        return None
    root, steps = source_steps(source)
    example = getattr(arg, "_example", None)
    example = example() if callable(example) else example
    state = (isinstance(example, torch.nn.Parameter) or any(k in _CONTAINERS for kind, k in steps if kind == "attr")
             or (root == "self" and steps))  # a tensor attribute of the module
    if state:
        path = [str(k) for kind, k in steps if not (kind == "attr" and k in _CONTAINERS)]
        return f"params[{'.'.join(path)!r}]" if path else None
    if root is None:
        return None
    return root + "".join(f".{k}" if kind == "attr" else f"[{k!r}]" if isinstance(k, str) else f"[{k}]"
                          for kind, k in steps)


def input_names(gm) -> list[str | None]:
    """One name per placeholder of a dynamo graph (None where its source says nothing); a name
    two inputs would share stays with the first."""
    out, seen = [], set()
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            name = input_name(n)
            out.append(None if name in seen else name)
            seen.add(name)
    return out


def _specs_in(g, specs):
    """The specs that name something in this dynamo graph. A graph break splits a model into
    several graphs, each holding some of the parameters: a spec applies to the graphs that have
    its tensor, and one that names nothing in this graph is skipped here with a warning (a typo
    shows up as a warning on every graph)."""
    import fnmatch
    import warnings

    from .partition.specs import leaf_key, named_targets
    if not isinstance(specs, dict):
        return specs
    names = [name for name, _, _ in named_targets(g)]
    keys = {*names, *(leaf_key(n) for n in names)}

    def hits(key):
        return key in keys or (any(c in key for c in "*?[") and any(fnmatch.fnmatchcase(k, key) for k in keys))

    missing = [k for k in specs if isinstance(k, str) and not hits(k)]
    if missing:
        warnings.warn(f"shardc.torch.backend: specs {missing} name nothing in dynamo graph {g.name!r} "
                      f"(inputs: {', '.join(g.input_names[:6])}{', ...' if len(g.inputs) > 6 else ''}); "
                      "they apply to the graphs that have them (after a graph break)", stacklevel=2)
    return {k: v for k, v in specs.items() if k not in missing}


def _real(example_inputs) -> tuple:
    """AOTAutograd's example inputs are FakeTensors; a capture from those would be shape-only
    (no values to run): capture from real tensors of the same shapes (only shapes matter)."""
    import torch
    from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily
    with unset_fake_temporarily():
        return tuple(torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) and is_fake(t) else t
                     for t in example_inputs)


def _grad_name(name: str) -> str:
    from .partition.specs import leaf_key
    return f"grad[{leaf_key(name)!r}]"


def _pin(sharding, shape, node_shape):
    from .pins import pin
    return pin(sharding) if tuple(shape) == tuple(node_shape) else None


class Compiled:
    """One dynamo graph through AOTAutograd: its forward and (once run) backward executables."""

    def __init__(self, gm, mesh, specs, plan, target, run_options, name="dynamo"):
        self.name = name
        self.mesh, self.specs, self.plan, self.target, self.run_options = mesh, specs, plan, target, run_options
        self.names = input_names(gm)
        self.forward: object = None   # the forward Executable
        self.backward: object = None  # the backward Executable, after the first backward
        self._fw_outputs: dict[str, int] = {}

    def _rename_inputs(self, g, names):
        taken = set(g.input_names)
        for p, name in zip(g.free_inputs, names):
            if name and name not in taken:
                taken.discard(p.name)
                p.name = name
                taken.add(name)

    def compile_forward(self, fw_gm, example_inputs):
        import shardc
        g = shardc.from_torch(fw_gm, _real(example_inputs))
        g.name = self.name
        if len(g.free_inputs) != len(self.names):
            raise Error(f"torch.compile backend: AOTAutograd's forward takes {len(g.free_inputs)} tensors, "
                        f"dynamo's graph {len(self.names)}")
        self._rename_inputs(g, self.names)
        out = next(n for n in fw_gm.graph.nodes if n.op == "output")
        self._fw_outputs = {v.name: i for i, v in enumerate(out.args[0]) if hasattr(v, "name")}
        self.forward = exe = shardc.compile(shardc.partition(g, self.mesh, _specs_in(g, self.specs), self.plan),
                                            target=self.target)

        def run_forward(*args):
            return tuple(run(exe, *args, engine="torch", **self.run_options))
        return _boxed(run_forward)

    def compile_backward(self, bw_gm, example_inputs):
        import shardc
        if self.forward is None:
            raise Error("torch.compile backend: AOTAutograd asked for a backward before its forward")
        out = next(n for n in bw_gm.graph.nodes if n.op == "output")
        grads = list(out.args[0])
        kept = [i for i, v in enumerate(grads) if v is not None]
        out.args = (tuple(grads[i] for i in kept),)
        bw_gm.recompile()
        placeholders = [n.name for n in bw_gm.graph.nodes if n.op == "placeholder"]
        g = shardc.from_torch(bw_gm, _real(example_inputs))
        fwd = self.forward.prog
        pins, names = {}, []
        for ph, p in zip(placeholders, g.free_inputs):
            name, s = None, None
            if ph.startswith("primals_") and ph[8:].isdigit() and int(ph[8:]) <= len(self.names):
                k = int(ph[8:]) - 1
                name, s = self.names[k], _pin(fwd.input_shardings[k], fwd.graph.inputs[k].shape, p.shape)
            elif ph in self._fw_outputs:  # a value the forward saved for backward
                i = self._fw_outputs[ph]
                name, s = f"saved[{ph!r}]", _pin(fwd.output_shardings[i], fwd.graph.outputs[i].shape, p.shape)
            elif ph.startswith("tangents_") and ph[9:].isdigit():  # the cotangent of output i
                i = int(ph[9:]) - 1
                name = f"tangents[{i}]"
                if i < len(fwd.graph.outputs):
                    s = _pin(fwd.output_shardings[i], fwd.graph.outputs[i].shape, p.shape)
            name = name or f"saved[{ph!r}]"
            names.append(name)
            if s is not None:
                pins[name] = s
        self._rename_inputs(g, names)
        for j, i in enumerate(kept):
            if i < len(self.names) and self.names[i]:
                g.output_names[j] = _grad_name(self.names[i])
                s = _pin(fwd.input_shardings[i], fwd.graph.inputs[i].shape, g.outputs[j].shape)
                if s is not None:
                    pins[g.output_names[j]] = s
        g.name = f"{self.name}_backward"
        pins = {k: v for k, v in pins.items() if k in set(g.input_names) | set(g.output_names)}
        self.backward = exe = shardc.compile(shardc.partition(g, self.mesh, pins), target=self.target)

        def run_backward(*args):
            got = run(exe, *args, engine="torch", **self.run_options)
            full = [None] * len(grads)
            for i, t in zip(kept, got):
                full[i] = t
            return tuple(full)
        return _boxed(run_backward)


def _boxed(fn):
    """AOTAutograd calls compiled graphs with one list of arguments (it frees them as it goes)."""
    from torch._functorch.aot_autograd import make_boxed_func
    return make_boxed_func(fn)


def backend(mesh, specs=None, plan: str | None = None, target: str = "triton", **run_options):
    """A torch.compile backend whose forward and backward graphs both run partitioned."""
    from torch._dynamo.backends.common import aot_autograd
    from torch.nn.attention import SDPBackend, sdpa_kernel

    count = [0]

    def compile_graph(gm, example_inputs):
        count[0] += 1
        c = Compiled(gm, mesh, specs, plan, target, run_options, name=f"dynamo_graph_{count[0]}")
        # scaled_dot_product_attention through its math backend, as shardc's own capture does:
        # matmuls and softmax (CPU's fused kernel and its backward are opaque ops)
        with sdpa_kernel([SDPBackend.MATH]):
            compiled = aot_autograd(fw_compiler=c.compile_forward, bw_compiler=c.compile_backward,
                                    inference_compiler=c.compile_forward)(gm, example_inputs)
        try:
            compiled.shardc, compiled.executable = c, c.forward
        except AttributeError:  # pragma: no cover - aot_autograd returned a callable without a __dict__
            pass
        return compiled

    return compile_graph
