"""The SPMD partitioner: mesh + specs → propagation → reshard → per-device program."""
from __future__ import annotations

import time

from .. import flags
from ..errors import IRError, ShardingError
from ..ir import Graph, Op
from ..ir.graph import cyclic_gc_paused
from ..ir.unmerge import unmerge
from .batched_experts import rewrite_batched_experts
from .lower import lower
from .mesh import DimSharding, Mesh, P, Sharding, Strided
from .passes import run_passes
from .passes_common import relink
from .plans import PLANS, idle_axes, plan_seeds
from .program import CollectiveRecord, SpmdProgram
from .propagate import USER, TensorSharding, block_layouts, propagate
from .specs import resolve
from .subaxes import refine_for_kv_heads


def partition(g: Graph, mesh: Mesh, specs: dict | None = None, plan: str | None = None,
              memory_budget: float | None = None, hardware="h200", passes="default", pipeline=None):
    """Partition `g` over `mesh`: specs (names or globs → P) and/or a plan ("dp", "fsdp", or
    "auto": chosen by modeled step time on `hardware` within `memory_budget` bytes per device,
    default the hardware's HBM less a margin; see partition/auto.py). Then the collective
    passes (passes.py): "default", a list of names, or () for none; `prog.passes` says what
    each changed. pipeline=Pipeline(axis, microbatches, schedule) splits the step into stages
    over that axis (partition/pipeline.py) and returns a PipelineProgram."""
    if not isinstance(mesh, Mesh):
        raise ShardingError(f"partition needs a shardc.Mesh, got {type(mesh).__name__}")
    with cyclic_gc_paused():
        return _partition_and_pass(g, mesh, specs, plan, memory_budget, hardware, passes, pipeline)


def _partition_and_pass(g, mesh, specs, plan, memory_budget, hardware, passes, pipeline):
    whole = getattr(g, "folded_from", None)   # a graph shardc.fold made: the capture it stands for
    if pipeline is not None:
        from .pipeline import partition_pipeline   # stages split the layers: the whole program
        return partition_pipeline(whole or g.unrolled(), mesh, specs, plan, pipeline, passes, hardware)
    if whole is None:
        return _partition_once(g, mesh, specs, plan, memory_budget, hardware, passes)
    try:
        prog = _partition_once(g, mesh, specs, plan, memory_budget, hardware, passes)
        prog.unrolled()
        return prog
    except IRError as e:   # its layers were lowered differently from one another: partitioned whole
        prog = _partition_once(whole, mesh, specs, plan, memory_budget, hardware, passes)
        note = f"the folded graph's per-device program does not repeat ({e}): the capture was partitioned whole"
        prog.notes.append(note)
        flags.log(1, note)
        return prog


def _partition_once(g, mesh, specs, plan, memory_budget, hardware, passes):
    if plan == "auto":
        from .auto_plan import partition_auto
        prog = partition_auto(g, mesh, specs, memory_budget, hardware, passes=passes)  # passes on every candidate
    elif memory_budget is not None:
        raise ShardingError("memory_budget= is for plan='auto' (the hand plans do not choose by memory)")
    else:
        prog = run_passes(_partition(g, mesh, specs, plan), passes, hardware)
    prog.count_copies()   # a repeated block's collectives: how many layers run each
    return prog


