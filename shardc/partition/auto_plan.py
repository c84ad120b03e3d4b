"""plan="auto" end to end: solve (auto.py), seed, propagate and lower as any plan, then price the
program with shardc.analyze against the hand plans dp and fsdp over the same specs; a hand plan
that the analysis models faster and that fits the budget wins (the ILP prices before lowering;
the note says so). `prog.auto` keeps the solve's figures and, for `shardc explain --plan auto`,
the alternatives it rejected for the largest tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ShardingError
from ..ir import Op
from .auto import AutoResult, auto_seeds, solve
from .auto_strategies import Pricer, axes_key
from .specs import resolve

HAND_PLANS = ("dp", "fsdp")


@dataclass
class AutoReport:
    result: AutoResult
    step_s: float                      # shardc.analyze's modeled step of the program
    memory: float                      # its state + saved activations per device
    chosen: str                        # "auto" or the hand plan that priced lower
    ilp_step_s: float = 0.0            # shardc.analyze's step of the ILP's own plan
    hand: dict = field(default_factory=dict)     # plan -> (step_s, memory) or an error text
    rejected: list = field(default_factory=list)  # (tensor name, bytes, chosen label, [(label, +s, mem)])

    def text(self) -> str:
        r = self.result
        lines = [f"auto plan: {self.chosen}; modeled step {self.step_s * 1e3:.4g} ms "
                 f"(the ILP's plan: {self.ilp_step_s * 1e3:.4g} ms), "
                 f"{self.memory / 1e9:.4g} GB per device of a {r.budget / 1e9:.4g} GB budget",
                 f"  ILP: {r.n_groups} groups in {r.n_classes} classes, {r.n_vars} variables, "
                 f"{r.status}, gap {r.gap:.2%}, built in {r.build_s:.2f} s, solved in {r.solve_s:.2f} s, "
                 f"objective {r.cost_s * 1e3:.4g} ms"]
        for plan, v in self.hand.items():
            lines.append(f"  plan {plan!r}: " + (v if isinstance(v, str) else
                                                 f"modeled step {v[0] * 1e3:.4g} ms, {v[1] / 1e9:.4g} GB"))
        if self.rejected:
            lines.append("  rejected alternatives for the largest tensors (cost of switching this tensor alone):")
        for name, nbytes, label, alts in self.rejected:
            lines.append(f"    {name} ({nbytes / 1e6:.3g} MB): chose {label}")
            for alabel, extra, mem in alts:
                why = "  (faster alone, but the plan then misses the memory budget)" if extra < 0 else ""
                lines.append(f"      {alabel:<40} {extra * 1e6:+.4g} us, {mem / 1e6:.4g} MB held{why}")
        return "\n".join(lines)


def modeled_memory(a) -> float:
    m = a.memory
    return float(m["params"] + m["grads"] + m["optimizer"] + m["data"] + m["activations"])


def partition_auto(g, mesh, specs, memory_budget=None, hardware="h200", time_limit: float = 30.0,
                   compare: bool = True, passes=()):
    """plan="auto" end to end; every candidate program gets the collective `passes` before it is
    priced (as `shardc.partition` gives them to every plan)."""
    from ..analysis import analyze
    from . import _partition as _bare
    from .passes import run_passes

    def _partition(*args, **kw):
        return run_passes(_bare(*args, **kw), passes, hardware)

    user, _ = resolve(g, mesh, specs)
    fixed = {n: s for n, (s, _, _) in user.items()}
    res = solve(g, mesh, fixed, hardware, memory_budget, time_limit)
    seeds, outs = auto_seeds(g, mesh, res, fixed)
    note = (f"plan 'auto' ({res.status}, gap {res.gap:.2%}): modeled {res.cost_s * 1e3:.4g} ms, "
            f"{res.memory / 1e9:.4g} GB per device of {res.budget / 1e9:.4g} GB")
    prog = _partition(g, mesh, specs, None, seeds, outs, [note])
    a = analyze(prog, hardware)
    if compare:   # the same plan with only its inputs seeded: lowering free to place the rest
        inputs_only = {n: st for n, st in seeds.items() if n.op is Op.PARAMETER}
        p2 = _partition(g, mesh, specs, None, inputs_only, outs, [note + " (inputs seeded, the rest propagated)"])
        a2 = analyze(p2, hardware)
        if a2.step_s < a.step_s and modeled_memory(a2) <= max(res.budget, modeled_memory(a)):
            prog, a = p2, a2
    report = AutoReport(res, a.step_s, modeled_memory(a), "auto", a.step_s)
    if compare:
        best = (a.step_s, None)
        from .auto_strategies import MODEL_AXIS_NAMES
        from .plans import data_axes
        from .propagate import USER, TensorSharding
        user_seeds = {n: TensorSharding(s) for n, s in fixed.items()}
        for plan in HAND_PLANS:
            try:
                hp = _partition(g, mesh, specs, plan)
            except ShardingError as e:
                report.hand[plan] = f"not applicable: {e}"
                continue
            ha = analyze(hp, hardware)
            mem = modeled_memory(ha)
            report.hand[plan] = (ha.step_s, mem)
            if mem <= res.budget and ha.step_s < best[0] * (1 - 1e-9):
                best = (ha.step_s, (plan, hp, ha))
        if best[1] is not None:
            plan, hp, ha = best[1]
            over = [x for x in data_axes(g, mesh, user_seeds) if x in MODEL_AXIS_NAMES]
            why = (f"; it puts the batch on {', '.join(map(repr, over))} too, which the ILP keeps for model "
                   f"parallelism by its name" if over else
                   "; the ILP prices collectives before lowering merges and defers them")
            hp.notes.insert(0, f"plan 'auto' took plan {plan!r}: shardc.analyze models it at "
                               f"{ha.step_s * 1e3:.4g} ms, the ILP's plan at {a.step_s * 1e3:.4g} ms once lowered{why}")
            report.chosen, report.step_s, report.memory = plan, ha.step_s, modeled_memory(ha)
            prog = hp
    report.rejected = rejected_alternatives(g, mesh, res, hardware)
    final = analyze(prog, hardware)    # priced again once every candidate is lowered (what a caller sees)
    report.step_s, report.memory = final.step_s, modeled_memory(final)
    prog.auto = report
    return prog


def rejected_alternatives(g, mesh, res: AutoResult, hardware, top: int = 5, per: int = 4) -> list:
    """For the largest inputs: the strategies the plan did not take, priced by what switching that
    one tensor alone (its neighbours as chosen) would add."""
    from ..analysis import hardware as hwmod
    pricer = Pricer(hwmod.get(hardware), mesh)
    users = g.users()
    out = []
    params = sorted((p for p in g.inputs if p in res.choice), key=lambda p: -p.nbytes)[:top]
    for p in params:
        chosen = res.choice[p]
        base = _local_cost(p, chosen.out, users, res, pricer)
        alts, seen = [], {axes_key(chosen.out)}
        for s in res.groups[p].strategies:
            if axes_key(s.out) in seen:
                continue
            seen.add(axes_key(s.out))
            extra = _local_cost(p, s.out, users, res, pricer) - base
            alts.append((f"{s.out}", extra, s.memory))
        alts.sort(key=lambda t: t[1])
        out.append((p.name, p.nbytes, f"{chosen.out} ({chosen.label})", alts[:per]))
    return out


def _local_cost(p, s, users, res: AutoResult, pricer: Pricer) -> float:
    """Resharding p (and its followers, as `s` makes them) into its consumers' chosen layouts."""
    from .auto_strategies import follow
    sh = {p: s}
    for n, op in res.groups[p].followers:
        sh[n] = follow(n, op, sh[n.inputs[op]], pricer.mesh)
    total = 0.0
    for t, ts in sh.items():
        for u in users.get(t, ()):
            if u in sh or u not in res.choice or res.choice[u].fa is None:
                continue
            for i, x in enumerate(u.inputs):
                if x is t:
                    total += pricer.reshard(t, ts, res.choice[u].operands[i])
    return total
