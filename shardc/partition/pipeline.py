"""Pipeline parallelism: a training step split into stages along its layers, run over microbatches.

    prog = shardc.partition(g, Mesh({"pp": 4, "dp": 2, "tp": 2}), specs,
                            pipeline=shardc.Pipeline(axis="pp", microbatches=8, schedule="1f1b"))
    prog.simulate(*args)      # every stage, microbatch and device in one process, transfers exact
    prog.transfers            # point-to-point sends: value, stages, phase, bytes per device per step

How. Microbatching is data parallelism over a microbatch axis: the step is partitioned by the
SPMD partitioner over the mesh with the pipeline axis replaced by an axis "mb" of m devices, the
batch inputs split over it (after the axes their specs name). The per-device program is then one
microbatch's step on one device of a stage; every all-reduce over "mb" that it holds is the
gradient accumulation (and the loss sum) across microbatches. Its nodes fall in three phases:
  - free: depends only on parameters and state (weight views, Adam's step count): each stage
    computes the ones it needs once per step;
  - microbatch: depends on the batch (or axis_index over "mb"): forward (ancestors of the loss,
    output 0) and backward (the rest), run once per microbatch;
  - step: after an accumulation (the optimizer update), run once after the last microbatch.
Stages: parameters whose names hold a layer prefix ("h.3", "model.layers.3") belong to that
layer; layers go to stages in order, balanced by the forward's modeled cost (analysis/cost.py)
or cut at `split_points`. A forward node runs on the latest stage among its inputs; a backward or
step node on the latest stage among its users and the forward values it reads, outputs on their
parameter's stage (the loss on the last). Parameter-free values then move across a boundary where
that sends fewer bytes, so a boundary sends one activation each way (_fewer_forward_sends,
_fewer_backward_sends). A value used on another stage is sent there: forward values with the forward, backward
values and forward values needed lower down with the backward, step values after the last
microbatch. Within a stage the other axes (dp, tp) are the SPMD partitioner's, as before.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..errors import Error, ShardingError
from ..ir import Graph, Node, Op
from ..ir.graph import ancestors
from ..ir.ops import COLLECTIVES
from .mesh import Mesh, P, entry_axes
from .pipeline_schedule import SCHEDULES, schedule_slots
from .specs import leaf_key

MB = "mb"   # the microbatch axis of the inner (per-microbatch) partition


@dataclass(frozen=True)
class Pipeline:
    """A pipeline over mesh axis `axis`: `microbatches` per step, `schedule` in SCHEDULES,
    `split_points` (optional) the layer prefixes that begin stages 1..p-1, e.g. ["h.2"]."""
    axis: str = "pp"
    microbatches: int = 1
    schedule: str = "1f1b"
    split_points: tuple | list | None = None
    chunks: int = 2         # interleaved-1f1b: stages per device


@dataclass(frozen=True)
class Transfer:
    """One point-to-point send per microbatch (phase "F" or "B") or per step (phase "step")."""
    node: Node
    src: int
    dst: int
    phase: str
    bytes: int          # per device per send
    count: int          # sends per step (microbatches for F/B, 1 for step)

    def __str__(self) -> str:
        what = self.node.name or self.node.op.value
        return (f"send {self.src}->{self.dst} ({self.phase}) {self.bytes} B x{self.count}  "
                f"{what} {list(self.node.shape)}")


@dataclass
class Stage:
    index: int
    layers: list[str]
    free: list[Node]        # computed once per step on this stage
    forward: list[Node]
    backward: list[Node]
    step: list[Node]        # accumulations (all-reduces over "mb") and the update
    weight: list[Node] = dataclasses.field(default_factory=list)   # zero-bubble: W, split off backward

    def nodes(self, kind: str) -> list[Node]:
        """The nodes of one slot: "F" forward, "B" backward (input gradients under zero-bubble), "W"."""
        return self.forward if kind == "F" else self.backward if kind == "B" else self.weight


class PipelineProgram:
    """The pipeline program: per-stage node lists of one per-microbatch SPMD program, the
    transfers between stages, the schedule's slot lists; simulate() runs it all exactly."""

    engine = "torch_pipeline"     # shardc.check(prog) runs it there (runtime/pipeline_exec.py)

    def __init__(self, graph, mesh, pipeline, inner, stages, stage_of, transfers, slots, notes, post=frozenset()):
        self.post = post                       # values after an accumulation (per step, not per microbatch)
        self.graph, self.mesh, self.pipeline, self.inner = graph, mesh, pipeline, inner
        self.stages, self.stage_of, self.transfers, self.slots = stages, stage_of, transfers, slots
        self.notes = notes
        self.collectives = inner.collectives   # within-stage collectives (per microbatch) and accumulations
        self.passes: list = []
        self.pre: dict = {}   # whole-batch sums of batch-only values → the per-microbatch nodes they sum

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def p2p_bytes(self) -> int:
        """Point-to-point bytes each device sends per step, all stages together."""
        return sum(t.bytes * t.count for t in self.transfers)

    def analyze(self, hardware="h200", axis_order=None, recompute: str = "none"):
        """Modeled bubble, step time and memory per stage (what shardc.analyze returns for it)."""
        from .pipeline_analysis import analyze_pipeline
        return analyze_pipeline(self, hardware, axis_order, recompute)

    def simulate(self, *args):
        from .pipeline_sim import simulate_pipeline
        return simulate_pipeline(self, self.graph.input_values(*args))[0]

    def ledger(self) -> str:
        return "\n".join([str(t) for t in self.transfers] + [str(c) for c in self.collectives])

    def __repr__(self) -> str:
        return (f"<PipelineProgram {self.mesh} {self.num_stages} stages x {self.pipeline.microbatches} microbatches "
                f"({self.pipeline.schedule}), {len(self.transfers)} transfers, {self.p2p_bytes} B p2p>")


