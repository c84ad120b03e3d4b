"""Horizontal fusion: independent row kernels run as one multi-tensor launch, as apex's
multi_tensor_apply and torch's fused _foreach optimizers do. What it catches is the optimizer
update of every parameter whose update no matmul epilogue computes (biases, norm weights,
embeddings: one body each, Adam's m, v and the parameter together), but the rule is general.

`horizontal` works on the planned steps in launch order. A row kernel (pointwise or reduction)
may run anywhere from its own place up to just before the first step that reads what it writes;
kernels whose ranges share a place become one kernel at the place of the latest of them (interval
stabbing, greedy from the end of the program: fewest launches, and every update that nothing
reads afterwards in the last one). So a member only ever moves later, past steps
that neither read its results nor are read by it, and members never depend on each other. A
kernel whose result a collective reads keeps its place (the scheduler started that collective
there). The targets bound a launch's size (`footprint`: buffers, and Pallas' VMEM blocks).

The kernel: one grid over the members' programs laid end to end (a static chain of program-id
ranges); each range runs its member's own body at the grid place its offset gives (Triton: the
row tile of kernels/rows.py called as a function; Pallas: the ROWS body under `pl.when`, its
BlockSpecs' index maps held at the member's first or last block outside its range, so no block
is fetched or written back twice)."""
from __future__ import annotations

import math

from ..ir import Node, Op
from .fusion import FusionGroup
from .plan_order import topological

ROW_KINDS = ("pointwise", "reduction")
MAX_BUFFERS = 256   # pointer arguments per launch (CUDA's 4 KiB of kernel parameters hold 512)


def horizontal(planned: list[tuple], footprint) -> list[tuple]:
    """[(step, share)] with independent row kernels grouped into multi-tensor launches.
    `footprint(group) -> (buffers, VMEM bytes, VMEM budget)`: what a member adds to a launch
    (Triton: its pointer arguments, no VMEM)."""
    share = {id(s): t for s, t in planned}
    steps = topological([s for s, _ in planned])
    planned = [(s, share[id(s)]) for s in steps]
    first_read: dict[Node, int] = {}
    for j, s in enumerate(steps):
        for x in s.reads:
            first_read.setdefault(x, j)
    to_collective = {x for s in steps if s.step == "collective" for x in s.reads}
    spans = []  # (its place, the last place it may run)
    for i, s in enumerate(steps):
        if isinstance(s, FusionGroup) and s.kind in ROW_KINDS and not to_collective & set(s.writes):
            spans.append((i, min(first_read.get(w, len(steps)) for w in s.writes) - 1))
    groups: list[tuple[int, list[int], list]] = []  # (its place, its members, buffers and VMEM used)
    for i, end in sorted(spans, reverse=True):  # latest place first; each joins the latest group it can
        cost = footprint(steps[i])
        if not _fits([0, 0], cost):  # (a Pallas row kernel that must add its rows up over its grid)
            continue
        grp = next((g for g in groups if g[0] <= end and _fits(g[2], cost)), None)
        if grp is None:
            groups.append(grp := (i, [], [0, 0]))
        grp[1].append(i)
        grp[2][:] = [grp[2][0] + cost[0], grp[2][1] + cost[1]]
    at: dict[int, list[int]] = {p: sorted(g) for p, g, _ in groups if len(g) > 1}
    moved = {i for g in at.values() for i in g}
    out = []
    for i, st in enumerate(planned):
        if i in at:
            out.append((multi_group([steps[k] for k in at[i]]), None))
        elif i not in moved:
            out.append(st)
    return out


def _fits(used: list, cost: tuple) -> bool:
    return used[0] + cost[0] <= MAX_BUFFERS and used[1] + cost[1] <= cost[2]


def multi_group(members: list[FusionGroup]) -> FusionGroup:
    """One launch of `members` (independent row groups, in launch order)."""
    order = {}
    for m in members:
        for n in m.nodes:
            order.setdefault(n, len(order))
    nodes = list(order)
    ins = list(dict.fromkeys(x for m in members for x in m.inputs))
    roots = [r for m in members for r in m.roots]
    why = (f"{len(members)} independent row kernels in one launch (multi-tensor): "
           + "; ".join(m.reason.split(";")[0] for m in members[:4]) + ("; ..." if len(members) > 4 else ""))
    return FusionGroup("multi", roots, nodes, ins, why, None, {"members": list(members)})


