"""Causal blocks skipped: where a loop over a reduced axis may start and stop.

A kernel that sums (or maxes) over an axis in blocks (a matmul's K loop, a row reduction's loop
over the row, a rebuilt dot's contraction, flash attention's loop over keys, a Pallas reduction
grid axis) need not visit a block where every summand is the reduction's identity. The masks of
attention make such blocks: `where(q_idx >= k_idx, s, -1e9)` under `exp` is 0 above the diagonal,
and `where(mask, ds, 0)` is 0 there too. This module reads that off the IR, as a *support*: a
region outside of which a value is the identity, written as affine constraints on the value's
index (Σ c·i + e >= 0, a union of intersections), from the iota predicates of its selects:
- `truth(p)`: where a bool is true (compares of affine functions of iotas, and/or/not, selects);
- `zero(x)`: outside it x == 0 (select with a 0 branch, products, quotients, sums, exp of low);
- `low(x)`: outside it x <= LOW (select with a fill of -1e9 or -inf, positive scales, offsets,
  a subtracted row statistic).
Layout ops (broadcast, transpose, slice, reshapes of unit dims) carry supports between indices.
Anything else is "everywhere": the loop is left as it is.

The kernels then map the support onto their tile variables (the program's rows `rm`, the loop's
`rka`: `on_tile`) and narrow the loop to the blocks the support can reach from the program's tile,
or, in Pallas, guard the grid step with the same test on its block (codegen/masked_loops.py).
Blocks keep their positions (the narrowed loop starts at a multiple of the block), so a partly
masked block is computed as before, with its mask, and the sums are bit for bit those of the full
loop: only blocks whose every summand is the identity (0 for a sum, at most LOW for a max) are
left out.

What a skipped block relies on: values are finite (0·inf would be NaN in the full loop), and a row's
largest unmasked score lies above the fill by more than f32 exp's range (104), so that exp(fill - max)
is 0: any row with an unmasked score above -1e9 + 104 for the zoo's -1e9 fill."""
from __future__ import annotations

import math

from ..ir import DType, Node, Op
from ..ir.ops import ELEMENTWISE
from ..ir.shapes import reshape_groups

LOW = -1e4          # a value this low, less a row statistic, is 0 under exp in f32 (exp(-104) underflows)
MAX_TERMS = 16      # conjunctions kept in a support (more: everywhere, which is always safe)

# A constraint: (coefficients {var: int}, constant) meaning Σ c·var + const >= 0. A support is None
# (everywhere) or a list of conjunctions (tuples of constraints): [] is nowhere.


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    out = [x + y for x in a for y in b]
    return None if len(out) > MAX_TERMS else _norm(out)


def _or(a, b):
    if a is None or b is None:
        return None
    out = a + b
    return None if len(out) > MAX_TERMS else _norm(out)


def _key(con) -> tuple:
    return tuple(sorted(con[0].items(), key=repr)), con[1]


def _norm(sup):
    """Duplicates dropped, and conjunctions another one contains (A∧B ∪ A is A)."""
    if sup is None or any(len(c) == 0 for c in sup):
        return None  # a conjunction with no constraint holds everywhere
    conjs = []
    for c in sup:
        keys = {}
        for con in c:
            keys.setdefault(_key(con), con)
        conjs.append(keys)
    out = []
    for i, c in enumerate(conjs):
        if any(set(o) <= set(c) and (set(o) != set(c) or j < i) for j, o in enumerate(conjs) if j != i):
            continue
        out.append(tuple(c.values()))
    return out


def _negate(sup):
    """Where `sup` does not hold (exact for integer constraints: not (e >= 0) is -e - 1 >= 0)."""
    if sup is None:
        return []
    out = None
    first = True
    for conj in sup:
        alt = [((({v: -c for v, c in co.items()}), -k - 1),) for co, k in conj]
        out = alt if first else _and(out, alt)
        first = False
        if out is None:
            return None
    return None if first else out  # (not nowhere: everywhere)


