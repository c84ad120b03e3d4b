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

Saved activations are the batch-dependent forward values the backward reads (see
`saved_activations`).

Liveness, in program order (the schedule the runtimes follow): every input is live at the start;
batch inputs and state that no output updates stay live to the end (the caller holds them);
donated inputs die after their last use; each other value is allocated when it is computed
(reshapes included: the model does not alias views) and freed after its last user; outputs live
to the end. `peak` is the largest sum of live bytes at any point, the instant an op's result is
allocated while its operands are still live.
"""
from __future__ import annotations

import re

from ..ir import Graph, Op
from ..ir.graph import is_state

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


def state_bytes(g: Graph, local: Graph) -> dict[str, int]:
    """params / grads / optimizer / data bytes per device, from the local inputs' (padded) shapes."""
    roles, donated = input_roles(g), donations(g)
    out = {"params": 0, "grads": 0, "optimizer": 0, "data": 0}
    train = any(roles[g.inputs[i].name] == "param" for i in donated.values())
    for p, lp in zip(g.inputs, local.inputs):
        role = roles[p.name]
        if role == "param":
            out["params"] += lp.nbytes
            if train:
                out["grads"] += lp.nbytes
        elif role == "optimizer":
            out["optimizer"] += lp.nbytes
        else:
            out["data"] += lp.nbytes
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
    forward, stack = set(), [local.outputs[j]]
    while stack:
        n = stack.pop()
        if n not in forward:
            forward.add(n)
            stack.extend(n.inputs)
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


def saved_activations(g: Graph, local: Graph) -> int:
    """Bytes of forward values the backward reads: values that depend on the batch and that the
    loss depends on, with a user that the loss does not depend on. Values computed from state
    alone (a transposed weight, a cast, a causal mask) are not activations: they do not grow
    with the batch, and a compiler folds most of them into the ops that use them (the peak
    still counts them where they are live). 0 when the program updates no state (no backward)."""
    return sum(n.nbytes for n in saved_values(g, local)[2])


def memory(g: Graph, local: Graph) -> dict[str, int]:
    """The per-device memory breakdown `analyze` reports."""
    out = state_bytes(g, local)
    peak, trace = liveness(g, local)
    inputs = sum(p.nbytes for p in local.inputs)
    act = saved_activations(g, local)
    if not act and not donations(g):
        act = peak - inputs             # a forward: the most intermediate bytes live at once
    return {"params": out["params"], "grads": out["grads"], "optimizer": out["optimizer"],
            "data": out["data"], "activations": act, "peak": peak}