def layer_prefix(name: str) -> str | None:
    """'params['h.3.attn.c_attn.weight']' → 'h.3'; None for names outside numbered layers."""
    mt = re.match(r"((?:[A-Za-z_]\w*\.)*?[A-Za-z_]\w*\.\d+)\.", leaf_key(name))
    return mt.group(1) if mt else None


def partition_pipeline(g: Graph, mesh: Mesh, specs, plan, pipeline: Pipeline, passes, hardware="h200") -> PipelineProgram:
    from . import _partition
    pl = pipeline
    if not isinstance(pl, Pipeline):
        raise ShardingError(f"pipeline= takes a shardc.Pipeline, got {type(pl).__name__}")
    if pl.axis not in mesh.axes:
        raise ShardingError(f"pipeline axis {pl.axis!r} is not in {mesh}")
    if MB in mesh.axes:
        raise ShardingError(f"mesh axis name {MB!r} is reserved for a pipeline's microbatches")
    if pl.schedule not in SCHEDULES:
        raise ShardingError(f"pipeline schedule {pl.schedule!r} is not supported (supported: {', '.join(SCHEDULES)})")
    if plan is not None:
        raise ShardingError("a pipeline takes specs, not plan= (plans are not supported with pipeline= yet)")
    names = _stage_passes(passes)
    if not isinstance(pl.microbatches, int) or pl.microbatches < 1:
        raise ShardingError(f"pipeline microbatches must be a positive int, got {pl.microbatches!r}")
    m = pl.microbatches
    p = mesh.axes[pl.axis] * (pl.chunks if pl.schedule == "interleaved-1f1b" else 1)   # stages
    if pl.schedule == "interleaved-1f1b" and m % mesh.axes[pl.axis]:
        raise ShardingError(f"interleaved-1f1b needs microbatches divisible by the pipeline size "
                            f"({m} over {mesh.axes[pl.axis]})")
    marks = _marks(g)
    layer_names = [f"segment {i}" for i in range(len(marks) + 1)] if marks else \
        sorted({lp for n in g.input_names if (lp := layer_prefix(n))}, key=_layer_key)
    if marks and pl.split_points is not None:
        raise ShardingError("the model marks its stages with shardc.pipeline_split(); split_points= would cut them again")
    if len(layer_names) < p:
        raise Error(f"{p} pipeline stages need at least {p} layers; the parameters name {len(layer_names)} "
                    f"({', '.join(layer_names) or 'none'})")
    if pl.split_points is not None:
        _cuts_from_names(list(pl.split_points), layer_names, p)
    inner_mesh = Mesh({(MB if a == pl.axis else a): (m if a == pl.axis else n) for a, n in mesh.axes.items()})
    inner_specs = _microbatch_specs(g, mesh, inner_mesh, dict(specs or {}), pl.axis, m)
    inner = _partition(g, inner_mesh, inner_specs, None)
    if names:
        return _build_with_passes(g, mesh, pl, inner, p, names, hardware)
    return build(g, mesh, pl, inner, p)