def _subst(sup, mapping: dict):
    """`sup` over an operand's dims → over the node's dims; mapping: dim → affine (coeffs, const) or
    None (unknown: constraints on it are dropped, which only enlarges the support)."""
    if sup is None:
        return None
    out = []
    for conj in sup:
        new = []
        for co, k in conj:
            acc, const, ok = {}, k, True
            for v, c in co.items():
                m = mapping.get(v)
                if m is None:
                    ok = False
                    break
                mc, mk = m
                const += c * mk
                for w, cw in mc.items():
                    acc[w] = acc.get(w, 0) + c * cw
            if ok:
                acc = {w: c for w, c in acc.items() if c}
                if not acc:
                    if const < 0:
                        new = None  # an infeasible constant constraint: this conjunction is empty
                        break
                    continue
                new.append((acc, const))
        if new is not None:
            out.append(tuple(new))
    return _norm(out)


# ------------------------------------------------------------------------- index mappings
def _operand_map(n: Node, i: int) -> dict | None:
    """Operand i's dims as affine functions of n's dims (layout ops and same-shape elementwise)."""
    x = n.inputs[i]
    if n.op in ELEMENTWISE:
        return {d: ({d: 1}, 0) for d in range(x.rank)} if x.shape == n.shape else None
    if n.op is Op.BROADCAST:
        return {j: ({d: 1}, 0) if x.shape[j] == n.shape[d] else ({}, 0) for j, d in enumerate(n.attrs["dims"])}
    if n.op is Op.TRANSPOSE:
        return {p: ({j: 1}, 0) for j, p in enumerate(n.attrs["perm"])}
    if n.op is Op.SLICE:
        a = n.attrs
        return {d: ({d: st}, s) for d, (s, st) in enumerate(zip(a["start"], a["stride"]))}
    if n.op is Op.RESHAPE:
        out = {}
        for gi, gj in reshape_groups(x.shape, n.shape):
            si = [d for d in gi if x.shape[d] != 1]
            sj = [d for d in gj if n.shape[d] != 1]
            for d in gi:
                if x.shape[d] == 1:
                    out[d] = ({}, 0)
            if len(si) == 1 and len(sj) == 1:
                out[si[0]] = ({sj[0]: 1}, 0)
        return out
    return None


def _through(n: Node, i: int, sup):
    m = _operand_map(n, i)
    return None if m is None else _subst(sup, m)


_LAYOUT = (Op.BROADCAST, Op.TRANSPOSE, Op.SLICE, Op.RESHAPE)


def _scalar(n: Node):
    """The value of a scalar (or splat) constant, else None."""
    while n.op in (Op.BROADCAST, Op.RESHAPE):
        n = n.inputs[0]
    if n.op is not Op.CONSTANT:
        return None
    v = n.attrs["value"]
    if getattr(v, "ndim", 0) != 0:
        return None
    return float(v) if n.dtype.is_float else int(v)


