"""Loops narrowed to the blocks a support reaches (codegen/masked_blocks.py computes supports).

- Triton: `loop_bounds` gives `Bounds`, a loop's start and end as text (a scalar expression of the
  program's ids and block sizes: `range(start, end, BK)`, start aligned down to the block) and, on
  the host, the trips it makes at a launch config (`trips`, `fraction`: the dot FLOPs count);
- Pallas: `grid_skip` gives a grid step's `pl.when` test (`block_test`: each constraint checked at
  its largest over the step's block), the share of steps that run (`block_fraction`), and the
  index map of the reduction axis clamped to the blocks that run, so a skipped step fetches the
  block its neighbour reads (no DMA)."""
from __future__ import annotations

from dataclasses import dataclass

_FN = {"tl": {"minimum": "tl.minimum", "maximum": "tl.maximum", "div": "({} // {})"},
       "lax": {"minimum": "lax.min", "maximum": "lax.max", "div": "lax.div({}, {})"}}  # (non-negative)


@dataclass(frozen=True)
class Range:
    """A tile variable's values in one program (or one trip of an outer loop): `start` (text of a
    scalar) + [0, block), below `extent`; `count` programs (trips) with start = i·block."""
    start: str
    block: str      # a constexpr name ("BM") or an integer literal
    extent: int

    def lo(self) -> str:
        return self.start

    def hi(self, ns: str = "tl") -> str:
        return f"({_FN[ns]['minimum']}({self.start} + {self.block}, {self.extent}) - 1)"