def _stage_passes(passes) -> list[str]:
    """The collective passes a pipeline runs inside its stages: all but the scheduler (each stage
    runs its nodes in the pipeline schedule's slots, in program order)."""
    from .passes import DEFAULT, PASSES
    names = list(DEFAULT) if passes == "default" else [passes] if isinstance(passes, str) else list(passes or ())
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ShardingError(f"unknown pass(es) {unknown}; passes: {', '.join(PASSES)}")
    if "schedule" in names and passes != "default":
        raise ShardingError("passes: 'schedule' does not run inside pipeline stages (each stage runs its nodes "
                            "in program order in the pipeline's slots); name the other passes")
    return [n for n in names if n != "schedule"]


def _build_with_passes(g, mesh, pl, inner, p, names, hardware) -> PipelineProgram:
    """The collective passes on the per-microbatch program, then the stages built from it. The
    combiner runs last and buckets only all-reduces of one stage and phase (as a build without it
    places them): a bucket spanning stages would make one stage wait for another's gradients."""
    from .passes import PASSES, run_passes
    run_passes(inner, [n for n in names if n != "combine"], hardware)
    prog = build(g, mesh, pl, inner, p)
    if "combine" in names:
        inner = getattr(prog.inner, "unsplit", prog.inner)
        stage_of, loss_side = dict(prog.stage_of), ancestors([inner.local.outputs[0]])
        phase = {n: k for st in prog.stages for k, ns in (("F", st.forward), ("B", st.backward), ("W", st.weight),
                                                          ("step", st.step)) for n in ns}
        # one stage and one phase to a bucket; alone: the loss's sum (in a bucket, the loss would
        # wait for the stage's gradients: the whole backward would turn into forward) and sums over
        # the microbatches alone (accumulated in place: nothing goes on the wire to save)
        inner.bucket_group = lambda n: (("alone", id(n)) if n in loss_side or n not in stage_of
                                        or set(n.attrs["axes"]) <= {MB} else (stage_of[n], phase.get(n)))
        before = inner.before_passes
        report = PASSES["combine"](inner)
        inner.passes.append(report)
        inner.before_passes = before
        prog = build(g, mesh, pl, inner, p)
    prog.passes = list(inner.passes)
    prog.notes.append("collective passes inside the stages: " + ", ".join(r.name for r in prog.passes)
                      + " (combine last, within each stage; no schedule)")
    return prog


