"""plan="auto": choose every tensor's sharding by modeled step time under a per-device memory
budget, as an integer linear program (Alpa's intra-op pass, over shardc's factor rules).

1. Group: constants and what is made from them alone are free; a node that only moves or maps
   elements of operands that all sit in one group follows that group (auto_strategies.py).
   Graph-wide: a GPT-2 small training step of 5,206 nodes becomes a few hundred groups.
2. Repeated blocks: groups whose op, shapes and neighbourhood signature coincide (the same layer
   at another depth) share one set of choice variables, so the problem does not grow with depth.
3. ILP (scipy.optimize.milp, HiGHS): one binary per (group class, strategy), one per pair of
   producer/consumer sharding classes on an edge whose resharding cost depends on both (Alpa's
   linearization: the edge variables sum to the producer's choice along one side and the
   consumer's along the other); minimize compute + collectives + resharding, subject to state
   plus saved activations fitting the budget. A time limit returns the best plan found and its gap.
4. The chosen shardings of the inputs become seeds (origin "auto: ..."), those of dot, gather and
   scatter results hints (pinned where propagation keeps them), and everything goes through the
   normal propagate → lower path, so correctness comes from the same machinery as every other
   plan. auto_plan.py prices the program with shardc.analyze against the hand plans.

Memory is state (parameters with their gradients when trained, optimizer state, batch inputs)
plus the forward values the backward reads, at each value's local size: not the liveness peak of
the schedule, which `shardc.analyze` reports after lowering.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ShardingError
from ..ir import Graph, Node, Op
from .auto_strategies import (DATA_AXIS_NAMES, FOLLOW_OPS, MODEL_AXIS_NAMES, Pricer, Strategy, axes_key,
                              enumerate_strategies, follow, follower_cost, saved_nodes, trivial_nodes)
from .mesh import Mesh, Sharding, local_shape
from .plans import is_state


@dataclass
class Group:
    leader: Node
    followers: list = field(default_factory=list)    # (node, operand index it follows)
    strategies: list = field(default_factory=list)


@dataclass
class AutoResult:
    shardings: dict           # node -> Sharding the plan chose (leaders and followers)
    choice: dict              # leader -> Strategy
    cost_s: float             # modeled seconds of the objective
    memory: float             # modeled bytes per device (state + saved activations)
    budget: float
    gap: float
    status: str
    solve_s: float
    build_s: float
    n_groups: int
    n_classes: int
    n_vars: int
    groups: dict = field(repr=False, default_factory=dict)
    edge_cost: dict = field(repr=False, default_factory=dict)   # (leader, input) -> seconds paid


def _gb(b: float) -> str:
    return f"{b / 1e9:.3g} GB"


def donated_params(g: Graph) -> set[Node]:
    """State inputs that an output updates (a training step): their gradients are held too."""
    from ..analysis.memory import donations, input_roles
    roles = input_roles(g)
    return {g.inputs[i] for i in donations(g).values() if roles[g.inputs[i].name] == "param"}


def build_groups(g: Graph, fixed: dict[Node, Sharding]) -> tuple[dict[Node, Group], dict[Node, Node], set]:
    free = trivial_nodes(g)
    leader: dict[Node, Node] = {}
    groups: dict[Node, Group] = {}
    for n in g.nodes:
        if n in free:
            continue
        real = [i for i, x in enumerate(n.inputs) if x not in free]
        heads = {leader[n.inputs[i]] for i in real}
        if n.op in FOLLOW_OPS and len(heads) == 1 and n not in fixed:
            first = next((i for i in real if n.inputs[i].shape == n.shape), real[0])
            h = heads.pop()
            leader[n] = h
            groups[h].followers.append((n, first))
        else:
            leader[n] = n
            groups[n] = Group(n)
    return groups, leader, free


def _struct_sig(v: Node, grp: Group, leader: dict, free: set, saved: set, train_params: set, batchy: dict):
    """Everything a group's strategies depend on: its leader's structure, each follower's op,
    shape, attributes and where its operands come from (by position in the group), what is
    saved or trained, and where the batch runs. Equal for the same group of two identical layers."""
    pos = {v: 0}
    for i, (n, _) in enumerate(grp.followers):
        pos[n] = i + 1
    fl = tuple((n.op.value, n.shape, str(n.dtype), op, tuple(pos.get(x, -1 if x in free else -2) for x in n.inputs),
                n in saved, tuple(sorted(batchy.get(n, {}).items())), tuple(sorted(str(kv) for kv in n.attrs.items())))
               for n, op in grp.followers)
    return (_signature(v, leader, 3), fl, v in saved, v in train_params,
            tuple(tuple(sorted(batchy.get(x, {}).items())) for x in (v, *v.inputs)))


def _signature(n: Node, leader: dict, depth: int = 2) -> tuple:
    """Structure around a node (op, shapes, operands' structure): equal for the same op of two
    identical layers."""
    if depth == 0 or n not in leader:
        return (n.op.value, n.shape)
    return (n.op.value, n.shape, str(n.dtype), tuple(_signature(i, leader, depth - 1) for i in n.inputs),
            tuple(sorted(str(k) for k in n.attrs.items())) if n.op is not Op.CONSTANT else ())


def solve(g: Graph, mesh: Mesh, fixed: dict[Node, Sharding], hardware="h200", memory_budget=None,
          time_limit: float = 30.0, tie_blocks: bool = True, tie_state: bool = True) -> AutoResult:
    from ..analysis import hardware as hwmod
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    t0 = time.perf_counter()
    hw = hwmod.get(hardware)
    budget = float(memory_budget if memory_budget is not None else default_budget(hw))
    pricer = Pricer(hw, mesh)
    groups, leader, free = build_groups(g, fixed)
    train_params = donated_params(g)
    saved = saved_nodes(g, bool(train_params))
    users = g.users()

    # -- strategies per group, with its followers' shardings, costs and memory
    follow_cache: dict = {}
    model_axes = tuple(a for a in mesh.axis_names if a in MODEL_AXIS_NAMES)
    data_named = tuple(a for a in mesh.axis_names if a in DATA_AXIS_NAMES)
    batchy = batch_dims(g, mesh) if model_axes or data_named else {}
    computed: dict = {}   # structure signature -> (representative, its strategies)
    for v, grp in groups.items():
        sig = None if v in fixed or not tie_blocks else _struct_sig(v, grp, leader, free, saved, train_params, batchy)
        if sig is not None and sig in computed:   # the same layer again: copy, renaming followers
            rep, rstrats = computed[sig]
            rename = {rep: v, **{rn: n for (rn, _), (n, _) in zip(groups[rep].followers, grp.followers)}}
            grp.strategies = [Strategy(s.fa, s.out, s.operands, s.seconds, s.memory, s.label,
                                       {rename[x]: sh for x, sh in s.followers.items()}) for s in rstrats]
            continue
        strats = enumerate_strategies(v, mesh, pricer, _veto(v, batchy, model_axes, data_named))
        if v in fixed:
            want = axes_key(fixed[v])
            keep = [s for s in strats if axes_key(s.out) == want]
            if v.op is Op.PARAMETER or not keep:
                keep = [Strategy(None, fixed[v], [], 0.0, 0.0, "fixed by a spec")] if v.op is Op.PARAMETER else strats
            strats = keep
        for s in strats:
            sh = {v: s.out}
            mem = _held(v, s.out, mesh, train_params, saved)
            sec = s.seconds
            for n, op in grp.followers:
                ins = [sh.get(x) for x in n.inputs]
                key = (n, op, ins[op])
                out = follow_cache.get(key)
                if out is None:
                    out = follow_cache[key] = follow(n, op, ins[op], mesh)
                sh[n] = out
                sec += follower_cost(n, ins, out, mesh, pricer)
                mem += _held(n, out, mesh, train_params, saved)
                # other operands of the group that arrive split differently
                for j, x in enumerate(n.inputs):
                    if j != op and ins[j] is not None and x.shape == n.shape:
                        sec += pricer.reshard(x, ins[j], out)
            s.followers, s.seconds, s.memory = sh, sec, mem
        grp.strategies = strats
        if sig is not None:
            computed[sig] = (v, strats)

    # -- group classes: identical layers share their choice (state: when it feeds the same classes)
    cls_of: dict[Node, int] = {}
    classes: list[list[Node]] = []
    sig_index: dict = {}

    def assign(v, sig):
        if sig is None or sig not in sig_index:
            if sig is not None:
                sig_index[sig] = len(classes)
            cls_of[v] = len(classes)
            classes.append([v])
        else:
            cls_of[v] = sig_index[sig]
            classes[cls_of[v]].append(v)

    state_groups = [v for v in groups if v.op is Op.PARAMETER]
    for v, grp in groups.items():
        if v.op is not Op.PARAMETER:
            ok = tie_blocks and v not in fixed
            assign(v, (_signature(v, leader, 3), len(grp.followers), tuple(s.label for s in grp.strategies)) if ok else None)
    for v in state_groups:
        grp = groups[v]
        sig = None
        if tie_blocks and tie_state and v not in fixed:
            members = [v] + [n for n, _ in grp.followers]
            feeds = tuple(sorted((cls_of[leader[u]], k, i) for k, t in enumerate(members) for u in users.get(t, ())
                                 if u in leader and leader[u] is not v for i, x in enumerate(u.inputs) if x is t))
            sig = (_struct_sig(v, grp, leader, free, saved, train_params, batchy), feeds, v.name.split("[")[0])
        assign(v, sig)
    base = [0]
    for c in classes:
        base.append(base[-1] + len(groups[c[0]].strategies))
    nx = base[-1]
    cost = np.zeros(nx)
    memv = np.zeros(nx)
    for c, members in enumerate(classes):
        for v in members:
            for k, s in enumerate(groups[v].strategies):
                cost[base[c] + k] += s.seconds
                memv[base[c] + k] += s.memory

    def tensor_sharding(u: Node, k: int, x: Node) -> Sharding:
        return groups[u].strategies[k].followers[x]

    # -- edges
    edge_terms = []     # (cu, cv, Cmatrix, classes_u (list per k), classes_v)
    edge_keys: dict = {}
    pair_cache: dict = {}

    def add_edge(x: Node, u: Node, v: Node, req_of):
        su = [tensor_sharding(u, k, x) for k in range(len(groups[u].strategies))]
        sv = [req_of(l) for l in range(len(groups[v].strategies))]
        ka = {}
        ca = [ka.setdefault(axes_key(s), len(ka)) for s in su]
        kb = {}
        cb = [kb.setdefault(axes_key(s), len(kb)) for s in sv]
        ra = {ca[k]: su[k] for k in range(len(su))}
        rb = {cb[l]: sv[l] for l in range(len(sv))}
        C = np.zeros((len(ka), len(kb)))
        for a, sa in ra.items():
            for b, sb in rb.items():
                pk = (x.shape, x.dtype, axes_key(sa), axes_key(sb))
                if pk not in pair_cache:
                    pair_cache[pk] = pricer.reshard(x, sa, sb)
                C[a, b] = pair_cache[pk]
        if not C.any():
            return
        cu, cv = cls_of[u], cls_of[v]
        if len(ka) == 1:
            for l in range(len(sv)):
                cost[base[cv] + l] += C[0, cb[l]]
            return
        if len(kb) == 1:
            for k in range(len(su)):
                cost[base[cu] + k] += C[ca[k], 0]
            return
        if cu == cv:   # a class feeding itself (tied layers): charge the diagonal choice
            for k in range(len(su)):
                cost[base[cu] + k] += C[ca[k], cb[k]]
            return
        key = (cu, cv, tuple(ca), tuple(cb), C.tobytes())
        if key in edge_keys:
            edge_terms[edge_keys[key]][5] += 1
            return
        edge_keys[key] = len(edge_terms)
        edge_terms.append([cu, cv, C, ca, cb, 1])

    for v, grp in groups.items():
        if v.op is Op.PARAMETER:
            continue
        for i, x in enumerate(v.inputs):
            if x in free:
                continue
            u = leader[x]
            strategies = grp.strategies
            if strategies and strategies[0].fa is None:
                continue
            add_edge(x, u, v, lambda l, i=i: groups[v].strategies[l].operands[i])
    from ..analysis.memory import donations
    for j, i in donations(g).items():   # an updated state leaf comes out as its input went in
        o, p = g.outputs[j], g.inputs[i]
        if o in free:
            continue
        add_edge(o, leader[o], p, lambda l, p=p: groups[p].strategies[l].out)

    # -- the ILP
    # ties go to the plan that holds less (1 us per GB: far below any real cost difference)
    cost = cost + memv * 1e-15
    ne = sum(C.size for _, _, C, _, _, _ in edge_terms)
    nvar = nx + ne
    c = np.concatenate([cost] + [C.ravel() * w for _, _, C, _, _, w in edge_terms]) if edge_terms else cost
    rows, cols, vals, lb, ub = [], [], [], [], []
    r = 0
    for ci in range(len(classes)):
        for k in range(base[ci], base[ci + 1]):
            rows.append(r); cols.append(k); vals.append(1.0)
        lb.append(1.0); ub.append(1.0); r += 1
    off = nx
    for cu, cv, C, ca, cb, _ in edge_terms:
        na, nb = C.shape
        for a in range(na):   # Σ_b e[a,b] = Σ_{k in a} x_u,k
            for b in range(nb):
                rows.append(r); cols.append(off + a * nb + b); vals.append(1.0)
            for k, kc in enumerate(ca):
                if kc == a:
                    rows.append(r); cols.append(base[cu] + k); vals.append(-1.0)
            lb.append(0.0); ub.append(0.0); r += 1
        for b in range(nb):   # Σ_a e[a,b] = Σ_{l in b} x_v,l
            for a in range(na):
                rows.append(r); cols.append(off + a * nb + b); vals.append(1.0)
            for l, lc in enumerate(cb):
                if lc == b:
                    rows.append(r); cols.append(base[cv] + l); vals.append(-1.0)
            lb.append(0.0); ub.append(0.0); r += 1
        off += na * nb
    # memory
    for k in range(nx):
        if memv[k]:
            rows.append(r); cols.append(k); vals.append(memv[k])
    lb.append(-np.inf); ub.append(budget); r += 1
    A = coo_matrix((vals, (rows, cols)), shape=(r, nvar)).tocsr()
    integrality = np.concatenate([np.ones(nx), np.zeros(ne)])
    scale = 1e3   # milliseconds keep HiGHS's tolerances meaningful
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = milp(c * scale, constraints=[LinearConstraint(A, lb, ub)], integrality=integrality,
               bounds=Bounds(np.zeros(nvar), np.ones(nvar)),
               options={"time_limit": float(time_limit), "mip_rel_gap": 1e-6, "presolve": True})
    solve_s = time.perf_counter() - t1
    if res.x is None:
        least = sum(min(memv[base[ci]:base[ci + 1]]) for ci in range(len(classes)))
        if least > budget:
            raise ShardingError(f"plan 'auto': no sharding over {mesh} fits the memory budget {_gb(budget)} per "
                                f"device; the smallest that fits is {_gb(least)} (state + saved activations, "
                                f"every tensor split as far as the mesh allows)")
        raise ShardingError(f"plan 'auto': the ILP found no plan in {time_limit:g} s ({res.message})")
    x = res.x
    choice, shardings, edge_cost = {}, {}, {}
    for ci, members in enumerate(classes):
        k = int(np.argmax(x[base[ci]:base[ci + 1]]))
        for v in members:
            s = groups[v].strategies[k]
            choice[v] = s
            shardings.update(s.followers)
    for v, grp in groups.items():   # resharding each input pays under the chosen plan
        if v.op is Op.PARAMETER or choice[v].fa is None:
            continue
        for i, xin in enumerate(v.inputs):
            if xin in free:
                continue
            edge_cost[(v, i)] = pricer.reshard(xin, shardings[xin], choice[v].operands[i])
    memory = float(sum(memv[base[ci] + int(np.argmax(x[base[ci]:base[ci + 1]]))] for ci in range(len(classes))))
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    return AutoResult(shardings, choice, float(res.fun) / scale, memory, budget, gap,
                      "optimal" if res.status == 0 else f"time limit (gap {gap:.2%})", solve_s, build_s,
                      len(groups), len(classes), nvar, groups, edge_cost)


def _marked(rule, dims, info: dict) -> dict[int, int]:
    """Factors of one tensor of an op that hold the batch, with the batch's extent in each: of
    each batch dim, the major factors within its batch extent (a merged [b·s] dim split into
    factors b and s: b only); a factor larger than what is left (one factor for all of [b·s])
    holds the rest of the batch at its major end."""
    out = {}
    for d, ext in info.items():
        for f in dims[d]:
            size = rule.sizes[f]
            if size == 1:
                continue
            if size >= ext:
                out[f] = ext
                break
            out[f] = size
            ext //= size
    return out


def batch_dims(g: Graph, mesh: Mesh) -> dict[Node, dict[int, int]]:
    """Where each value carries the batch: dim -> the batch's extent at its major end. From every
    batch input's first dim, forward through each op's factors."""
    from .rules import rule_for
    out: dict[Node, dict[int, int]] = {p: {0: p.shape[0]} for p in g.inputs
                                       if p.rank and not is_state(g, p) and p.shape[0] > 1}
    for n in g.nodes:
        if n.op is Op.PARAMETER or not any(x in out for x in n.inputs):
            continue
        rule = rule_for(n)
        marked: dict[int, int] = {}
        for x, dims in zip(n.inputs, rule.operands):
            if x in out:
                marked.update(_marked(rule, dims, out[x]))
        got = {}
        for d, fs in enumerate(rule.result):
            ext = 1
            for f in fs:
                if rule.sizes[f] == 1:
                    continue
                if f not in marked:
                    break
                ext *= marked[f]
                if marked[f] < rule.sizes[f]:
                    break
            if ext > 1:
                got[d] = ext
        if got:
            out[n] = got
    return out


def _veto(n: Node, batchy: dict, model_axes: tuple, data_named: tuple = ()):
    """Alpa's force_batch_dim_to_mesh_dim, by axis name: the batch never goes over an axis named
    for model parallelism (tp, mp, model, tensor, ep, expert), and an op that carries the batch
    splits only its batch over an axis named for data (dp, data, batch, fsdp): there the choice
    left is the state's (replicated as DP, or split and gathered for use as FSDP)."""
    if not model_axes and not data_named:
        return None
    from .rules import rule_for
    rule = rule_for(n)
    bad = set()
    for x, dims in zip(list(n.inputs) + [n], rule.tensors()):
        if x in batchy:
            bad |= set(_marked(rule, dims, batchy[x]))
    if not bad:
        return None
    return lambda f, a: not ((f in bad and a in model_axes) or (f not in bad and a in data_named))


def _held(n: Node, s: Sharding, mesh: Mesh, train_params: set, saved: set) -> float:
    """Bytes a value holds per device for the whole step: state (with its gradient when trained),
    batch inputs, and forward values the backward reads."""
    if n.op is Op.PARAMETER:
        b = float(np.prod(local_shape(n.shape, s, mesh), dtype=np.float64)) * n.dtype.itemsize
        return 2 * b if n in train_params else b
    if n in saved:
        return float(np.prod(local_shape(n.shape, s, mesh), dtype=np.float64)) * n.dtype.itemsize
    return 0.0


def _whole_blocks(v: Node, s: Sharding, mesh: Mesh, users) -> Sharding:
    """A hinted value's split dims laid out as its users cut them (a fused QKV result split per
    q/k/v block, as `block_layouts` lays out inputs): the layout the rest of the plan has."""
    from .mesh import DimSharding
    from .propagate import _blocks_downstream
    dims = list(s.dims)
    for d, ds in enumerate(dims):
        if ds.axes and not ds.strided:
            k = _blocks_downstream(v, d, users)
            if k > 1 and v.shape[d] % (k * mesh.group_size(ds.axes)) == 0:
                dims[d] = DimSharding(ds.axes, k)
    return Sharding(tuple(dims), s.partial)


def _drops_axes(have: Sharding, want: Sharding) -> bool:
    return any(a not in w.axes for h, w in zip(have.dims, want.dims) for a in h.axes)


HINT_OPS = frozenset({Op.DOT_GENERAL, Op.GATHER, Op.SCATTER})


def default_budget(hw) -> float:
    """The device's HBM less a margin (10%) for the runtime, workspaces and fragmentation."""
    return 0.9 * hw.hbm_bytes


def auto_seeds(g: Graph, mesh: Mesh, res: AutoResult, fixed_nodes) -> tuple[dict, dict]:
    """Seeds for the inputs the user left open, and output shardings for updated state."""
    from ..analysis.memory import donations
    from .propagate import PLAN, WEAK, TensorSharding
    seeds, outs = {}, {}
    users = g.users()
    for p in g.inputs:
        if p in fixed_nodes or p not in res.shardings:
            continue
        s = res.shardings[p]
        moved = sum(res.edge_cost.get((u, i), 0.0) for u in users.get(p, ()) for i, x in enumerate(u.inputs)
                    if x is p and u in res.choice and res.choice[u].fa is not None
                    and _drops_axes(s, res.choice[u].operands[i]))
        label = res.choice[p].label if p in res.choice else ""
        why = (f"auto: {label or 'replicated'}; plan {res.cost_s * 1e3:.4g} ms modeled, "
               f"{_gb(res.memory)} held of {_gb(res.budget)}")
        if moved > 0:
            why += f"; gathered for use ({moved * 1e6:.3g} us)"
        prio = WEAK if (moved > 0 and is_state(g, p)) else PLAN
        seeds[p] = TensorSharding(s, prio, True, why)
    # the ILP's choices inside the graph: hints propagation may still refine (not pinned)
    for v, st in res.choice.items():
        if v.op in HINT_OPS and v not in fixed_nodes and not st.out.is_replicated:
            seeds[v] = TensorSharding(_whole_blocks(v, st.out, mesh, users), PLAN, False, f"auto: {st.label}")
    for j, i in donations(g).items():
        p = g.inputs[i]
        if p in seeds and not seeds[p].sharding.is_replicated:
            outs[j] = seeds[p].sharding
    return seeds, outs