def _partition(g: Graph, mesh: Mesh, specs: dict | None = None, plan: str | None = None,
               extra_seeds: dict | None = None, extra_outs: dict | None = None, notes=()) -> SpmdProgram:
    user, out_specs = resolve(g, mesh, specs)
    split = {n for n, (s, _, _) in user.items() if n.op is Op.PARAMETER and s.dims and s.dims[0].axes}
    if split and (routed := rewrite_batched_experts(g, split)) is not g:  # batched_mm experts: route the tokens
        g = routed
        user, out_specs = resolve(g, mesh, specs)
    if not extra_seeds:  # GQA with fewer KV heads than devices: the mesh with sub-axes
        mesh, user, out_specs, note = refine_for_kv_heads(g, mesh, user, out_specs)
        notes = list(notes) + ([note] if note else [])
    seeds = {n: TensorSharding(s, USER + prio, True, origin) for n, (s, origin, prio) in user.items()}
    for n, st in (extra_seeds or {}).items():
        seeds.setdefault(n, st)
    for i, s in (extra_outs or {}).items():
        out_specs.setdefault(i, s)
    stored = {}
    if plan is not None:
        plan_nodes, plan_outs, stored = plan_seeds(g, mesh, plan, seeds, out_specs)
        seeds.update(plan_nodes)
        out_specs.update(plan_outs)   # (only where no spec names the output, or fsdp extends its spec)
    block_layouts(g, mesh, seeds)
    users = g.users() if extra_seeds else {}
    t0 = time.perf_counter()
    state = propagate(g, mesh, seeds)
    t1 = time.perf_counter()
    shardings = {n: st.sharding for n, st in state.items()}
    gathered = {p: shardings[p] for p in stored}
    for p, s in stored.items():  # fsdp × tp: stored split over the data axes too, gathered for use
        shardings[p] = _stored_layout(s, shardings[p])
    origins = {n: st.origin for n, st in state.items()}
    outs = [_same_layout(out_specs.get(i, shardings[o]), shardings[o]) for i, o in enumerate(g.outputs)]
    # sharding constraints inside the model, and the values auto's hints fixed where propagation kept them
    pinned = frozenset(n for n, st in seeds.items() if n.op is not Op.PARAMETER and
                       (st.fixed or _hint_holds(n, st, state, users)))
    prog = lower(g, mesh, shardings, origins, outs, {n: st.priority for n, st in state.items()}, pinned,
                 gathered=gathered)
    local, new = unmerge(prog.local)   # dots with the dims views merged (torch's 2-D mm): codegen's form
    if local is not prog.local:
        prog.local = local
        prog.collectives = relink(prog, new)
    t2 = time.perf_counter()
    prog.notes = list(notes) + [f"mesh axis {a!r} is idle: no spec{' or plan' if plan else ''} splits a value over it, so its "
                  f"{mesh.axes[a]} devices compute the same thing" for a in idle_axes(prog)]
    for note in prog.notes:
        flags.log(1, note)
    flags.log(1, f"partition {g.name} over {mesh}: {len(prog.collectives)} collectives, "
                 f"{sum(c.bytes for c in prog.collectives)} B per device")
    flags.log(2, f"propagation {1e3 * (t1 - t0):.0f} ms, lowering {1e3 * (t2 - t1):.0f} ms; "
                 f"bytes by kind {prog.bytes_by_kind()}")
    flags.log(3, lambda: "shardings:\n" + prog.shardings_text())
    flags.log(5, lambda: f"global IR:\n{g}\nper-device IR:\n{prog.local}")
    flags.dump(0, "global", lambda: str(g))
    flags.dump(1, "shardings", prog.shardings_text)
    flags.dump(2, "spmd", lambda: str(prog.local))
    flags.dump(3, "ledger", prog.ledger)
    return prog


def _hint_holds(n, st, state, users) -> bool:
    """An auto hint pins its value where propagation kept its axes and block layout, and nothing
    around a plain hint is cut into fused blocks (a layout it does not know: pinning would move data)."""
    if [d.axes for d in state[n].sharding.dims] != [d.axes for d in st.sharding.dims]:
        return False
    if [d.strided for d in state[n].sharding.dims] != [d.strided for d in st.sharding.dims]:
        return False
    if any(d.strided for d in st.sharding.dims):
        return True   # the hint already has the block layout its users cut it in
    return not any(d.strided for x in (*n.inputs, *users.get(n, ())) for d in state[x].sharding.dims)


def _stored_layout(stored: Sharding, used: Sharding) -> Sharding:
    """The stored split with the block layout (fused blocks, padded heads) propagation chose."""
    return Sharding(tuple(u if s.axes == u.axes else s for s, u in zip(stored.dims, used.dims)),
                    stored.partial, stored.partial_op)


def _same_layout(want: Sharding, have: Sharding) -> Sharding:
    """Where an output's spec splits a dim over the same axes as the value already is, keep the
    value's block layout: how global arrays are cut into blocks is shardc's own choice."""
    dims = tuple(h if w.axes == h.axes else w for w, h in zip(want.dims, have.dims))
    return Sharding(dims)


__all__ = ["CollectiveRecord", "DimSharding", "Mesh", "P", "PLANS", "Sharding", "SpmdProgram", "Strided", "partition"]