def _microbatch_specs(g, mesh, inner_mesh, specs, axis, m) -> dict:
    """The user's specs with the batch inputs' first dim split over "mb" after their axes."""
    from .specs import resolve
    for k, s in specs.items():
        flat = [a for e in P(*s) for a in entry_axes(e)]
        if axis in flat:
            raise ShardingError(f"spec {k!r} = {s!r} splits over the pipeline axis {axis!r}; stages split the "
                                f"layers over it, specs name the other axes")
    seeds, _ = resolve(g, inner_mesh, specs)
    out_keys = {leaf_key(o) for o in g.output_names if re.search(r"\['[^']*'\]$", o)}
    batch = [x for x in g.inputs if x.rank and not (re.search(r"\['[^']*'\]$", x.name) and leaf_key(x.name) in out_keys)]
    if not batch:
        raise ShardingError("a pipeline needs batch inputs (inputs without an updated output: ids, targets)")
    for x in batch:
        have = seeds[x][0].dims if x in seeds else None
        first = tuple(have[0].axes) if have else ()
        n = m * inner_mesh.group_size(first)
        if x.shape[0] % n:
            raise ShardingError(f"batch input {x.name!r} has {x.shape[0]} rows, not divisible into {m} microbatches "
                                f"x {n // m} shards")
        rest = [(d.axes if len(d.axes) > 1 else d.axes[0]) if d.axes else None for d in have[1:]] if have else \
            [None] * (x.rank - 1)
        specs[x.name] = P(first + (MB,), *rest)
    return specs


def build(g, mesh, pl, inner, p) -> PipelineProgram:
    """The pipeline program of `inner` (the per-microbatch SPMD program) over p stages; gradients
    of a parameter used on several stages are then accumulated on each (pipeline_shared.py)."""
    from .pipeline_shared import split_shared_gradients
    inner = getattr(inner, "unsplit", inner)      # a program's inner, rebuilt for other stages
    prog = _build(g, mesh, pl, inner, p)
    split = split_shared_gradients(prog)
    return prog if split is None else _build(g, mesh, pl, split[0], p, split[1])