class Analysis:
    """Supports of the nodes of one graph (memoized per node)."""

    def __init__(self):
        self.memo: dict = {}

    def _cached(self, kind, n, fn):
        key = (kind, n)
        if key not in self.memo:
            self.memo[key] = None if kind != "low" else (None, math.inf)  # a cycle guard
            self.memo[key] = fn(n)
        return self.memo[key]

    # value of an integer index expression: an affine function of the node's dims, or None
    def affine(self, n: Node):
        return self._cached("aff", n, self._affine)

    def _affine(self, n: Node):
        op = n.op
        if op is Op.IOTA:
            return ({n.attrs["dimension"]: 1}, 0)
        c = _scalar(n)
        if c is not None:
            return ({}, int(c)) if float(c).is_integer() else None
        if op in _LAYOUT:
            m, a = _operand_map(n, 0), self.affine(n.inputs[0])
            if m is None or a is None:
                return None
            co, k = {}, a[1]
            for v, cv in a[0].items():
                if m.get(v) is None:
                    return None
                mc, mk = m[v]
                k += cv * mk
                for w, cw in mc.items():
                    co[w] = co.get(w, 0) + cv * cw
            return ({w: c for w, c in co.items() if c}, k)
        if op is Op.CAST:  # integer values: exact in any int or float type (below 2^24)
            return self.affine(n.inputs[0]) if n.dtype is not DType.bool else None
        if op in (Op.ADD, Op.SUB, Op.NEG):
            args = [self.affine(x) for x in n.inputs]
            if any(a is None for a in args):
                return None
            sign = [1, -1] if op is Op.SUB else [-1] if op is Op.NEG else [1, 1]
            co, k = {}, 0
            for s, (ac, ak) in zip(sign, args):
                k += s * ak
                for v, c in ac.items():
                    co[v] = co.get(v, 0) + s * c
            return ({v: c for v, c in co.items() if c}, k)
        if op is Op.MUL:
            a, b = (self.affine(x) for x in n.inputs)
            if a is None or b is None or (a[0] and b[0]):
                return None
            (co, k), s = (a, b[1]) if not b[0] else (b, a[1])
            return ({v: c * s for v, c in co.items() if c * s}, k * s)
        return None

    # where a bool is true
    def truth(self, n: Node):
        return self._cached("truth", n, self._truth)

    def _truth(self, n: Node):
        op = n.op
        c = _scalar(n)
        if c is not None:
            return None if c else []
        if op in (Op.GE, Op.GT, Op.LE, Op.LT, Op.EQ):
            a, b = (self.affine(x) for x in n.inputs)
            if a is None or b is None:
                return None
            diff = ({v: a[0].get(v, 0) - b[0].get(v, 0) for v in set(a[0]) | set(b[0])}, a[1] - b[1])
            diff = ({v: c for v, c in diff[0].items() if c}, diff[1])
            neg = ({v: -c for v, c in diff[0].items()}, -diff[1])
            cons = {Op.GE: [diff], Op.GT: [(diff[0], diff[1] - 1)], Op.LE: [neg],
                    Op.LT: [(neg[0], neg[1] - 1)], Op.EQ: [diff, neg]}[op]
            if any(not co for co, _ in cons):  # a constant compare
                return None if all(k >= 0 for _, k in cons) else []
            return [tuple(cons)]
        if op is Op.AND:
            return _and(self.truth(n.inputs[0]), self.truth(n.inputs[1]))
        if op is Op.OR:
            return _or(self.truth(n.inputs[0]), self.truth(n.inputs[1]))
        if op is Op.NOT:
            return self._negation(n.inputs[0])
        if op is Op.SELECT:
            p = n.inputs[0]
            return _or(_and(self.truth(p), self.truth(n.inputs[1])),
                       _and(self._negation(p), self.truth(n.inputs[2])))
        if op is Op.CAST and n.inputs[0].dtype == n.dtype:
            return self.truth(n.inputs[0])
        if op in _LAYOUT:
            return _through(n, 0, self.truth(n.inputs[0]))
        return None

    def _negation(self, p: Node):
        """Where bool p is false: exact supports only (a support is an over-approximation, and the
        negation of an over-approximation is not one)."""
        return self._cached("false", p, self._false)

    def _false(self, p: Node):
        op = p.op
        c = _scalar(p)
        if c is not None:
            return [] if c else None
        if op in (Op.GE, Op.GT, Op.LE, Op.LT, Op.EQ):
            t = self.truth(p)
            return None if t is None else _negate(t)
        if op is Op.NOT:
            return self.truth(p.inputs[0])
        if op is Op.AND:
            return _or(self._negation(p.inputs[0]), self._negation(p.inputs[1]))
        if op is Op.OR:
            return _and(self._negation(p.inputs[0]), self._negation(p.inputs[1]))
        if op is Op.SELECT:
            q = p.inputs[0]
            return _or(_and(self.truth(q), self._negation(p.inputs[1])),
                       _and(self._negation(q), self._negation(p.inputs[2])))
        if op is Op.CAST and p.inputs[0].dtype == p.dtype:
            return self._negation(p.inputs[0])
        if op in _LAYOUT:
            return _through(p, 0, self._negation(p.inputs[0]))
        return None

    # outside zero(n): n == 0
    def zero(self, n: Node):
        return self._cached("zero", n, self._zero)

    def _zero(self, n: Node):
        op = n.op
        c = _scalar(n)
        if c is not None:
            return [] if c == 0 else None
        if op is Op.SELECT:
            p, x, y = n.inputs
            zx, zy = self.zero(x), self.zero(y)
            first = _and(self.truth(p), zx)
            second = [] if zy == [] else _and(self._negation(p), zy)
            return _or(first, second)
        if op is Op.MUL:
            return _and(self.zero(n.inputs[0]), self.zero(n.inputs[1]))
        if op is Op.DIV:
            return self.zero(n.inputs[0])
        if op in (Op.ADD, Op.SUB):
            return _or(self.zero(n.inputs[0]), self.zero(n.inputs[1]))
        if op is Op.NEG or (op is Op.CAST and n.dtype.is_float and n.inputs[0].dtype.is_float):
            return self.zero(n.inputs[0])
        if op is Op.EXP:
            sup, bound = self.low(n.inputs[0])
            return sup if bound <= LOW else None
        if op in _LAYOUT:
            return _through(n, 0, self.zero(n.inputs[0]))
        return None

    # outside low(n)[0]: n <= low(n)[1]
    def low(self, n: Node):
        return self._cached("low", n, self._low)

    def _low(self, n: Node):
        op = n.op
        c = _scalar(n)
        if c is not None:
            return ([], float(c)) if n.dtype.is_float else (None, math.inf)
        if op is Op.SELECT:
            p, x, y = n.inputs
            (sx, bx), (sy, by) = self.low(x), self.low(y)
            parts, bound = [], -math.inf
            for sup, b, cond in ((sx, bx, self.truth(p)), (sy, by, self._negation(p))):
                if sup is None:
                    parts.append(cond)
                else:
                    parts.append(_and(cond, sup))
                    bound = max(bound, b)
            sup = _or(parts[0], parts[1])
            return (sup, bound) if sup is not None else (None, math.inf)
        if op is Op.MUL:
            for i in (0, 1):
                k = _scalar(n.inputs[1 - i])
                if k is not None and k > 0:
                    sup, b = self.low(n.inputs[i])
                    return sup, b * k
            return None, math.inf
        if op in (Op.ADD, Op.SUB):
            k = _scalar(n.inputs[1])
            if k is None and op is Op.ADD:
                k0 = _scalar(n.inputs[0])
                if k0 is not None:
                    sup, b = self.low(n.inputs[1])
                    return sup, b + k0
            sup, b = self.low(n.inputs[0])
            if k is not None:
                return sup, b + (k if op is Op.ADD else -k)
            if op is Op.SUB:  # x - a row statistic: low where x is (the module's assumption)
                return sup, b
            return None, math.inf
        if op is Op.CAST and n.dtype.is_float and n.inputs[0].dtype.is_float:
            return self.low(n.inputs[0])
        if op in _LAYOUT:
            sup, b = self.low(n.inputs[0])
            return _through(n, 0, sup), b
        return None, math.inf