# ------------------------------------------------------------------------------------ Triton
_TRITON_KERNEL = '''

@triton.jit
def {name}({params}{constexprs}):
    pid = tl.program_id(0)
{dispatch}


def launch(args, cfg):
{init}    programs = {programs}
    {name}[(programs,)](*args, {kwargs}, num_warps=cfg.get("num_warps", 4))
'''


def emit_triton(grp: FusionGroup, name: str):
    from ..kernels import rows as rows_t
    from . import autotune
    from .emitted import EmittedKernel
    from .triton import PRELUDE, PTR_TYPE, row_tile
    members = grp.pattern["members"]
    ins = {x: f"in{i}" for i, x in enumerate(grp.inputs)}
    outs = {r: f"out{i}" for i, r in enumerate(grp.roots)}
    axes = sorted({n.attrs["axis"] for n in grp.nodes if n.op is Op.AXIS_INDEX})
    tiles = [row_tile(m, f"{name}_m{k}") for k, m in enumerate(members)]
    funcs: dict[str, str] = {}  # a member's text (name left out) → its function: identical members share one
    dispatch, counts, zeroed = [], [], []
    for k, (m, t) in enumerate(zip(members, tiles)):
        text = rows_t.MEMBER.format(name=t.c.name, params=t.c.params) + t.tile
        fn = funcs.setdefault(text.replace(t.c.name, "__member__"), t.c.name)
        gm, gn = f"(({t.rows} + BM{k} - 1) // BM{k})", "1" if t.looped else f"(({t.cols} + BN{k} - 1) // BN{k})"
        start = f"e{k - 1}" if k else "0"
        args = [ins[x] for x in m.inputs] + [outs[r] for r in m.roots] + [f"axis_{a}" for a in t.c.axes]
        dispatch += [f"    g{k}m = {gm}", f"    g{k}n = {gn}", f"    e{k} = {start} + g{k}m * g{k}n * {t.batch}",
                     f"    if (pid >= {start}) & (pid < e{k}):", f"        i{k} = pid - {start}",
                     f"        {fn}(i{k} % g{k}m, (i{k} // g{k}m) % g{k}n, i{k} // (g{k}m * g{k}n), {', '.join(args)}, "
                     f"BM{k}, BN{k})"]
        counts.append(f'triton.cdiv({t.rows}, cfg["BM{k}"]) * '
                      + ("1" if t.looped else f'triton.cdiv({t.cols}, cfg["BN{k}"])') + f" * {t.batch}")
        zeroed += [len(grp.inputs) + grp.roots.index(m.roots[z - len(m.inputs)]) for z in t.zeroed]
    params = "".join(f"{v}, " for v in [*ins.values(), *outs.values(), *(f"axis_{a}" for a in axes)])
    source = PRELUDE.format(kind="multi", name=name, reason=grp.reason.replace("\n", " "),
                            ops=", ".join(f"%{n.op.value}" for n in grp.nodes)[:2000])
    source += "".join(f"\n{text.replace('__member__', fn)}" for text, fn in funcs.items())
    source += _TRITON_KERNEL.format(
        name=name, params=params, dispatch="\n".join(dispatch),
        constexprs=", ".join(f"BM{k}: tl.constexpr, BN{k}: tl.constexpr" for k in range(len(tiles))),
        init="".join(f"    args[{i}].zero_()\n" for i in zeroed), programs=" + ".join(counts),
        kwargs=", ".join(f'BM{k}=cfg["BM{k}"], BN{k}=cfg["BN{k}"]' for k in range(len(tiles))))

    def choose(interpret: bool) -> dict:
        cfg, warps = {}, 1
        for k, t in enumerate(tiles):
            c = t.choose(interpret)
            cfg[f"BM{k}"], cfg[f"BN{k}"] = c["BM"], c["BN"]
            warps = max(warps, c.get("num_warps", 4))
        return {**cfg, "num_warps": warps}
    signature = {**{v: PTR_TYPE[x.dtype] for x, v in ins.items()}, **{v: PTR_TYPE[r.dtype] for r, v in outs.items()},
                 **{f"axis_{a}": "i32" for a in axes}}
    if name != "probe":
        choose = autotune.tuned_choose(choose, source, grp.inputs, grp.roots)
    return EmittedKernel(name, "multi", source, list(grp.inputs), list(grp.roots), axes, signature, choose, [])


def triton_footprint(grp: FusionGroup) -> tuple:
    return len(grp.inputs) + len(grp.roots), 0, 1