def _build(g, mesh, pl, inner, p, fixed=None) -> PipelineProgram:
    """`fixed`: {node: stage} for backward and step nodes placed by pipeline_shared."""
    fixed = fixed or {}
    local = inner.local
    users = local.users()
    live = ancestors(local.outputs)
    in_names = {x: n for x, n in zip(local.inputs, g.input_names)}
    # phases
    mbdep, post, accs, pre = set(), set(), [], {}
    batch_in = {x for x, s in zip(local.inputs, inner.input_shardings) if MB in s.used_axes}
    dataonly = {}        # computed from the batch inputs and constants alone
    for n in local.nodes:
        dataonly[n] = n in batch_in if n.op is Op.PARAMETER else all(dataonly[i] for i in n.inputs)
    for n in local.nodes:
        if n not in live:
            continue
        if n in batch_in or (n.op is Op.AXIS_INDEX and n.attrs["axis"] == MB):
            mbdep.add(n)
        elif n.op in COLLECTIVES and MB in n.attrs.get("axes", ()):
            if n.op is not Op.ALL_REDUCE or n.attrs["reduce"] != "sum" or n.inputs[0] not in mbdep:
                raise Error(f"{n.describe()}: a {n.op.value} over the microbatch axis has no pipeline form "
                            f"(only sums across microbatches: gradient accumulation)")
            if dataonly[n.inputs[0]]:   # a sum over the whole batch of the batch alone (a token count):
                pre[n] = [x for x in local.nodes if x in ancestors([n.inputs[0]]) and x in mbdep]
                continue                # each stage that needs it sums it over the microbatches first
            post.add(n)
            accs.append(n)
        else:
            d, q = any(i in mbdep for i in n.inputs), any(i in post for i in n.inputs)
            if d and q:
                raise Error(f"{n.describe()}: needs a value summed over the whole batch inside a microbatch's "
                            f"computation; a pipeline cannot split this step into microbatches")
            (mbdep if d else post if q else set()).add(n)
    for o, name in zip(local.outputs, g.output_names):
        if o in mbdep:
            raise Error(f"output {name!r} depends on one microbatch (not summed across microbatches); "
                        f"a pipeline returns per-step values only")
    forward = ancestors([local.outputs[0]]) & mbdep
    if not forward:
        raise Error("a pipeline needs a training step whose first output is the loss of the batch")
    # layers (or the segments between pipeline_split marks) → stages
    marks = {inner.value_map[n][0] for n in _marks(g) if n in inner.value_map}
    if marks:
        layer_names = [f"segment {i}" for i in range(len(marks) + 1)]
    else:
        layer_names = sorted({lp for x in local.inputs if (lp := layer_prefix(in_names[x]))}, key=_layer_key)
    index = {lp: i for i, lp in enumerate(layer_names)}
    if len(layer_names) < p:
        raise Error(f"{p} pipeline stages need at least {p} layers; the parameters name {len(layer_names)} "
                    f"({', '.join(layer_names) or 'none'})")
    layer = {}
    for n in local.nodes:
        if n.op is Op.PARAMETER:
            lp = None if marks else layer_prefix(in_names[n])
            layer[n] = index[lp] if lp else -1
        else:
            layer[n] = max((layer[i] for i in n.inputs), default=-1)
            if n in marks:
                layer[n] = max(layer[n], 0) + 1
    if pl.split_points is not None:
        cuts = _cuts_from_names(list(pl.split_points), layer_names, p)
    else:
        cost = [0.0] * len(layer_names)
        from ..analysis.cost import op_seconds
        for n in local.nodes:
            if n in forward:
                cost[max(layer[n], 0)] += op_seconds(n, local.mesh_axes)
        cuts = _balance(cost, p)
    stage_of_layer = [sum(1 for c in cuts if c <= i) for i in range(len(layer_names))]

    def lstage(n):
        return stage_of_layer[max(layer[n], 0)]

    stage: dict[Node, int] = {}
    for n in local.nodes:
        if n in forward:
            stage[n] = lstage(n)
    # A forward node that reads no parameter and whose users all run later moves to its users'
    # first stage (a layer norm's statistics, the targets' one-hot): the stage boundary then
    # sends its one activation input, not several values derived from it.
    param_free = {}
    for n in local.nodes:
        param_free[n] = n.op is not Op.PARAMETER or n in batch_in
        param_free[n] = param_free[n] and all(param_free[i] for i in n.inputs if i not in mbdep)
    for n in reversed(local.nodes):
        if n not in forward or n in batch_in or not param_free[n]:
            continue
        later = [stage[u] for u in users.get(n, ()) if u in forward]
        if later and len(later) == len(users[n]) and min(later) > stage[n]:
            stage[n] = min(later)
    _fewer_forward_sends(local.nodes, stage, users, forward, mbdep, param_free)
    # parameter owners: a layer's stage, else the first stage that reads the parameter in the forward
    owner, first_use = {}, {}      # first_use: the first forward stage reading a value (through weight views)
    for n in reversed(local.nodes):
        us = [stage[u] if u in forward else first_use.get(u) for u in users.get(n, ())
              if u in forward or not (u in mbdep or u in post)]
        us = [u for u in us if u is not None]
        if us:
            first_use[n] = min(us)
    for x in local.inputs:
        key = leaf_key(in_names[x])
        if layer_prefix(in_names[x]) and not marks:
            owner.setdefault(key, lstage(x))
        else:
            if x in first_use:
                owner[key] = min(owner.get(key, first_use[x]), first_use[x])
    pins: dict[Node, int] = {}
    for i, (o, name) in enumerate(zip(local.outputs, g.output_names)):
        want = p - 1 if i == 0 else owner.get(leaf_key(name), 0)
        pins[o] = max(pins.get(o, 0), want)
    at_forward = {}    # forward values, and views of one (a norm's statistics reshaped): their stage
    for n in local.nodes:
        if n in forward and n.op is not Op.PARAMETER:
            at_forward[n] = stage[n]
        elif n in mbdep and n.op is not Op.PARAMETER:
            ins = {i for i in n.inputs if i in mbdep}
            if len(ins) == 1 and (i := ins.pop()) in at_forward:
                at_forward[n] = at_forward[i]
    for n in reversed(local.nodes):
        if n in stage or n not in live or not (n in mbdep or n in post):
            continue
        if n in fixed:
            stage[n] = fixed[n]
            continue
        us = [stage[u] for u in users.get(n, ()) if u in stage]
        if n in pins:
            us.append(pins[n])
        # no lower than the forward values it reads: an op's backward runs where its forward ran
        us += [at_forward[i] for i in n.inputs if i in at_forward and n not in pins]
        stage[n] = max(us) if us else lstage(n)
    _fewer_backward_sends(local.nodes, stage, users, forward, mbdep, post, set(pins) | set(fixed))
    free = {n for n in local.nodes if n in live and n not in mbdep and n not in post}
    # per-stage node lists, free closures, transfers
    stages = [Stage(s, [lp for lp, i in index.items() if stage_of_layer[i] == s], [], [], [], []) for s in range(p)]
    need_free: list[set] = [set() for _ in range(p)]
    for n in local.nodes:
        if n not in stage:
            continue
        st = stages[stage[n]]
        (st.forward if n in forward else st.backward if n in mbdep else st.step).append(n)
        for i in n.inputs:
            if i in free:
                need_free[stage[n]].add(i)
    for o in local.outputs:
        if o in free:
            need_free[pins[o]].add(o)
    for s in range(p):
        closure = ancestors(need_free[s]) & free
        stages[s].free = [n for n in local.nodes if n in closure]
    transfers, seen = [], set()
    for n in local.nodes:
        if n not in stage or n.op is Op.PARAMETER:   # inputs are read where they are used
            continue
        for u in users.get(n, ()):
            if u not in stage or stage[u] == stage[n] or (n, stage[u]) in seen:
                continue
            seen.add((n, stage[u]))
            a, b = stage[n], stage[u]
            phase = "step" if n in post else "F" if (n in forward and b > a) else "B"
            transfers.append(Transfer(n, a, b, phase, n.nbytes, 1 if phase == "step" else pl.microbatches))
    if pl.schedule == "zero-bubble":   # W: backward nodes that feed only this stage's accumulations
        for st in stages:
            sent = [t.node for t in transfers if t.src == st.index and t.phase == "B"]
            b = ancestors(sent) & set(st.backward)
            st.weight = [n for n in st.backward if n not in b]
            st.backward = [n for n in st.backward if n in b]
    notes = [f"stage {s.index}: layers {', '.join(s.layers)}; {len(s.forward)} forward, {len(s.backward)} backward, "
             f"{len(s.step)} step nodes" for s in stages]
    slots = schedule_slots(pl.schedule, mesh.axes[pl.axis], pl.microbatches, pl.chunks)
    prog = PipelineProgram(g, mesh, pl, inner, stages, stage, transfers, slots, notes + inner.notes, frozenset(post))
    prog.pre = pre
    return prog


