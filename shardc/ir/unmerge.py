"""Views around matmuls undone: a torch capture as the graph a JAX capture of the model is.

torch computes x @ W on [b, s, d] as a view to [b·s, d], a 2-D mm and a view back; `bmm` (and
F.scaled_dot_product_attention's math decomposition) merges attention's [b, h] into one batch
dim; a weight gradient contracts the merged [b·s] rows of two views. Captured as is, every dot's
readers see it through a reshape, and codegen's fusion rules (logits and scores rebuilt per tile,
norm statistics in the prologue of the matmul that reads them) do not look behind reshapes: a
torch training step stored its logits and every layer's scores, dP and dS.

`unmerge(g)` gives such a dot the merged dims back (more free, batch or contraction dims, as
jnp.matmul's dot_general has them) and carries the unmerged form through the elementwise ops,
reductions and transposes that read it, so that a view which splits the dims again composes
away. A value keeps its captured shape wherever a reader needs it (a reshape of the unmerged
form). Each rewrite moves the same elements in the same order: a contraction over [b, s] sums
the same products as one over [b·s].
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .graph import Graph, GraphBuilder, Node, ancestors
from .ops import ELEMENTWISE, REDUCE, Op
from .shapes import reshape_groups

Runs = tuple  # tuple[tuple[int, ...], ...]: dim i of a value is the merge of dims runs[i] of its form


class Form(NamedTuple):
    """`node` reshaped to the captured value's shape is that value: its dim i merges node's dims
    runs[i] (an empty run: a size-1 dim the form does not have)."""
    node: Node
    runs: Runs


def is_view(n: Node) -> bool:
    """A reshape (not a same-shape sharding constraint) or a transpose that moves size-1 dims
    only: both keep the elements in order."""
    if n.op is Op.RESHAPE:
        return n.shape != n.inputs[0].shape
    if n.op is Op.TRANSPOSE:
        big = [p for p in n.attrs["perm"] if n.inputs[0].shape[p] != 1]
        return big == sorted(big)
    return False


def merge_runs(src, dst) -> Runs | None:
    """The runs of `src` dims each `dst` dim merges, or None where dst splits a dim of src.
    A size-1 dst dim may stand for no src dim; a size-1 src dim joins the run before it."""
    src, dst = tuple(src), tuple(dst)
    if 0 in src or 0 in dst or math.prod(src) != math.prod(dst):
        return None
    bs, bd = [i for i, k in enumerate(src) if k != 1], [j for j, k in enumerate(dst) if k != 1]
    runs: list[list[int]] = [[] for _ in dst]
    for gi, gj in reshape_groups([src[i] for i in bs], [dst[j] for j in bd]):
        if len(gj) != 1:
            return None
        runs[bd[gj[0]]] = [bs[i] for i in gi]
    owner = {i: r for r, run in enumerate(runs) for i in run}
    for i, k in enumerate(src):
        if k == 1:
            r = owner[i - 1] if i else (owner[bs[0]] if bs else 0 if dst else None)
            if r is None:
                return None
            runs[r].append(i)
            owner[i] = r
    return tuple(tuple(sorted(r)) for r in runs)


def _sizes(f: Form, d: int) -> tuple:
    return tuple(f.node.shape[i] for i in f.runs[d])


def _renumber(lengths) -> Runs:
    """Consecutive runs of the given lengths."""
    out, at = [], 0
    for k in lengths:
        out.append(tuple(range(at, at + k)))
        at += k
    return tuple(out)


def _free_in_order(f: Form, used) -> bool:
    """The dims of f.node that f's free dims (those not in `used`) stand for come in order, so
    that the dot's result merges to the captured one."""
    dims = [i for d in range(len(f.runs)) if d not in used for i in f.runs[d]]
    return dims == sorted(dims)


def _big(f: Form, d: int) -> int:
    """How many dims of size > 1 f's dim d merges."""
    return sum(f.node.shape[i] != 1 for i in f.runs[d])


def _leading(f: Form, batch) -> bool:
    """The batch dims stay the leading dims, in order (as every emitter's batched matmul reads them)."""
    dims = [i for d in batch for i in f.runs[d]]
    return dims == list(range(len(dims)))


