"""Every op of the closed enum has its entry in every stage's table: the shape rules, the
evaluator, the printer and parser, the frontends that can produce it, the factor rules, both
kernel emitters and both runtime op tables. One test walks the enum over all of them and names
every missing entry, so adding an op is: one line in ir/ops.py, then whatever this test lists."""
import re
from pathlib import Path

import pytest

import shardc
from shardc import Mesh, partition
from shardc.errors import UnsupportedOpError
from shardc.ir import EVAL, Op, parse_graph, print_graph, verify
from shardc.ir import shapes
from shardc.ir.ops import COLLECTIVES
from shardc.partition import rules
from shardc.runtime import jax_exec, torch_ops

from op_samples import sample

PKG = Path(shardc.__file__).parent
# ops only the partitioner makes (no user program contains them; no kernel computes a collective)
PARTITIONER_ONLY = COLLECTIVES | {Op.AXIS_INDEX}
FRONTEND_FILES = {  # the files a frontend builds IR in (ir/emitter.py: the builder both use)
    "jax frontend (frontend/jax*.py)": ["frontend/jax*.py", "frontend/math_ops.py", "frontend/conv.py",
                                        "frontend/bessel.py", "ir/emitter.py"],
    "torch frontend (frontend/torch*.py)": ["frontend/torch*.py", "frontend/math_ops.py", "frontend/conv.py",
                                            "frontend/bessel.py", "ir/emitter.py"],
}


def _named_in(patterns) -> set[str]:
    text = "".join(p.read_text() for pat in patterns for p in sorted(PKG.glob(pat)))
    return set(re.findall(r"\bOp\.([A-Z_0-9]+)\b", text))


def _round_trips(op: Op) -> str | None:
    try:
        text = print_graph(verify(sample(op)))
    except Exception as e:  # noqa: BLE001 - reported as the missing piece
        return f"{type(e).__name__}: {e}"
    if f"= {op.value}(" not in text or print_graph(parse_graph(text)) != text:
        return "does not print and parse back"
    return None


def _emits(op: Op, target: str) -> str | None:
    """Partition the op's sample on one device and generate its kernels for `target`."""
    try:
        g = sample(op, {"dp": 1})
        shardc.compile(partition(g, Mesh(dp=1)), target=target)
    except (UnsupportedOpError, KeyError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def missing_entries(ops=None) -> list[str]:
    """One line per stage and op without an entry. The emitters are asked by generating the
    op's kernels (for ops whose sample graph can be built and partitioned)."""
    ops = list(Op) if ops is None else ops
    missing: list[tuple[str, Op, str]] = []

    def table(stage: str, has):
        missing.extend((stage, op, "no entry") for op in ops if not has(op))

    table("ir/shapes.py RULES (shape rule)", lambda op: op in shapes.RULES)
    table("ir/evaluate.py EVAL (evaluator)", lambda op: op in EVAL)
    for stage, files in FRONTEND_FILES.items():
        named = _named_in(files)
        table(stage, lambda op: op in PARTITIONER_ONLY or op.name in named)
    table("partition/rules.py RULES (factor rule)", lambda op: op in rules.RULES)
    table("runtime/torch_ops.py TORCH_OPS", lambda op: op in torch_ops.TORCH_OPS or op in torch_ops.NEEDS_RANK)
    table("runtime/jax_exec.py JAX_OPS", lambda op: op in jax_exec.JAX_OPS or op in jax_exec.NEEDS_MESH)
    for op in ops:
        why = _round_trips(op)
        if why:
            missing.append(("ir printer/parser (sample: tests/unit/op_samples.py)", op, why))
    # generating kernels needs the sample graph, its shapes and its factor rule, nothing else
    unbuildable = {op for stage, op, _ in missing if stage.startswith(("ir/shapes", "partition", "ir/printer"))}
    for target, where in (("triton", "codegen/triton_expr.py"), ("pallas", "codegen/pallas_expr.py")):
        for op in ops:
            if op not in PARTITIONER_ONLY and op not in unbuildable:
                why = _emits(op, target)
                if why:
                    missing.append((f"{where} ({target} emitter)", op, why))
    return [f"{stage}: {op.value}: {why}" for stage, op, why in missing]


def test_every_op_has_an_entry_in_every_stage():
    missing = missing_entries()
    assert not missing, "ops missing from stage tables:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("op", [Op.EXP, Op.SCATTER], ids=lambda o: o.value)
def test_a_missing_entry_is_named(op, monkeypatch):
    """The test above names a table that lacks an op (here: dropped from a runtime table)."""
    monkeypatch.delitem(torch_ops.TORCH_OPS, op)
    assert missing_entries([op]) == [f"runtime/torch_ops.py TORCH_OPS: {op.value}: no entry"]