@dataclass
class Bounds:
    """The blocks of a loop over `var` (extent, block) that a support reaches, from the tile's
    ranges: start at lo (aligned down to the block), stop after hi. `lo`/`hi`: lists of
    (alternatives of) affine terms, each [(coeff, var, 'lo'|'hi')...], const; None: unbounded."""
    var: str
    extent: int
    block: str
    ranges: dict
    lo: list | None     # min over conjunctions of max over constraints
    hi: list | None     # max over conjunctions of min over constraints
    ns: str = "tl"      # the text's min/max/div (Triton: tl; a Pallas index map: lax, which
                        # lowers without a TPU: jnp's floor division asks the TPU's generation)

    # --------------------------------------------------------------------------- text
    def _term(self, t) -> str:
        parts = [str(t[1])] if t[1] else []
        for c, v, end in t[0]:
            r = self.ranges[v]
            s = r.lo() if end == "lo" else r.hi(self.ns)
            parts.append(s if c == 1 else f"{c} * {s}")
        return " + ".join(parts) if parts else "0"

    def _fold(self, fn: str, texts: list[str]) -> str:
        out = texts[0]
        for t in texts[1:]:
            out = f"{_FN[self.ns][fn]}({out}, {t})"
        return out

    def start_text(self) -> str:
        if self.lo is None:
            return "0"
        lo = self._fold("minimum", [self._fold("maximum", [self._term(t) for t in conj]) for conj in self.lo])
        fn = _FN[self.ns]
        start = fn["div"].format(f"{fn['maximum']}({lo}, 0)", self.block)
        return f"({start} * {self.block})"

    def end_text(self) -> str:
        if self.hi is None:
            return str(self.extent)
        hi = self._fold("maximum", [self._fold("minimum", [self._term(t) for t in conj]) for conj in self.hi])
        return f"{_FN[self.ns]['minimum']}({hi} + 1, {self.extent})"

    # --------------------------------------------------------------------------- host
    def _value(self, t, env) -> int:
        return t[1] + sum(c * env[v][0 if end == "lo" else 1] for c, v, end in t[0])

    def trips(self, cfg: dict) -> tuple[int, int]:
        """(trips the narrowed loop makes, trips the full loop makes), summed over every
        combination of the tile variables' blocks (programs, outer trips) at launch config cfg."""
        blk = lambda b: int(b) if str(b).isdigit() else int(cfg[b])
        B = blk(self.block)
        full = -(-self.extent // B)
        vars_ = sorted({v for side in (self.lo or []) + (self.hi or []) for t in side for _, v, _ in t[0]})
        combos = [{}]
        for v in vars_:
            r = self.ranges[v]
            b = blk(r.block)
            combos = [{**e, v: (i, min(i + b, r.extent) - 1)} for e in combos for i in range(0, r.extent, b)]
        done = 0
        for env in combos:
            lo = 0 if self.lo is None else min(max(self._value(t, env) for t in conj) for conj in self.lo)
            hi = self.extent - 1 if self.hi is None else max(min(self._value(t, env) for t in conj) for conj in self.hi)
            start = (max(lo, 0) // B) * B
            end = min(hi + 1, self.extent)
            done += max(0, -(-(end - start) // B))
        return done, full * len(combos)

    def fraction(self, cfg: dict) -> float:
        done, full = self.trips(cfg)
        return done / full if full else 1.0


def loop_bounds(sup, var: str, extent: int, block: str, ranges: dict) -> Bounds | None:
    """Narrow a loop over `var` (0 ≤ var < extent, `block` at a time) to the blocks where `sup`
    (over tile variables) can hold for some value of the tile's variables in `ranges`. Constraints
    with other variables, or with a coefficient of var other than ±1, are dropped (an over-
    approximation: the loop only visits more blocks). None: nothing to narrow."""
    if not sup:
        return None if sup is None else Bounds(var, extent, block, ranges, [[((), extent)]], [[((), -1)]])
    lo_alts, hi_alts = [], []
    for conj in sup:
        los, his = [], []
        for co, k in conj:
            a = co.get(var, 0)
            if abs(a) != 1 or any(v != var and v not in ranges for v in co):
                continue
            # a·var + Σ c·v + k >= 0 for some v in its range: Σ c·v at its largest
            terms = tuple((c, v, "hi" if c > 0 else "lo") for v, c in co.items() if v != var)
            if a == 1:   # var >= -(k + Σ)
                los.append((tuple((-c, v, e) for c, v, e in terms), -k))
            else:        # var <= k + Σ
                his.append((terms, k))
        lo_alts.append(los)
        hi_alts.append(his)
    lo = None if any(not l for l in lo_alts) else lo_alts
    hi = None if any(not h for h in hi_alts) else hi_alts
    if lo is None and hi is None:
        return None
    return Bounds(var, extent, block, ranges, lo, hi)


# ------------------------------------------------------------------------------ Pallas blocks
def block_test(sup, box: dict) -> str | None:
    """Text of a jnp bool scalar: whether `sup` (over variables) can hold in the box
    {var: (lo text, hi text)} (each constraint checked at its largest over the box; a union of
    conjunctions). None: it holds everywhere (no test)."""
    if sup is None:
        return None
    if not sup:
        return "False"
    alts = []
    for conj in sup:
        tests = []
        for co, k in conj:
            if any(v not in box for v in co):
                continue
            terms = [str(k)] + [f"{c} * {box[v][1] if c > 0 else box[v][0]}" for v, c in co.items()]
            tests.append(f"({' + '.join(terms)} >= 0)")
        if not tests:
            return None
        alts.append("(" + " & ".join(tests) + ")")
    return " | ".join(alts)


def block_fraction(sup, boxes: dict) -> float:
    """Fraction of the grid steps where `block_test` holds: boxes {var: [(lo, hi) per block]} (the
    blocks each variable takes over the grid; variables vary independently)."""
    if sup is None:
        return 1.0
    vars_ = sorted(boxes, key=repr)
    combos = [{}]
    for v in vars_:
        combos = [{**e, v: b} for e in combos for b in boxes[v]]
    hit = 0
    for env in combos:
        for conj in sup:
            ok = True
            for co, k in conj:
                if any(v not in env for v in co):
                    continue
                if k + sum(c * env[v][1 if c > 0 else 0] for v, c in co.items()) < 0:
                    ok = False
                    break
            if ok:
                hit += 1
                break
    return hit / len(combos)


@dataclass(frozen=True)
class Fraction:
    """A Pallas reduction step's share of grid steps that run (its grid is fixed at emission):
    the same interface as Bounds for the dot FLOPs count."""
    value: float

    def fraction(self, cfg: dict) -> float:
        return self.value


def on_grid(sup, n, tiles: dict):
    """Support `sup` over node n's dims → over a Pallas grid: a tiled dim ((n, d) in tiles, →
    (axis, block)) is its axis's variable `g{axis}`, a whole dim a variable of its own."""
    from .masked_blocks import rename
    return rename(sup, {d: ({f"g{tiles[(n, d)][0]}" if (n, d) in tiles else ("whole", n, d): 1}, 0)
                        for d in range(n.rank)})


def grid_skip(sup, grid: list, axes: list[int]):
    """(the `pl.when` text of a reduction step over `axes` of `grid` [(size, block, semantics)]
    that runs only where `sup` (over `on_grid` variables) reaches its block, or None; the Fraction
    of steps that run; {axis: its inputs' clamped block index text})."""
    box, blocks = {}, {}
    for a, (size, blk, _) in enumerate(grid):
        box[f"g{a}"] = (f"pl.program_id({a}) * {blk}", f"(pl.program_id({a}) * {blk} + {blk - 1})")
        blocks[f"g{a}"] = [(i, i + blk - 1) for i in range(0, size, blk)]
    for v in {v for conj in sup or () for co, _ in conj for v in co if isinstance(v, tuple)}:
        _, n, d = v
        box[v], blocks[v] = ("0", str(n.shape[d] - 1)), [(0, n.shape[d] - 1)]
    test, frac = block_test(sup, box), block_fraction(sup, blocks)
    if test is None or frac == 1.0:  # every step runs: no test
        return None, Fraction(1.0), {}
    ranges = {f"g{a}": Range(f"g{a} * {blk}", str(blk), size) for a, (size, blk, _) in enumerate(grid)}
    clamp = {}
    for a in axes:
        size, blk, _ = grid[a]
        bounds = loop_bounds(sup, f"g{a}", size, str(blk), {v: r for v, r in ranges.items() if v != f"g{a}"})
        if bounds is not None:
            bounds.ns = "lax"
            lo, hi = f"lax.div({bounds.start_text()}, {blk})", f"lax.div({bounds.end_text()} - 1, {blk})"
            clamp[a] = f"lax.min(lax.max(g{a}, {lo}), lax.max({hi}, {lo}))"
    return test, Fraction(frac), clamp
