"""Communication per device per step: shardc's ledger against XLA's SPMD partitioner and closed forms.

    cd /work/main && .venv/bin/python bench/comm_vs_xla.py [--models gpt2,llama] [--size tiny|mini|small]
        [--steps forward,train] [--layouts dp,fsdp,tp,tp+sp,2d,tp8,dp2xtp4,ep] [--batch 8] [--seq N]
        [--frontend jax,torch,hf] [--kinds] [--json PATH]

For each zoo model, step (forward; SGD training step) and layout (DP, FSDP, Megatron TP, TP +
sequence parallel, 2-D dp×tp), the same JAX function goes through (expert parallelism, model
"moe-ep": ep, dp×ep, ep×tp rows of a dropless MoE layer, see bench/comm_moe.py)
  1. shardc: from_jax → partition; bytes = Σ ledger `bytes` (XLA's HLO-shape convention);
  2. XLA: jax.jit(fn, in_shardings, out_shardings) with the input and output shardings shardc
     settled on (a strided fused-QKV split becomes the plain spec of the same axes: what the user
     wrote), lowered and compiled on 8 JAX CPU devices; bytes counted in the compiled HLO text;
  3. a closed form where one is clean (Megatron: 2 all-reduces of b·s·h per layer forward, ...).
--frontend picks shardc's graph: the JAX twin (jax), the zoo's torch twin (torch), or Hugging
Face-style modules with SDPA attention (hf: shardc/models/hf_style.py, HF's names, Conv1D and
fused QKV, at the zoo config's shapes, specs for HF's layouts); XLA always runs the JAX twin (for
hf rows with the shardings shardc settles on the JAX twin). Several frontends give one table.
Both byte counts use the same convention (all-gather: result buffer; reduce-scatter: operand;
all-reduce, all-to-all, collective-permute: the buffer). XLA on CPU emits all-reduce +
dynamic-slice where GPUs get a reduce-scatter: the bytes are equal, the kinds differ.
Writes a table and bench/results/comm_vs_xla.json (see docs/architecture.md, "Performance").
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

N_DEVICES = 8
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (device count must be set before the backend starts)

try:
    jax.config.update("jax_num_cpu_devices", N_DEVICES)
except AttributeError:  # older jax: the XLA flag (must precede backend start-up)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={N_DEVICES}").strip()

import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import shardc  # noqa: E402
from shardc import Mesh, models  # noqa: E402
from shardc.partition.mesh import local_shape  # noqa: E402
from shardc.partition.plans import is_state, sequence_parallel_specs  # noqa: E402
from shardc.partition.program import wire_bytes  # noqa: E402
from shardc.partition.specs import leaf_key  # noqa: E402
from shardc.models import hf_style  # noqa: E402

ZOO = ("mlp", "gpt2", "llama", "moe")
EXPERT_PARALLEL = "moe-ep"  # bench/comm_moe.py: a dropless MoE layer, experts over 'ep' (JAX twin; XLA: GShard form)
STEPS = ("forward", "train")
LAYOUTS = ("dp", "fsdp", "tp", "tp+sp", "2d")
EXTRA_LAYOUTS = ("tp8", "dp2xtp4", "ep", "fsdp+sp")  # GPT-2 small's rows (12 heads over 8 devices); ep: the zoo MoE's
# experts and its batch split over one axis (GShard's expert parallelism)
FRONTENDS = ("jax", "torch", "hf")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "comm_vs_xla.json"


# ------------------------------------------------------------------------------------ layouts
def tp_size(m) -> int:
    """4, except Llama: at most its kv-head count (tiny and mini have 2), so that GQA keeps whole
    kv heads per device (repeat_kv maps q heads [j·r, (j+1)·r) to kv head j)."""
    if m.name == "llama":
        return max(t for t in (4, 2, 1) if m.config.n_kv_head % t == 0)
    return 4


def layout(m, name: str) -> tuple[dict, bool, bool, str | None]:
    """(mesh axes, tp specs?, sequence parallel?, plan) as tests/unit/test_partition_zoo.py builds them."""
    t = tp_size(m)
    return {"dp": (dict(dp=4), False, False, "dp"),
            "fsdp": (dict(dp=4), False, False, "fsdp"),
            "tp": (dict(tp=t), True, False, None),
            "tp+sp": (dict(tp=t), True, True, None),
            "2d": (dict(dp=2, tp=2), True, False, "dp"),
            "tp8": (dict(tp=8), True, False, None),
            "dp2xtp4": (dict(dp=2, tp=4), True, False, "dp"),
            "ep": (dict(dp=4), "dp", False, "dp"),  # the tp specs over the batch's axis
            "fsdp+sp": (dict(dp=2, tp=2), True, True, "fsdp")}[name]  # FSDP × tp with sequence parallelism


CLOSED_FORM_KIND = {"tp8": "tp", "dp2xtp4": "2d"}  # extra layouts: the closed form of their kind


def specs_for(m, g, tp: bool, sp: bool, hf: bool = False, batch_axes: tuple = ()) -> dict:
    axis = tp if isinstance(tp, str) else "tp"
    specs = (dict(hf_style.megatron_specs(m.name)) if hf else dict(m.tp_specs(axis))) if tp else {}
    if isinstance(tp, str):  # ep: the batch over the experts' axis too (the model's data inputs)
        specs.update({n: shardc.P(axis, *[None] * (x.rank - 1)) for n, x in zip(g.input_names, g.inputs)
                      if x.rank and not n.startswith(("params", "opt", "state"))})
    if sp:
        specs.update(sequence_parallel_specs(g, batch_axes=batch_axes))
    return specs


# --------------------------------------------------------------------------------- HLO bytes
DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(KINDS)
                      + r")(?P<start>-start)?\((?P<rest>.*)$", re.M)
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[([0-9,]*)\]")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")  # mesh['a'=2,'b'=4] {'b'}


def _array_bytes(text: str) -> list[int]:
    """Bytes of each array shape in `text` ("(f32[4,8]{1,0}, bf16[2]{0})" → [128, 4])."""
    out = []
    for dt, dims in _ARRAY.findall(text):
        if dt == "token":
            continue
        size = DTYPE_BYTES.get(dt, 1 if dt.startswith("f8") else None)
        if size is None:
            raise ValueError(f"unknown HLO element type {dt!r} in {text!r}")
        out.append(size * math.prod(int(d) for d in dims.split(",") if d))
    return out


def _operands(rest: str) -> str:
    """The operand list of an instruction: text up to the parenthesis that closes the call."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i]
    return rest