def _fewer_forward_sends(nodes, stage, users, forward, mbdep, param_free):
    """Move parameter-free forward values across a stage boundary where that sends fewer bytes
    (in place). A value sent from stage a to b whose users all run on b or later moves to b
    together with the parameter-free forward values it is computed from on a whose forward users
    all move or run on b or later, when what the moved values then read from a (plus what
    backward users left on a then read from b) is smaller than what they sent: a norm's
    normalized input, sent beside the activation it is computed from, is then computed on b.
    Runs before backward values are placed (they then follow the forward values they read)."""
    def moves_with(n, b):
        group, stack = set(), [n]
        while stack:                  # the parameter-free forward values upstream of n, up to what b has
            x = stack.pop()
            if x in group or x not in stage or x not in forward or not param_free[x] \
                    or stage[x] >= b or (x is not n and any(stage.get(u) == b for u in users.get(x, ()))):
                continue
            group.add(x)
            stack.extend(x.inputs)
        while True:                   # minus those a forward user that stays below b still reads
            out = {x for x in group if any(u not in group and u in forward and stage.get(u, b) < b
                                           for u in users.get(x, ()))}
            if not out:
                return group
            group -= out

    def gain(group, b):
        sent = sum(x.nbytes for x in group if any(stage.get(u) == b for u in users.get(x, ())))
        reads = {i for x in group for i in x.inputs if i not in group and i in stage and i in mbdep
                 and stage[i] < b and not any(stage.get(u) == b for u in users.get(i, ()))}
        back = {x for x in group if any(u not in group and u not in forward and stage.get(u, b) < b
                                        for u in users.get(x, ()))}
        return sent - sum(i.nbytes for i in reads | back)

    for n in reversed(nodes):
        if n not in stage or n not in forward or not param_free[n]:
            continue
        us = [stage[u] for u in users.get(n, ()) if u in forward]
        if not us or min(us) <= stage[n]:
            continue
        b = min(us)
        group = moves_with(n, b)
        if n in group and gain(group, b) > 0:
            for x in group:
                stage[x] = b