def reduce_support(an: Analysis, op: Op, x: Node):
    """Where the summands x of a reduction `op` over x are not its identity (None: anywhere)."""
    if op is Op.REDUCE_SUM:
        return an.zero(x)
    if op is Op.REDUCE_MAX:
        sup, bound = an.low(x)
        return sup if bound <= LOW else None
    return None


def rename(sup, mapping: dict):
    """`sup` over dims → over other variables: mapping dim → (coeffs, const)."""
    return _subst(sup, mapping)


def union(a, b):
    """Where either support holds."""
    return _or(a, b)


def dot_support(lhs_sup, rhs_sup):
    """A dot's summands a·b are zero where either operand is."""
    return _and(lhs_sup, rhs_sup)


def on_tile(sup, idx, names: dict):
    """`sup` over a value's dims → over a kernel's tile variables: dim d is at index `idx[d]`
    (an object with .text), whose text `names` maps to a variable (a loop variable or a tile axis)
    or which is an integer literal; other index expressions are unknown (constraints dropped)."""
    mapping = {}
    for d, ix in enumerate(idx):
        t = getattr(ix, "text", str(ix))
        if t in names:
            mapping[d] = ({names[t]: 1}, 0)
        elif t.lstrip("-").isdigit():
            mapping[d] = ({}, int(t))
    return _subst(sup, mapping)