def _group_size(rest: str) -> int | None:
    m = _GROUPS_MESH.search(rest)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)) if a in sizes)
    m = _GROUPS_IOTA.search(rest)
    if m:
        return int(m.group(2))
    m = _GROUPS_LIST.search(rest)
    return len(m.group(1).split(",")) if m else None


def hlo_collectives(hlo: str, n_devices: int) -> list[dict]:
    """Every collective in HLO text (sync and -start forms; -done skipped) with its bytes:
    all-gather its result, reduce-scatter its operand, the others their buffer; tuples summed.
    `wire` is what each device sends with ring algorithms, as shardc's ledger counts it (a group
    not named in the text is all `n_devices`)."""
    found = []
    for mt in _OP_LINE.finditer(hlo):
        op, start, shape, rest = mt["op"], bool(mt["start"]), mt["shape"], mt["rest"]
        results = _array_bytes(shape)
        if op == "reduce-scatter":
            operands = _array_bytes(_operands(rest))
            if operands:
                nbytes = sum(operands)
            else:  # compiled HLO prints operands without types: result × group size
                nbytes = sum(results) * (_group_size(rest) or 1)
        elif start and op == "all-gather":       # ((operands), (results))
            nbytes = sum(results[len(results) // 2:])
        elif start and op == "collective-permute":  # (operand, result, u32[], u32[])
            nbytes = results[1] if len(results) > 1 else results[0]
        else:
            nbytes = sum(results)
        kind = op.replace("-", "_")
        group = _group_size(rest) or n_devices
        found.append({"kind": kind, "bytes": nbytes, "wire": wire_bytes(kind, nbytes, group), "async": start})
    return found


def by_kind(records) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind, nbytes in records:
        e = out.setdefault(kind, {"count": 0, "bytes": 0})
        e["count"] += 1
        e["bytes"] += nbytes
    return out


# ------------------------------------------------------------------------------- closed forms
def param_bytes(m, tp_axis: str = "tp", tp: int = 1) -> tuple[int, int, int]:
    """(Ψ, bytes of parameters the tensor-parallel specs split, of those the bytes one device
    holds over tp), float32. GQA with fewer KV heads than tp: each device holds a whole KV
    head, the KV weights are split over only as many devices as there are KV heads."""
    shapes = m.param_shapes()
    globs = list(m.tp_specs(tp_axis))
    psi = sum(4 * math.prod(s) for s in shapes.values())
    split = {n: 4 * math.prod(s) for n, s in shapes.items()
             if any(fnmatch.fnmatchcase(n, k) or fnmatch.fnmatchcase(leaf_key(n), k) for k in globs)}
    kv = getattr(m.config, "n_kv_head", tp)
    held = sum(b // (min(tp, kv) if ("k_proj" in n or "v_proj" in n) else tp) for n, b in split.items())
    return psi, sum(split.values()), held


def tp_activation_bytes(m, b: int, train: bool) -> tuple[int, str] | None:
    """Megatron all-reduce bytes for batch b (per dp group), or None without a clean form."""
    c = m.config
    if m.name in ("gpt2", "llama"):
        act = 2 * c.n_layer * b * c.seq_len * c.d_model * 4
        return (2 * act if train else act), ("4" if train else "2") + "·L·b·s·h·4"
    if m.name == "mlp":
        dims = c.dims()
        pairs = range(0, c.n_layers - c.n_layers % 2, 2)
        fwd = sum(b * dims[i + 2] * 4 for i in pairs)                  # after each row-parallel layer
        bwd = sum(b * dims[i] * 4 for i in pairs if i > 0)               # dx into each column layer but the first
        return (fwd + bwd if train else fwd), "Σ pairs b·d_out·4" + (" + b·d_in·4 (not 1st)" if train else "")
    return None


def closed_form(m, step: str, name: str, axes: dict, batch: int) -> dict | None:
    """{"bytes", "rel" ("=" exact, "≤" upper bound), "formula"} or None."""
    train = step == "train"
    name = CLOSED_FORM_KIND.get(name, name)
    dp, tp = axes.get("dp", 1), axes.get("tp", 1)
    psi, split, held = param_bytes(m, tp=tp)
    rep = psi - split
    if m.name == "moe":
        return None  # expert capacity is filled in token order over the whole batch: not batch-parallel
    if name == "dp":
        return dict(bytes=psi + 4, rel="=", formula="Ψ + 4 (loss)") if train else dict(bytes=0, rel="=", formula="0")
    if name == "fsdp":
        if train:
            return dict(bytes=3 * psi + 4, rel="≤", formula="3Ψ + 4 (ZeRO-3)")
        # each parameter gathered once (the tied LM head reuses the gathered wte); less where
        # moving a layer's activations is cheaper than its weights
        return dict(bytes=psi, rel="≤", formula="Ψ (all-gather each parameter once)")
    act = tp_activation_bytes(m, batch // dp, train)
    if act is None:
        return None
    nbytes, formula = act
    if name == "tp":
        return dict(bytes=nbytes, rel="=", formula=formula)
    if name == "tp+sp":
        if m.name not in ("gpt2", "llama"):
            return None  # mlp/moe: dim 1 of the input is not a sequence
        if train:  # AG+RS both ways, plus grads of params replicated over tp where they see
            # seq-split activations (not where the gathered activations serve them)
            return dict(bytes=2 * nbytes + rep + 4, rel="≤", formula="8·L·b·s·h·4 + Ψ_rep + 4")
        return dict(bytes=2 * nbytes, rel="=", formula="2·L·b·s·h·4 AG + same RS")
    if name == "fsdp+sp":
        return None  # it depends on which state the plan can split over dp: fsdp_sp_closed_form
    if name == "2d":
        if train:  # tp all-reduces of b/dp + dp all-reduce of each device's gradients + loss
            return dict(bytes=nbytes + rep + held + 4, rel="=", formula=formula + " (b/dp) + Ψ_rep + Ψ_tp/tp + 4")
        return dict(bytes=nbytes, rel="=", formula=formula + " (b/dp)")
    return None


def fsdp_sp_closed_form(m, g, prog, tp_specs: dict, axes: dict, batch: int, train: bool) -> dict | None:
    """FSDP × tp with sequence parallelism: SP's all-gather and reduce-scatter of (b/dp)·s·h
    where Megatron all-reduces, and ZeRO-3 of the tp layout: each parameter the plan splits over
    dp gathered once for use (its tp-layout bytes, Ψ_dp) and its gradient reduce-scattered once
    (Ψ_dp again), the rest (tp-split biases too small to split over dp) all-reduced over dp, and
    the loss's 4 B. State tp replicates is stored over dp and tp (its gradient is summed over
    both: each device saw other tokens), so no all-reduce over tp is left. Exact."""
    if m.name not in ("gpt2", "llama"):
        return None
    nbytes, formula = tp_activation_bytes(m, batch // axes["dp"], train)
    tp_prog = shardc.partition(g, Mesh(tp=axes["tp"]), tp_specs)
    use = {p: math.prod(local_shape(p.shape, s, tp_prog.mesh)) * p.dtype.itemsize
           for p, s in zip(g.inputs, tp_prog.input_shardings) if is_state(g, p)}
    stored = dict(zip(g.inputs, prog.input_shardings))
    psi_dp = sum(b for p, b in use.items() if "dp" in stored[p].used_axes)
    rest = sum(use.values()) - psi_dp
    return dict(bytes=2 * nbytes + (2 * psi_dp + rest + 4 if train else psi_dp), rel="=",
                formula="2·" + formula + " (b/dp) + " + ("2Ψ_dp + Ψ_rest + 4" if train else "Ψ_dp"))


# ------------------------------------------------------------------------------------- rows
def capture(m, step: str, batch: int, frontend: str = "jax"):
    """(JAX fn, its args, shardc's graph, capture ms, the JAX graph): with --frontend torch the
    graph is the torch twin's (from_torch) and XLA still runs the JAX twin of the same shapes."""
    fn, args = m.jax_step(step == "train", batch, lr=0.1)
    t0 = time.perf_counter()
    g_jax = shardc.from_jax(fn, *args)
    if frontend == "jax":
        return fn, args, g_jax, (time.perf_counter() - t0) * 1e3, g_jax
    t0 = time.perf_counter()
    if frontend == "hf":  # (the training step's loss: the mean over all positions, as the JAX twin's)
        c = hf_style.Cfg.of(m.config)
        if step == "train":
            hfn, hargs = hf_style.sgd_step(m.name, c, batch, lr=0.1, loss="mean")
            g = shardc.from_torch(hfn, hargs, capture="make_fx")
        else:
            g = shardc.from_torch(hf_style.build(m.name, c), (hf_style.ids(c, batch),))
        g.hf_style = True
    else:
        g, _ = m.capture(step == "train", "torch", batch, lr=0.1)
    return fn, args, g, (time.perf_counter() - t0) * 1e3, g_jax


def same_order(names_from, shardings, names_to) -> list:
    """`shardings` (of values named `names_from`) in the order of `names_to` (the JAX twin's):
    parameters matched by name (the last pytree key: "params['wte.weight']" is "wte.weight"),
    data arguments and unkeyed outputs in order."""
    keys = {leaf_key(n) for n in names_to if leaf_key(n) != n}
    by_key, rest = {}, []
    for n, s in zip(names_from, shardings):
        if leaf_key(n) in keys:
            by_key[leaf_key(n)] = s
        else:
            rest.append(s)
    return [by_key[leaf_key(n)] if leaf_key(n) in by_key and leaf_key(n) != n else rest.pop(0)
            for n in names_to]


def jax_mesh(axes: dict):
    n = math.prod(axes.values())
    return jax.make_mesh(tuple(axes.values()), tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                         devices=jax.devices()[:n])


_XLA_SEEN: dict[tuple, dict] = {}  # the same JAX step with the same shardings compiles to the same HLO


def xla_collectives(fn, args, prog, axes: dict, g_jax=None, key: tuple = ()) -> dict:
    """XLA's collectives for the JAX step `fn` given the shardings of `prog`; `key` names the
    step (model, size, step, batch): rows of several frontends that settle on the same
    shardings share one compile."""
    mesh = jax_mesh(dict(prog.mesh.axes))  # (the program's mesh: sub-axes where KV heads are replicated)
    ins, outs = prog.input_shardings, prog.output_shardings
    if g_jax is not None and g_jax is not prog.graph:  # a torch twin's program: match by name
        ins = same_order([p.name for p in prog.graph.inputs], ins, [p.name for p in g_jax.inputs])
        outs = same_order(prog.graph.output_names, outs, g_jax.output_names)
    seen = key and key + (tuple(prog.mesh.axes.items()), tuple(map(str, ins)), tuple(map(str, outs)))
    if seen and seen in _XLA_SEEN:
        return dict(_XLA_SEEN[seen], lower_ms=0.0, compile_ms=0.0, total_ms=0.0)  # (compiled for an earlier row)
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    if len(leaves) != len(ins):
        raise RuntimeError(f"{len(leaves)} argument leaves but {len(ins)} graph inputs")
    # Sharding.spec() drops `outer` (strided fused-dim splits): XLA gets the plain spec of the same axes.
    named = lambda s: NamedSharding(mesh, PartitionSpec(*s.spec()))  # noqa: E731
    in_sh = jax.tree_util.tree_unflatten(in_tree, [named(s) for s in ins])
    out_leaves, out_tree = jax.tree_util.tree_flatten(jax.eval_shape(fn, *args))
    if len(out_leaves) != len(outs):
        raise RuntimeError(f"{len(out_leaves)} output leaves but {len(outs)} graph outputs")
    out_sh = jax.tree_util.tree_unflatten(out_tree, [named(s) for s in outs])
    jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    colls = hlo_collectives(compiled.as_text(), math.prod(axes.values()))
    out = dict(bytes=sum(c["bytes"] for c in colls), wire=sum(c["wire"] for c in colls), kinds=by_kind((c["kind"], c["bytes"]) for c in colls),
               n_async=sum(c["async"] for c in colls), lower_ms=(t1 - t0) * 1e3, compile_ms=(t2 - t1) * 1e3,
               total_ms=(t2 - t0) * 1e3)
    if seen:
        _XLA_SEEN[seen] = out
    return out


def run_row(m, step: str, lay: str, captured, batch: int) -> dict:
    fn, args, g, capture_ms, g_jax = captured
    axes, tp, sp, plan = layout(m, lay)
    hf = getattr(g, "hf_style", False)
    row = dict(model=m.name, size=m.size, step=step, layout=lay, mesh=axes, plan=plan,
               frontend="jax" if g is g_jax else "hf" if hf else "torch",
               tp_specs=tp, sequence_parallel=sp, batch=batch, capture_ms=capture_ms)
    cf = closed_form(m, step, lay, axes, batch)
    row["closed_form"] = cf
    try:
        t0 = time.perf_counter()
        batch_axes = ("dp",) if sp and "dp" in axes else ()  # (SP under a dp plan: the batch over dp too)
        prog = shardc.partition(g, Mesh(axes), specs_for(m, g, tp, sp, hf, batch_axes), plan)
        row["shardc_partition_ms"] = (time.perf_counter() - t0) * 1e3
        # XLA gets the shardings shardc settles on, of the JAX twin (hf: its own names and layouts)
        xla_prog = shardc.partition(g_jax, Mesh(axes), specs_for(m, g_jax, tp, sp, False, batch_axes), plan) \
            if hf else prog
        if lay == "fsdp+sp":
            cf = row["closed_form"] = fsdp_sp_closed_form(m, g, prog, specs_for(m, g, tp, False, hf), axes, batch,
                                                          step == "train")
    except Exception as e:  # a benchmark reports failures as rows
        row["error"] = f"shardc: {type(e).__name__}: {e}"
        return row
    row["shardc_bytes"] = sum(c.bytes for c in prog.collectives)
    row["shardc_wire_bytes"] = sum(c.wire_bytes for c in prog.collectives)
    row["shardc_kinds"] = by_kind((c.kind, c.bytes) for c in prog.collectives)
    row["shardc_ledger"] = [dict(kind=c.kind, axes=list(c.axes), bytes=c.bytes, wire_bytes=c.wire_bytes,
                                 tensor=c.tensor, source=c.source, reason=c.reason) for c in prog.collectives]
    row["strided_inputs"] = [p.name for p, s in zip(g.inputs, prog.input_shardings)
                             if any(d.outer > 1 for d in s.dims)]
    row["input_specs"] = {p.name: str(s) for p, s in zip(g.inputs, prog.input_shardings) if not s.is_replicated}
    row["output_specs"] = {n: str(s) for n, s in zip(g.output_names, prog.output_shardings) if not s.is_replicated}
    try:
        x = xla_collectives(fn, args, xla_prog, axes, g_jax, key=(m.name, m.size, getattr(m.config, "seq_len", None), step, batch))
    except Exception as e:
        row["error"] = f"xla: {type(e).__name__}: {e}"
        return row
    row["xla_bytes"], row["xla_kinds"], row["xla_async_ops"] = x["bytes"], x["kinds"], x["n_async"]
    row["xla_wire_bytes"] = x["wire"]
    row["xla_lower_ms"], row["xla_compile_ms"], row["xla_lower_compile_ms"] = x["lower_ms"], x["compile_ms"], x["total_ms"]
    row["ratio"] = row["shardc_bytes"] / x["bytes"] if x["bytes"] else (1.0 if row["shardc_bytes"] == 0 else math.inf)
    flags = []
    if row["shardc_bytes"] > x["bytes"] or row["shardc_wire_bytes"] > x["wire"]:
        flags.append(">XLA")
    if cf is not None:
        if cf["rel"] == "=" and row["shardc_bytes"] != cf["bytes"]:
            flags.append("≠closed")
        if cf["rel"] == "≤" and row["shardc_bytes"] > cf["bytes"]:
            flags.append(">bound")
    row["flags"] = flags
    return row


# ------------------------------------------------------------------------------------ table
SHORT = {"all_reduce": "AR", "all_gather": "AG", "reduce_scatter": "RS", "all_to_all": "A2A",
         "collective_permute": "CP"}


def kinds_text(kinds: dict | None) -> str:
    if not kinds:
        return "-"
    return " ".join(f"{SHORT.get(k, k)}{v['count']}:{v['bytes']:,}" for k, v in sorted(kinds.items()))


def table_rows(rows, with_kinds: bool):
    head = ["model", "frontend", "step", "layout", "mesh", "shardc B", "XLA B", "closed form", "shardc/XLA",
            "shardc wire", "XLA wire", "shardc part ms", "XLA compile ms", "flag"]
    if with_kinds:
        head += ["shardc kinds", "XLA kinds"]
    body = []
    for r in rows:
        mesh = "×".join(f"{k}{v}" for k, v in r["mesh"].items())
        cf = r.get("closed_form")
        cf_text = "-" if cf is None else f"{cf['rel'] if cf['rel'] != '=' else ''}{cf['bytes']:,}"
        if "error" in r:
            line = [r["model"], r.get("frontend", "-"), r["step"], r["layout"], mesh, f"{r.get('shardc_bytes', '-')}", "-", cf_text, "-",
                    f"{r.get('shardc_wire_bytes', '-')}", "-",
                    f"{r.get('shardc_partition_ms', 0):.0f}" if "shardc_partition_ms" in r else "-", "-",
                    "ERROR " + r["error"][:60]]
        else:
            line = [r["model"], r.get("frontend", "-"), r["step"], r["layout"], mesh, f"{r['shardc_bytes']:,}", f"{r['xla_bytes']:,}",
                    cf_text, f"{r['ratio']:.2f}" if math.isfinite(r["ratio"]) else "inf",
                    f"{r['shardc_wire_bytes']:,}", f"{r['xla_wire_bytes']:,}",
                    f"{r['shardc_partition_ms']:.0f}", f"{r['xla_lower_compile_ms']:.0f}", " ".join(r["flags"])]
        if with_kinds:
            line += [kinds_text(r.get("shardc_kinds")), kinds_text(r.get("xla_kinds"))]
        body.append(line)
    return head, body


def print_table(rows, title: str, with_kinds: bool) -> None:
    head, body = table_rows(rows, with_kinds)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None:
        t = Table(title=title)
        for i, h in enumerate(head):
            t.add_column(h, justify="right" if 5 <= i <= 12 else "left", no_wrap=i < 14)
        for line, r in zip(body, rows):
            t.add_row(*line, style="red" if ("error" in r or ">XLA" in r.get("flags", ())) else None)
        Console(width=max(200, 40 * with_kinds + 200)).print(t)
        return
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(head)]
    print(title)
    for line in [head, ["-" * w for w in widths], *body]:
        print("  ".join(c.rjust(w) if 5 <= i <= 12 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))


# ------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ZOO + (EXPERT_PARALLEL,)),
                    help="comma-separated subset of " + ",".join(ZOO + (EXPERT_PARALLEL,)))
    ap.add_argument("--size", default="tiny", choices=("tiny", "mini", "small"))
    ap.add_argument("--seq", type=int, default=None, help="override the config's sequence length (GPT-2 small rows: 128)")
    ap.add_argument("--layers", type=int, default=None, help="override GPT-2's and Llama's layer count (quick checks)")
    ap.add_argument("--steps", default=",".join(STEPS), help="forward,train")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="subset of " + ",".join(LAYOUTS + EXTRA_LAYOUTS))
    ap.add_argument("--batch", type=int, default=8, help="global batch (a multiple of 4 for dp=4)")
    ap.add_argument("--kinds", action="store_true", help="also print per-kind counts and bytes")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the figures")
    ap.add_argument("--frontend", default="jax",
                    help="comma-separated: capture shardc's graph from the JAX twins (jax), the torch twins (torch) "
                         "or Hugging Face-style modules (hf: gpt2 and llama); XLA always runs the JAX twin")
    a = ap.parse_args(argv)
    for opt, valid in (("models", ZOO + (EXPERT_PARALLEL,)), ("steps", STEPS), ("layouts", LAYOUTS + EXTRA_LAYOUTS),
                       ("frontend", FRONTENDS)):
        chosen = [x.strip() for x in getattr(a, opt).split(",") if x.strip()]
        bad = [x for x in chosen if x not in valid]
        if bad or not chosen:
            ap.error(f"--{opt}: {bad or 'empty'} not in {', '.join(valid)}")
        setattr(a, opt, chosen)
    if "hf" in a.frontend and not set(a.models) & {"gpt2", "llama"}:
        ap.error("--frontend hf: Hugging Face-style modules exist for gpt2 and llama only")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if len(jax.devices()) < N_DEVICES:
        print(f"need {N_DEVICES} JAX CPU devices, have {len(jax.devices())} (jax was started before this script?)",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    rows = []
    for frontend in a.frontend:
        for name in a.models:
            if name == EXPERT_PARALLEL:
                if frontend == "jax":  # (a JAX function only)
                    import comm_moe
                    rows += comm_moe.rows(a.steps, a.batch, jax_mesh, hlo_collectives, by_kind)
                continue
            if frontend == "hf" and name not in ("gpt2", "llama"):
                continue
            over = {"seq_len": a.seq} if a.seq else {}
            if a.layers and name in ("gpt2", "llama"):
                over["n_layer"] = a.layers
            m = models.get(f"{name}:{a.size}", **over)
            for step in a.steps:
                try:
                    captured = capture(m, step, a.batch, frontend)
                except Exception as e:
                    for lay in a.layouts:
                        axes = layout(m, lay)[0]
                        rows.append(dict(model=name, size=a.size, step=step, layout=lay, mesh=axes, frontend=frontend,
                                         error=f"capture: {type(e).__name__}: {e}"))
                    continue
                for lay in a.layouts:
                    rows.append(run_row(m, step, lay, captured, a.batch))
    elapsed = time.perf_counter() - t_start
    print_table(rows, f"communication per device per step: shardc ({', '.join(a.frontend)}) vs XLA SPMD on the JAX twins "
                      f"({a.size}, batch {a.batch}, bytes)",
                a.kinds)
    over = [r for r in rows if ">XLA" in r.get("flags", ())]
    errors = [r for r in rows if "error" in r]
    part = sum(r.get("shardc_partition_ms", 0) for r in rows)
    xla = sum(r.get("xla_lower_compile_ms", 0) for r in rows if "xla_bytes" in r)
    print(f"{len(rows)} rows in {elapsed:.1f} s; shardc > XLA in {len(over)}, errors in {len(errors)}; "
          f"partition {part:.0f} ms vs XLA lower+compile {xla:.0f} ms in all"
          + (f" ({xla / part:.1f}x)" if part else ""))
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(bench="comm_vs_xla", size=a.size, batch=a.batch, seq=a.seq, layers=a.layers, frontend=a.frontend, jax=jax.__version__, shardc=shardc.__version__,
                python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
                n_jax_devices=len(jax.devices()), elapsed_s=elapsed,
                tp_size={n: tp_size(models.get(f"{n}:{a.size}")) for n in a.models if n != EXPERT_PARALLEL},
                convention="bytes per device per step; all-gather: result, reduce-scatter: operand, "
                           "all-reduce/all-to-all/collective-permute: buffer (XLA HLO shapes)")
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    print(f"wrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