# ------------------------------------------------------------------------------------ Pallas
def emit_pallas(grp: FusionGroup, name: str):
    from ..kernels import pallas_templates as tpl
    from . import vmem
    from .emitted import EmittedKernel
    from .pallas import _itemsize, row_body
    from .pallas_expr import JNP_STORAGE
    from .vmem import VmemUse
    members = grp.pattern["members"]
    axes = sorted({n.attrs["axis"] for n in grp.nodes if n.op is Op.AXIS_INDEX})
    operands: dict[tuple, int] = {}  # (value, its shape in the kernel, BlockSpec) → operand position
    in_nodes, in_shapes, in_specs = [], [], []
    outs = {r: f"out{i}_ref" for i, r in enumerate(grp.roots)}
    out_shapes, out_specs = [None] * len(grp.roots), [None] * len(grp.roots)
    helpers, funcs, whens, start, blocks = [], [], [], 0, []
    for k, m in enumerate(members):
        b, body = row_body(m, f"{name}_m{k}", program_id="g[{}]")
        grid = tuple(b.steps(a) for a in range(len(b.grid))) or (1,)
        n = math.prod(grid)
        strides = [math.prod(grid[a + 1:]) for a in range(len(grid))]
        index = ", ".join(f"lax.rem(lax.div(i, {s}), {g})" for s, g in zip(strides, grid))  # (i >= 0: Mosaic's
        helpers.append(f"def _at{k}(t):  # member {k}'s grid place at step t, held at its ends outside its range\n"
                       f"    i = jnp.clip(t - {start}, 0, {n - 1})\n    return ({index},)\n")  # div, not //)
        args = [f"ax_{a}_ref" for a in b.axes]
        for x in m.inputs:
            key = (x, b.storage_shape(x), b.spec(x, pid=f"_at{k}(t)"))
            if key not in operands:
                operands[key] = len(in_nodes)
                blocks.append((b.storage_block(x), _itemsize(x)))
                in_nodes.append(x)
                in_shapes.append(key[1])
                in_specs.append(key[2])
            args.append(f"in{operands[key]}_ref")
        for r in m.roots:
            j = grp.roots.index(r)
            out_shapes[j], out_specs[j] = b.storage_shape(r), b.spec(r, pid=f"_at{k}(t)")
            blocks.append((b.storage_block(r), _itemsize(r)))
            args.append(outs[r])
        funcs.append(f"def {b.name}(g, {b.params([])}):\n{body}\n")
        whens.append(f"    @pl.when((t >= {start}) & (t < {start + n}))\n    def _m{k}():\n"
                     f"        {b.name}(_at{k}(t), {', '.join(args)})\n")
        start += n
    params = ", ".join([f"ax_{a}_ref" for a in axes] + [f"in{i}_ref" for i in range(len(in_nodes))] + list(outs.values()))
    head = tpl.PRELUDE.format(kind="multi", name=name, reason=grp.reason.replace("\n", " "),
                              ops=", ".join(f"%{n.op.value}" for n in grp.nodes)[:2000])
    body = "\n\n".join(helpers + funcs) + f"\n\ndef {name}({params}):\n    t = pl.program_id(0)\n\n" + "\n".join(whens)
    use = VmemUse(tuple(blocks))
    limit = vmem.limit_bytes(use)
    call = tpl.CALL.format(
        name=name, nscalar=len(axes), grid=(start,), semantics=("arbitrary",),
        in_shapes=", ".join(map(str, in_shapes)), out_shapes=", ".join(map(str, out_shapes)),
        out_shape=", ".join(f"jax.ShapeDtypeStruct({s}, {JNP_STORAGE[r.dtype]})" for s, r in zip(out_shapes, grp.roots)),
        in_specs=", ".join(in_specs), out_specs=", ".join(out_specs), scratch="",
        limit="" if limit is None else f", vmem_limit_bytes={limit}")
    return EmittedKernel(name, "multi", head + body + call, in_nodes, list(grp.roots), axes, grid=(start,), vmem=use)


def pallas_footprint(grp: FusionGroup) -> tuple:
    """A member's buffers and VMEM (codegen/vmem.py: its blocks stay resident for the whole
    launch), against the budget one kernel's blocks are chosen within."""
    from ..kernels import pallas_templates as tpl
    from .pallas import _VMEM_BUDGET, _itemsize, row_body
    from .vmem import VmemUse
    b, _ = row_body(grp, "probe")
    use = VmemUse(tuple((b.storage_block(x), _itemsize(x)) for x in b.inputs + b.outputs))
    return len(b.inputs) + len(b.outputs), use.nbytes, _VMEM_BUDGET.get() or tpl.VMEM_BUDGET
