"""Per-device memory of a partitioned program: state bytes exact from shardings and dtypes, saved
activations, and the peak of live buffers over the program order.

Inputs are classified by name (partition/plans.py's `is_state`): model-owned tensors and leaves of
dict arguments are state, everything else is batch data. Among state, the first dict argument
(`params` of a train step) and a torch model's bound parameters are parameters; the other state
arguments (`opt_state['m'][...]`, `['v']`, `['step']`) are optimizer state. An output whose pytree
key, shape and dtype match a state input is that input updated: the program is then a training
step, the input is donated (freed after its last use, as a donated buffer in XLA or an in-place
update in torch) and its gradients count as one more copy of each parameter in its own dtype and
sharding (the sharding the update consumes them in).

Saved activations are the batch-dependent forward values the backward reads (`saved_values`),
counted as a fusing implementation keeps them (`kept_values`): the captured program's backward
reads more values than Megatron's or XLA's keeps, because autodiff of decomposed ops saves
intermediates that those recompute inside the backward's kernels at no memory cost (layer norm's
x−μ twice and (x−μ)·rstd, GELU's tanh and x³ terms, softmax's exp next to its output).

Liveness, in program order (the schedule the runtimes follow): every input is live at the start;
batch inputs and state that no output updates stay live to the end (the caller holds them);
donated inputs die after their last use; each other value is allocated when it is computed
(reshapes included: the model does not alias views) and freed after its last user; outputs live
to the end. `peak` is the largest sum of live bytes at any point, the instant an op's result is
allocated while its operands are still live.
"""
from __future__ import annotations

import re

import numpy as np

from ..ir import Graph, Op
from ..ir.graph import ancestors, is_state
from ..ir.ops import ELEMENTWISE

_ROOT = re.compile(r"^([^\[]*)")
_OUT = re.compile(r"^out\[\d+\]")


def input_roles(g: Graph) -> dict[str, str]:
    """Input name -> "param" | "optimizer" | "data"."""
    roles, param_root = {}, None
    for p in g.inputs:
        if not is_state(g, p):
            roles[p.name] = "data"
            continue
        if p.name in g.bound:
            roles[p.name] = "param"
            continue
        root = _ROOT.match(p.name).group(1)
        if param_root is None:
            param_root = root
        roles[p.name] = "param" if root == param_root else "optimizer"
    return roles


def _key(name: str, output: bool) -> str:
    """The pytree key below the argument (inputs) or below the output's tuple index."""
    return _OUT.sub("", name) if output else name[len(_ROOT.match(name).group(1)):]


def donations(g: Graph) -> dict[int, int]:
    """Output index -> index of the state input it updates (same key below the root, shape, dtype)."""
    by_key = {}
    for i, p in enumerate(g.inputs):
        if is_state(g, p):
            by_key.setdefault((_key(p.name, False) or p.name, p.shape, p.dtype), i)
    out = {}
    for j, (o, name) in enumerate(zip(g.outputs, g.output_names)):
        if o.op is Op.PARAMETER:
            continue
        i = by_key.get((_key(name, True), o.shape, o.dtype))
        if i is not None and i not in out.values():
            out[j] = i
    return out


def state_bytes(g: Graph, local: Graph, times: dict | None = None) -> dict[str, int]:
    """params / grads / optimizer / data bytes per device, from the local inputs' (padded) shapes
    (`times`: how many layers each input stands for, ir/blocks.multiplicity)."""
    roles, donated = input_roles(g), donations(g)
    out = {"params": 0, "grads": 0, "optimizer": 0, "data": 0}
    train = any(roles[g.inputs[i].name] == "param" for i in donated.values())
    for p, lp in zip(g.inputs, local.inputs):
        role, nbytes = roles[p.name], lp.nbytes * (times or {}).get(lp, 1)
        if role == "param":
            out["params"] += nbytes
            if train:
                out["grads"] += nbytes
        elif role == "optimizer":
            out["optimizer"] += nbytes
        else:
            out["data"] += nbytes
    return out


def liveness(g: Graph, local: Graph) -> tuple[int, list[int]]:
    """(peak bytes, live bytes after each node of local.nodes) under the rules above."""
    last = {}
    for k, n in enumerate(local.nodes):
        for i in n.inputs:
            last[i] = k
    outputs = set(local.outputs)
    donated_inputs = {local.inputs[i] for i in donations(g).values()}
    held = (set(local.inputs) - donated_inputs) | outputs
    live = sum(p.nbytes for p in local.inputs)
    peak, trace = live, []
    for k, n in enumerate(local.nodes):
        if n.op is not Op.PARAMETER:
            live += n.nbytes
            peak = max(peak, live)
        for i in set(n.inputs):
            if last[i] == k and i not in held:
                live -= i.nbytes
        if n not in last and n not in held and n.op is not Op.PARAMETER:
            live -= n.nbytes           # computed and never used
        trace.append(live)
    return peak, trace


def loss_output(g: Graph) -> int | None:
    """Index of the step's loss: the first output that updates no state."""
    donated = donations(g)
    for j, o in enumerate(g.outputs):
        if j not in donated:
            return j
    return None


