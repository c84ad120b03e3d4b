"""SSA graph of immutable nodes, and the builder frontends and passes use to make one."""
from __future__ import annotations

import contextlib
import gc
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import IRError
from .dtypes import DType
from .ops import Op


class Node:
    """One SSA value: `op(inputs){attrs} -> shape, dtype`, made at `source` (user "file:line")."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "source", "name")

    def __init__(self, op: Op, inputs: Sequence["Node"], attrs: dict, shape: Sequence[int],
                 dtype: DType, source: str | None = None, name: str | None = None):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.source = source
        self.name = name

    def with_inputs(self, inputs: tuple, name: str | None = None) -> "Node":
        """The same value computed from other inputs (attrs shared: nodes are immutable)."""
        n = Node.__new__(Node)
        n.op, n.inputs, n.attrs, n.shape, n.dtype, n.source = self.op, inputs, self.attrs, self.shape, self.dtype, self.source
        n.name = self.name if name is None else name
        return n

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def describe(self) -> str:
        """Short human text for error messages: op, name, type, source line."""
        where = f" at {self.source}" if self.source else ""
        label = f" {self.name!r}" if self.name else ""
        return f"{self.op.value}{label} {self.dtype}{list(self.shape)}{where}"

    def __repr__(self) -> str:
        return f"<Node {self.describe()}>"


class Graph:
    """A whole program: parameters, nodes in topological order, named outputs.

    `bound` holds values of inputs the model owns (torch parameters and buffers), so that
    `evaluate(*args)` takes just what the original callable takes; `flatten_args` turns those
    arguments into arrays for the unbound inputs, in order.

    A shape-only graph (`shape_only`, captured from meta tensors or jax.ShapeDtypeStruct) has
    shapes and dtypes but no values: partition and analysis work on it, evaluating it does not.
    """

    shape_only = False
    # A scheduled per-device program (partition/passes_schedule.py): each collective starts at its
    # place in the order, not as soon as its operand exists; the engines and the cost model follow.
    scheduled = False
    # Identical layers held once (ir/blocks.py): the graph holds 4 layers and stands for
    # `repeat.depth`; `unrolled()` is the whole program.
    repeat = None
    # A folded scan's outputs come in one piece per layer (ir/unstack.py): this stacks them back.
    restack = None

    def __init__(self, nodes: list[Node], inputs: list[Node], outputs: list[Node],
                 output_names: list[str], name: str = "main",
                 mesh_axes: dict[str, int] | None = None,
                 bound: dict[str, np.ndarray] | None = None,
                 flatten_args: Callable[..., list] | None = None):
        self.nodes = nodes
        self.inputs = inputs
        self.outputs = outputs
        self.output_names = list(output_names)
        self.name = name
        self.mesh_axes = dict(mesh_axes or {})
        self.bound = dict(bound or {})
        self.flatten_args = flatten_args

    def unrolled(self) -> "Graph":
        """The whole program: this graph, or with a repeated block each layer instantiated."""
        from .blocks import unroll
        return unroll(self)[0]

    @property
    def input_names(self) -> list[str]:
        return [p.name for p in self.inputs]

    @property
    def free_inputs(self) -> list[Node]:
        """Inputs the caller supplies (not bound inside the graph)."""
        return [p for p in self.inputs if p.name not in self.bound]

    def evaluate(self, *args) -> list[np.ndarray]:
        """The numpy reference: same arguments as the original callable, numpy outputs."""
        from .evaluate import evaluate_graph
        if self.repeat is not None:
            whole = self.unrolled()
            out = evaluate_graph(whole, whole.input_values(*args))
            return self.restack(out) if self.restack else out
        return evaluate_graph(self, self.input_values(*args))

    def input_values(self, *args) -> dict[str, np.ndarray]:
        """Every input's value by name: bound values plus the caller's (converted) arguments."""
        if self.shape_only:
            raise IRError(f"graph {self.name!r} is shape-only (captured from meta tensors or "
                          f"jax.ShapeDtypeStruct): it has shapes and dtypes but no values, so it cannot be "
                          f"evaluated or simulated; partition and shardc.analyze work on it, or capture "
                          f"it again with real arrays to run it")
        flat = self.flatten_args(*args) if self.flatten_args else list(args)
        free = self.free_inputs
        if len(flat) != len(free):
            raise IRError(f"graph {self.name!r} takes {len(free)} input arrays "
                          f"({', '.join(p.name for p in free)}), got {len(flat)}")
        values = dict(self.bound)
        for p, a in zip(free, flat):
            a = to_numpy(a)
            if tuple(a.shape) != p.shape:
                raise IRError(f"input {p.name!r} expects shape {list(p.shape)}, got {list(a.shape)}")
            if _kind(a.dtype) != _kind(p.dtype.np):  # f64 → f32 is fine; floats for ints are not
                raise IRError(f"input {p.name!r} expects {p.dtype}, got {a.dtype}")
            values[p.name] = a.astype(p.dtype.np, copy=False)
        return values

    def node_by_name(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise IRError(f"graph {self.name!r} has no value named {name!r}")

    def users(self) -> dict[Node, list[Node]]:
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name} {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.outputs)} outputs>"


def ancestors(roots) -> set:
    """The nodes the given nodes are computed from, themselves included."""
    seen, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.inputs)
    return seen


@contextlib.contextmanager
def cyclic_gc_paused():
    """For the passes over whole programs (partition, codegen): they make and drop many small
    lists, sets and dicts, freed by reference counting; Python's cyclic collector, triggered by
    those allocations, would walk every node of the program each time (a third of codegen's
    time on a 12- or 48-layer training step, a quarter of partitioning an 80-layer one)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def is_state(g: Graph, p: Node) -> bool:
    """Model-owned tensors, or leaves of dict arguments ("params['w']"); list entries
    ("inputs[0]") and plain arguments are batch data."""
    return p.name in g.bound or "['" in p.name or '["' in p.name