def _fewer_backward_sends(nodes, stage, users, forward, mbdep, post, keep):
    """Move a backward value computed from backward values of one later stage b (and forward
    values b holds) up to b where it is no larger than what it reads from there (in place): the
    residual's gradient and the norm's are summed before they are sent, not after. Equal sizes move too, so a chain of elementwise
    ops climbs to its sum; if the moves send more in all (a reader that could not follow), the
    first placement stays."""
    def sent_bytes():
        return sum(n.nbytes * len({stage[u] for u in users.get(n, ()) if u in stage} - {stage[n]})
                   for n in stage if n.op is not Op.PARAMETER)

    def move_to(n):
        if n in forward or n not in mbdep or n in post or n in keep:
            return None
        ins = {i for i in n.inputs if i in stage and i in mbdep and i.op is not Op.PARAMETER}
        at = {stage[i] for i in ins if i not in forward}
        if len(at) != 1 or (b := at.pop()) <= stage[n]:
            return None
        if not all(stage[i] == b or any(u in forward and stage[u] == b for u in users.get(i, ()))
                   for i in ins if i in forward):          # forward values: made on b or received there
            return None
        return b if n.nbytes <= sum(i.nbytes for i in ins if i not in forward) else None

    before, first = sent_bytes(), dict(stage)
    work = [n for n in nodes if n in stage]
    while work:
        n = work.pop()
        b = move_to(n)
        if b is not None:
            stage[n] = b
            work.extend(u for u in users.get(n, ()) if u in stage)
    if sent_bytes() > before:
        stage.clear()
        stage.update(first)


def _marks(g) -> list:
    """The values a torch forward marked with shardc.pipeline_split(), in order."""
    return [n for n in g.nodes if (n.name or "").startswith("pipeline_split_")]


def _layer_key(lp: str):
    base, _, i = lp.rpartition(".")
    return (base, int(i))


def _cuts_from_names(points, layer_names, p) -> list[int]:
    if len(points) != p - 1:
        raise ShardingError(f"{p} pipeline stages need {p - 1} split_points, got {len(points)}: {points}")
    cuts = []
    for sp in points:
        hits = [i for i, lp in enumerate(layer_names) if lp == sp or lp.endswith("." + sp)]
        if not hits:
            raise ShardingError(f"split point {sp!r} names no layer (layers: {', '.join(layer_names)})")
        cuts.append(hits[0])
    if cuts != sorted(set(cuts)) or cuts[0] == 0:
        raise ShardingError(f"split points {points} must name distinct layers after the first, in order")
    return cuts


def _balance(cost: list[float], p: int) -> list[int]:
    """Cut points (first layer of stages 1..p-1) of contiguous groups minimizing the largest sum."""
    L = len(cost)
    pre = [0.0]
    for c in cost:
        pre.append(pre[-1] + c)
    inf = float("inf")
    best = [[inf] * (L + 1) for _ in range(p + 1)]
    arg = [[0] * (L + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for k in range(1, p + 1):
        for j in range(k, L + 1):
            for i in range(k - 1, j):
                v = max(best[k - 1][i], pre[j] - pre[i])
                if v < best[k][j]:
                    best[k][j], arg[k][j] = v, i
    cuts, j = [], L
    for k in range(p, 0, -1):
        j = arg[k][j]
        cuts.append(j)
    return sorted(cuts)[1:]