def saved_values(g: Graph, local: Graph):
    """(forward, batch, saved) value sets of a training step: what the loss depends on, what
    depends on the batch, and the batch-dependent forward values the backward reads. Empty sets
    when the program updates no state (no backward)."""
    j = loss_output(g) if donations(g) else None
    if j is None:
        return set(), set(), set()
    forward = ancestors([local.outputs[j]])
    roles = input_roles(g)
    batch = {lp for p, lp in zip(g.inputs, local.inputs) if roles[p.name] == "data"}
    for n in local.nodes:
        if n not in batch and any(i in batch for i in n.inputs):
            batch.add(n)
    saved = set()
    for n in local.nodes:
        if n in forward:
            continue
        for i in n.inputs:
            if i in forward and i in batch and i.op is not Op.PARAMETER:
                saved.add(i)
    return forward, batch, saved


_VIEWS = frozenset({Op.BROADCAST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE})
_RECOMPUTABLE = ELEMENTWISE | _VIEWS | {Op.CONSTANT, Op.IOTA}


def _cse_key(n, rep: dict):
    attrs = tuple(sorted((k, id(v) if isinstance(v, np.ndarray) else repr(v)) for k, v in n.attrs.items()))
    return (n.op, attrs, n.shape, n.dtype, tuple(rep[i] for i in n.inputs))


def kept_values(local: Graph, forward: set, batch: set, saved: set) -> set:
    """The saved values a fusing implementation keeps for the backward (Korthikanti et al.'s
    count: each matmul's inputs, each nonlinearity's input, norms' inputs), from what the
    captured backward reads:
    - one copy of values computed twice the same way (x−μ in a decomposed layer norm);
    - every value a backward matmul reads (through views) is kept; one it reads all-gathered is
      kept as the gather's operand and gathered again in the backward (Megatron's sequence
      parallelism keeps the norm's sequence-split output);
    - any other value is dropped when elementwise ops and views compute it from kept values,
      state and row statistics (values at most 1/8 its size): the backward's kernels recompute
      it (GELU's tanh from its input, (x−μ)·rstd from x−μ);
    - a value whose kept user divides or multiplies it by a row statistic is that user undone
      (softmax's exp = output · Σ: PyTorch's and jax.nn.softmax's own backward read the output).
    Only the captured program's own values are counted, in its own dtypes."""
    rep: dict = {}
    seen: dict = {}
    for n in local.nodes:
        if n in forward:
            rep[n] = seen.setdefault(_cse_key(n, rep), n)
        else:
            rep[n] = n
    kept = {rep[n] for n in saved}
    protected = set()
    for n in local.nodes:
        if n.op is not Op.DOT_GENERAL or n in forward:
            continue
        for x in n.inputs:
            while x not in forward and x.op in _VIEWS | {Op.CAST}:
                x = x.inputs[0]
            x = rep.get(x, x)
            if x in kept:
                if x.op is Op.ALL_GATHER and x.inputs[0] in batch:
                    kept.discard(x)
                    x = rep[x.inputs[0]]
                    kept.add(x)
                protected.add(x)

    def small(x, n) -> bool:
        while x.op in _VIEWS | {Op.CAST}:
            x = x.inputs[0]
        return 8 * x.size <= n.size

    memo: dict = {}

    def free(x, n) -> bool:
        """`x` is at hand for recomputing `n` without keeping anything more."""
        x = rep.get(x, x)
        if x in kept or x not in batch or small(x, n):
            return True
        key = (x, n.size)
        if key not in memo:
            memo[key] = False
            memo[key] = x.op in _RECOMPUTABLE and all(free(i, n) for i in x.inputs)
        return memo[key]

    users, position = {}, {}
    for k, v in enumerate(local.nodes):
        position[v] = k
        for i in v.inputs:
            users.setdefault(i, []).append(v)
    def held(u) -> bool:  # kept, or kept reshaped (a softmax output read by a batched matmul)
        return u in kept or any(v.op in (Op.RESHAPE, Op.TRANSPOSE, Op.CAST) and held(v) for v in users.get(u, ()))

    for n in sorted(kept - protected, key=position.get, reverse=True):  # later values first
        kept.discard(n)
        if n.op in _RECOMPUTABLE and all(free(i, n) for i in n.inputs):
            continue
        undone = any(held(u) and (u.op is Op.DIV and u.inputs[0] is n or u.op is Op.MUL)
                     and all(i not in batch or small(i, n) for i in u.inputs if i is not n)
                     for u in users.get(n, ()))
        if not undone:
            kept.add(n)
    return kept


def saved_activations(g: Graph, local: Graph) -> int:
    """Bytes of forward values the backward reads: values that depend on the batch and that the
    loss depends on, with a user that the loss does not depend on. Values computed from state
    alone (a transposed weight, a cast, a causal mask) are not activations: they do not grow
    with the batch, and a compiler folds most of them into the ops that use them (the peak
    still counts them where they are live). 0 when the program updates no state (no backward)."""
    return sum(n.nbytes for n in kept_values(local, *saved_values(g, local)))


def memory(g: Graph, local: Graph, times: dict | None = None, whole: tuple | None = None) -> dict[str, int]:
    """The per-device memory breakdown `analyze` reports. For a repeated block (ir/blocks.py)
    `times` says how many layers each value of `local` stands for, and `whole` is the (global,
    per-device) whole program, whose order the liveness peak walks."""
    times = times or {}
    out = state_bytes(g, local, times)
    peak, trace = liveness(*(whole or (g, local)))
    inputs = sum(p.nbytes for p in (whole[1] if whole else local).inputs)
    act = sum(n.nbytes * times.get(n, 1) for n in kept_values(local, *saved_values(g, local)))
    if not act and not donations(g):
        act = peak - inputs             # a forward: the most intermediate bytes live at once
    return {"params": out["params"], "grads": out["grads"], "optimizer": out["optimizer"],
            "data": out["data"], "activations": act, "peak": peak}