def _result_shape(fa: Form, fb: Form, used_a, used_b, lb) -> tuple:
    """The shape of the dot of fa's and fb's nodes (batch, lhs free, rhs free)."""
    free = lambda f, used: [f.node.shape[i] for d in range(len(f.runs)) if d not in used for i in f.runs[d]]  # noqa: E731
    return tuple([fa.node.shape[i] for d in lb for i in fa.runs[d]] + free(fa, used_a) + free(fb, used_b))


def _useful(fa: Form, fb: Form, used_a, used_b, n: Node, viewed) -> bool:
    """Is the dot of these forms worth making: its result has the captured shape, or it splits
    a batch or contracted dim (two real dims where the capture merged them), or a reader views
    the captured result in dims that the new result merges to? (A form that only brings back a
    size-1 dim no reader wants would put a reshape between the dot and its reader.)"""
    shape = _result_shape(fa, fb, used_a, used_b, n.attrs.get("lhs_batch", ()))
    return (shape == n.shape or any(_big(fa, d) > 1 for d in used_a) or any(_big(fb, d) > 1 for d in used_b)
            or any(merge_runs(v, shape) is not None for v in viewed))


class _Unmerge:
    def __init__(self, g: Graph):
        self.g = g
        self.b = GraphBuilder(g.name, g.mesh_axes)
        self.nodes: list[Node] = []              # the new graph's nodes, in order
        self.new: dict[Node, Node] = {}          # a captured value → the same value in the new graph
        self.forms: dict[Node, list[Form]] = {}  # a captured value → its unmerged forms, shallowest first
        self.transposes: set[Node] = set()       # the transposes of unmerged forms it made
        self.results: set[Node] = set()          # unmerged forms of dot results (and of values made from them)
        self.users = g.users()
        self.changed = False
        # each new node's place: that of the captured value it is made for (made lazily, a value
        # would otherwise land where its first reader is, and a layer of a repeated block would
        # be ordered unlike the same layer of the whole program: their timelines would differ)
        self.pos = {n: i for i, n in enumerate(g.nodes)}
        self.here = 0
        self.home: dict[Node, int] = {}

    # ---- building ----------------------------------------------------------------------
    def emit(self, op: Op, inputs, like: Node, name: str | None = None, **attrs) -> Node:
        with self.b.loc(like.source):
            n = self.b.add(op, inputs, name=name, **attrs)
        self.nodes.append(n)
        self.home[n] = self.here
        return n

    def transposed(self, x: Node, perm: list, like: Node) -> Node:
        """x transposed by perm, a transpose of a transpose composed (of none: x)."""
        if x.op is Op.TRANSPOSE:
            x, perm = x.inputs[0], [x.attrs["perm"][p] for p in perm]
        if perm == sorted(perm):
            return x
        t = self.emit(Op.TRANSPOSE, [x], like, perm=perm)
        self.transposes.add(t)
        return t

    def value(self, n: Node) -> Node:
        """n in its captured shape (made once): a view is a reshape of the deepest value it
        views, a transpose or broadcast is redone on its operand's value, any other value with
        an unmerged form is a reshape of that form."""
        if n not in self.new:
            outer, self.here = self.here, self.pos.get(n, self.here)
            self._make_value(n)
            self.here = outer
        return self.new[n]

    def _make_value(self, n: Node):
        if is_view(n):
            src = self.same_elements(n.inputs[0])
            self.new[n] = next((v for v in src if v.shape == n.shape), None) or \
                self.emit(Op.RESHAPE, [src[-1]], n, n.name, shape=list(n.shape))
        elif n.op in (Op.TRANSPOSE, Op.BROADCAST) or n not in self.forms:
            self.new[n] = self.copy(n)
        else:
            self.new[n] = self.emit(Op.RESHAPE, [self.forms[n][0].node], n, shape=list(n.shape))

    def copy(self, n: Node) -> Node:
        inputs = tuple(self.value(i) for i in n.inputs)
        out = n if all(a is b for a, b in zip(inputs, n.inputs)) else n.with_inputs(inputs)
        self.nodes.append(out)
        self.home.setdefault(out, self.here)
        return out

    def same_elements(self, x: Node) -> list[Node]:
        """New values holding x's elements in x's order, shallowest first: x's value, what a
        view x views, x's unmerged forms."""
        out = [self.value(x)]
        if is_view(x):
            out += self.same_elements(x.inputs[0])
        out += [f.node for f in self.forms.get(x, [])]
        return list(dict.fromkeys(out))

    # ---- rules -------------------------------------------------------------------------
    def visit(self, n: Node):
        rule = (self.view if is_view(n) else self.transpose if n.op is Op.TRANSPOSE
                else self.broadcast if n.op is Op.BROADCAST
                else self.elementwise if n.op in ELEMENTWISE else self.reduce if n.op in REDUCE
                else self.dot if n.op is Op.DOT_GENERAL else self.gather if n.op is Op.GATHER else None)
        if rule is None or not rule(n):
            self.new[n] = self.copy(n)
            if n.op is Op.DOT_GENERAL:   # (a view that merges its result: torch's reshape(-1, V) of the logits)
                self.results.add(self.new[n])

    def result_forms(self, x: Node) -> list[Form]:
        """x's unmerged forms that come from a dot's result: elementwise ops, reductions and
        broadcasts follow those (a view elsewhere, such as a keepdims squeeze, stays as captured)."""
        return [f for f in self.forms.get(x, []) if f.node in self.results]

    def viewed_as(self, n: Node) -> list[tuple]:
        """The shapes readers view n as, directly or through same-shape elementwise ops (torch's
        view of a 2-D mm's [b·s, n] result as [b, s, n])."""
        seen, stack, out = set(), [n], []
        while stack:
            for u in self.users.get(stack.pop(), []):
                if u in seen:
                    continue
                seen.add(u)
                if is_view(u):
                    out.append(u.shape)
                elif u.op in ELEMENTWISE and u.shape == n.shape:
                    stack.append(u)
        return out

    def view(self, n: Node) -> bool:
        """A view's unmerged forms: the values with its elements whose dims it merges. A view
        of a view is one reshape of the deepest (a view back to a form's dims: that form)."""
        src = self.same_elements(n.inputs[0])
        same = any(v.shape == n.shape for v in src)   # (value(n) is that value; a dot's result merged
        forms = [Form(v, r) for v in src if v.shape != n.shape and (not same or v in self.results)  # again,
                 and (r := merge_runs(v.shape, n.shape)) is not None]    # as reshape(-1, V) of logits: its form)
        if forms:
            self.forms[n] = forms
        return True

    def transpose(self, n: Node) -> bool:
        x, perm = n.inputs[0], n.attrs["perm"]
        if x not in self.forms:
            return False
        self.forms[n] = [Form(self.transposed(f.node, [d for p in perm for d in f.runs[p]], n),
                              _renumber(len(f.runs[p]) for p in perm)) for f in self.forms[x]]
        self.results.update(f.node for f, g in zip(self.forms[n], self.forms[x]) if g.node in self.results)
        return True

    def broadcast(self, n: Node) -> bool:
        x, dims = n.inputs[0], n.attrs["dims"]
        for f in self.result_forms(x):
            if all(x.shape[d] == n.shape[o] or len(f.runs[d]) <= 1 for d, o in enumerate(dims)):
                lengths = [1] * n.rank
                for d, o in enumerate(dims):
                    lengths[o] = len(f.runs[d])
                runs = _renumber(lengths)
                shape = [0] * sum(lengths)
                for o in range(n.rank):
                    d = dims.index(o) if o in dims else None
                    for k, i in enumerate(runs[o]):
                        shape[i] = n.shape[o] if d is None or x.shape[d] != n.shape[o] else f.node.shape[f.runs[d][k]]
                wide = self.emit(Op.BROADCAST, [f.node], n, shape=shape, dims=[i for d, o in enumerate(dims) for i in runs[o]])
                self.forms[n] = [Form(wide, runs)]
                self.results.add(wide)
                return True
        return False

    def elementwise(self, n: Node) -> bool:
        for shape, runs in [(f.node.shape, f.runs) for x in n.inputs for f in self.result_forms(x)]:
            wide = [self.widen(x, shape, runs) for x in n.inputs]
            if all(w is not None for w in wide):
                self.forms[n] = [Form(self.emit(n.op, wide, n, n.name, **n.attrs), runs)]
                self.results.add(self.forms[n][0].node)
                return True
        return False

    def widen(self, x: Node, shape: tuple, runs: Runs) -> Node | None:
        """x as a value of the unmerged `shape` (x's dim i is the merge of its dims runs[i]),
        where that costs nothing: an unmerged form of x, a broadcast or a scalar constant."""
        for f in self.forms.get(x, []):
            if f.node.shape == shape and f.runs == runs:
                return f.node
        if x.op is Op.CONSTANT and not hasattr(x.attrs["value"], "shape"):
            return self.emit(Op.CONSTANT, [], x, out_shape=shape, out_dtype=x.dtype, value=x.attrs["value"])
        if x.op is not Op.BROADCAST:   # a value of the captured shape: a view of it (F.cross_entropy's
            return self.emit(Op.RESHAPE, [self.value(x)], x, shape=list(shape))  # one-hot targets, [b·s, V])
        src, dims = x.inputs[0], x.attrs["dims"]
        split = [(1,) * len(runs[o]) if src.shape[d] == 1 else tuple(shape[i] for i in runs[o])
                 for d, o in enumerate(dims)]
        s = next((f.node for f in self.forms.get(src, [])
                  if all(_sizes(f, d) == split[d] for d in range(src.rank))), None)
        if s is None:
            s = self.value(src)
            flat = [k for sp in split for k in sp]
            if list(s.shape) != flat:
                s = self.emit(Op.RESHAPE, [s], x, shape=flat)
        return self.emit(Op.BROADCAST, [s], x, shape=list(shape), dims=[i for o in dims for i in runs[o]])

    def gather(self, n: Node) -> bool:
        """A take along the last dim, every other dim a batch dim (F.cross_entropy's pick of the
        target's log-probability from [b·s, V] rows): taken from the unmerged rows."""
        x, idx = n.inputs
        last, batch = x.rank - 1, n.attrs.get("batch_dims", 0)
        forms = [f for f in self.result_forms(x) if len(f.runs[last]) == 1]
        if n.attrs["axis"] != last or batch != last or idx.rank != x.rank or not forms:
            return False
        f = forms[0]
        rows = list(f.node.shape[:-1])
        i = self.emit(Op.RESHAPE, [self.value(idx)], idx, shape=rows + [idx.shape[-1]])
        out = self.emit(Op.GATHER, [f.node, i], n, n.name, axis=len(rows), batch_dims=len(rows))
        self.forms[n] = [Form(out, f.runs[:-1] + ((len(rows),),))]
        self.results.add(out)
        return True

    def reduce(self, n: Node) -> bool:
        x = n.inputs[0]
        forms = self.result_forms(x) or [f for f in self.forms.get(x, []) if any(_big(f, a) > 1 for a in n.attrs["axes"])]
        if not forms:      # (a sum over merged rows: a bias gradient of torch's [b·s, n] view)
            return False
        f = forms[0]
        axes = sorted(i for a in n.attrs["axes"] for i in f.runs[a])
        r = self.emit(n.op, [f.node], n, n.name, axes=axes) if axes else f.node
        kept = [len(f.runs[d]) for d in range(x.rank) if d not in n.attrs["axes"]]
        if r.shape == n.shape:
            self.new[n] = r
        else:
            self.forms[n] = [Form(r, _renumber(kept))]
            self.results.add(r)
        return True

    def dot(self, n: Node) -> bool:
        """The dot of unmerged forms of its operands, where their batch and contraction dims
        split alike: the most batch and contraction dims, then the shallowest forms (a free dim
        split further than its readers need would only be merged again)."""
        a, b = n.inputs
        lb, rb = list(n.attrs.get("lhs_batch", ())), list(n.attrs.get("rhs_batch", ()))
        lc, rc = list(n.attrs["lhs_contract"]), list(n.attrs["rhs_contract"])
        best, score = None, None
        ca, cb = self.operand_forms(a), self.operand_forms(b)
        viewed = self.viewed_as(n)
        for i, fa in enumerate(ca):
            for j, fb in enumerate(cb):
                if all(_sizes(fa, l) == _sizes(fb, r) for l, r in zip(lb + lc, rb + rc)) and \
                        _leading(fa, lb) and _leading(fb, rb) and _useful(fa, fb, lb + lc, rb + rc, n, viewed):
                    s = (sum(len(fa.runs[d]) for d in lb + lc), -i - j)
                    if (score is None or s > score) and _free_in_order(fa, lb + lc) and _free_in_order(fb, rb + rc):
                        best, score = (fa, fb), s
        if best is None or best == (ca[-1], cb[-1]):
            return False
        fa, fb = (Form(self.value(x), f.runs) if f.node is x else f for f, x in zip(best, (a, b)))
        flat = lambda f, dims: [i for d in dims for i in f.runs[d]]  # noqa: E731
        out = self.emit(Op.DOT_GENERAL, [fa.node, fb.node], n, n.name,
                        lhs_batch=flat(fa, lb), rhs_batch=flat(fb, rb),
                        lhs_contract=flat(fa, lc), rhs_contract=flat(fb, rc))
        free = lambda f, x, used: [len(f.runs[d]) for d in range(x.rank) if d not in used]  # noqa: E731
        lengths = [len(fa.runs[d]) for d in lb] + free(fa, a, set(lb + lc)) + free(fb, b, set(rb + rc))
        if out.shape == n.shape:
            self.new[n] = out
        else:
            self.forms[n] = [Form(out, _renumber(lengths))]
        self.results.add(out)
        self.changed = True
        return True

    def operand_forms(self, x: Node) -> list[Form]:
        """x's unmerged forms, a transpose this pass made read through (the dot takes its
        dims in any order, as a weight gradient contracts the rows of dY and of X), then x."""
        out = []
        for f in self.forms.get(x, []):
            if f.node in self.transposes:
                perm = f.node.attrs["perm"]
                out.append(Form(f.node.inputs[0], tuple(tuple(perm[i] for i in r) for r in f.runs)))
            out.append(f)
        if x.op is Op.TRANSPOSE and x not in self.forms and not is_view(x) and x.inputs[0].op is not Op.PARAMETER:
            perm = x.attrs["perm"]
            out.append(Form(self.value(x.inputs[0]), tuple((p,) for p in perm)))
        return out + [Form(x, _renumber([1] * x.rank))]

    # ---- the pass ----------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.g
        for self.here, n in enumerate(g.nodes):
            if n.op is Op.PARAMETER:
                self.new[n] = n
                self.nodes.append(n)
            else:
                self.visit(n)
        if not self.changed:
            return g, {}
        outputs = [self.value(o) for o in g.outputs]
        live = ancestors(outputs) | set(g.inputs)
        seen, nodes = set(), []
        for n in sorted(self.nodes, key=lambda n: self.home.get(n, self.pos.get(n, 0))):  # stable
            if n in live and n not in seen:
                seen.add(n)
                nodes.append(n)
        placed = set(g.inputs)
        for n in nodes:   # (made for a value, a node comes after what it reads: checked, not assumed)
            if not all(i in placed for i in n.inputs):
                raise AssertionError(f"unmerge: {n.op.name} placed before its operands")
            placed.add(n)
        out = Graph(nodes, list(g.inputs), outputs, g.output_names, g.name, g.mesh_axes, g.bound, g.flatten_args)
        for attr, v in vars(g).items():
            if attr not in vars(out):
                setattr(out, attr, v)
        return out, self.new


def unmerge(g: Graph) -> tuple[Graph, dict[Node, Node]]:
    """g with the dims that views merged around its dots restored (the module docstring), and
    each old value that the new graph holds in its shape → that new value (collectives among
    them: they are copied)."""
    return _Unmerge(g).run()