def _kind(dt: np.dtype) -> str:
    """float, int or bool (bf16 is a float though numpy calls it a void-like kind)."""
    if dt.kind in "fV" or dt.name == "bfloat16":
        return "float"
    return "bool" if dt.kind == "b" else "int"


def to_numpy(a) -> np.ndarray:
    """torch tensors (bf16 included), jax arrays, numpy arrays and scalars → numpy."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        import torch
        t = a.detach().cpu()
        if t.dtype == torch.bfloat16:
            from .dtypes import DType as _D
            return t.view(torch.int16).numpy().view(_D.bf16.np)
        return t.numpy()
    return np.asarray(a)


class GraphBuilder:
    """Appends nodes with inferred shapes; `loc(...)` sets the source line of what follows."""

    def __init__(self, name: str = "main", mesh_axes: dict[str, int] | None = None):
        self.name = name
        self.mesh_axes = dict(mesh_axes or {})
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.source: str | None = None

    @contextlib.contextmanager
    def loc(self, source: str | None):
        saved, self.source = self.source, source
        try:
            yield
        finally:
            self.source = saved

    def parameter(self, name: str, shape: Sequence[int], dtype: DType) -> Node:
        if any(p.name == name for p in self.inputs):
            raise IRError(f"duplicate input name {name!r}")
        n = Node(Op.PARAMETER, (), {}, shape, dtype, self.source, name)
        self.nodes.append(n)
        self.inputs.append(n)
        return n

    def add(self, op: Op, inputs: Iterable[Node] = (), name: str | None = None,
            out_shape: Sequence[int] | None = None, out_dtype: DType | None = None, **attrs: Any) -> Node:
        """Append `op(inputs){attrs}`; shape and dtype come from the shape rules (leaves —
        constant, iota — declare theirs with out_shape/out_dtype)."""
        from .shapes import infer
        inputs = tuple(inputs)
        out_shape, out_dtype = infer(op, inputs, attrs, out_shape, out_dtype, self.mesh_axes)
        n = Node(op, inputs, attrs, out_shape, out_dtype, self.source, name)
        self.nodes.append(n)
        return n

    def constant(self, value, dtype: DType, shape: Sequence[int] | None = None) -> Node:
        """A scalar splat (`shape` given, default scalar) or a whole array."""
        arr = np.asarray(value)
        if arr.ndim == 0:
            v = arr.item()
            v = bool(v) if dtype is DType.bool else int(v) if dtype.is_int else float(v)
            return self.add(Op.CONSTANT, (), out_shape=tuple(shape or ()), out_dtype=dtype, value=v)
        if shape is not None and tuple(shape) != arr.shape:
            raise IRError(f"constant of shape {arr.shape} given shape {tuple(shape)}")
        return self.add(Op.CONSTANT, (), out_shape=arr.shape, out_dtype=dtype,
                        value=np.ascontiguousarray(arr.astype(dtype.np)))

    def build(self, outputs: Sequence[Node], output_names: Sequence[str] | None = None,
              **kwargs) -> Graph:
        outputs = list(outputs)
        if output_names is None:
            output_names = ["out"] if len(outputs) == 1 else [f"out[{i}]" for i in range(len(outputs))]
        g = Graph(self.nodes, self.inputs, outputs, list(output_names), self.name, self.mesh_axes, **kwargs)
        return g
