"""The zoo cases the tests share (unit and e2e): the models, one table of the mesh layouts they
run on (each test file picks its rows, under short names of its own where it has them), the
captured programs (once per session, whichever file asks first) and the codegen zoo's cases."""
import functools

import pytest

from shardc import Mesh, models, partition
from shardc.partition.plans import sequence_parallel_specs

BATCH = 4
ZOO = ["mlp", "gpt2", "llama", "moe"]
# name: (mesh axes, Megatron TP specs?, sequence parallel?, plan)
LAYOUTS = {
    "dp1": (dict(dp=1), False, False, None),
    "dp2": (dict(dp=2), False, False, "dp"),
    "dp3": (dict(dp=3), False, False, "dp"),          # uneven
    "dp4": (dict(dp=4), False, False, "dp"),
    "dp8": (dict(dp=8), False, False, "dp"),          # batch 4 over 8: padded, uneven
    "fsdp2": (dict(dp=2), False, False, "fsdp"),
    "fsdp4": (dict(dp=4), False, False, "fsdp"),
    "fsdp8": (dict(dp=8), False, False, "fsdp"),
    "tp2": (dict(tp=2), True, False, None),
    "tp4": (dict(tp=4), True, False, None),
    "tp4+sp": (dict(tp=4), True, True, None),
    "2x2": (dict(dp=2, tp=2), True, False, "dp"),
    "2x2-fsdp": (dict(dp=2, tp=2), True, False, "fsdp"),
    "2x4": (dict(dp=2, tp=4), True, False, "dp"),
    "4x2-fsdp": (dict(dp=4, tp=2), True, False, "fsdp"),
    "2x4+sp": (dict(dp=2, tp=4), True, True, "dp"),
}


def layouts(**rows: str) -> dict:
    """A test file's layouts: {its name: the shared row named by LAYOUTS' key}."""
    return {name: LAYOUTS[row] for name, row in rows.items()}


@functools.lru_cache(maxsize=None)
def captured(name: str, train: bool, frontend: str = "jax"):
    """(model, graph, arguments) of a zoo model's forward or SGD training step at BATCH."""
    m = models.get(name + ":tiny")
    g, args = m.capture(train, frontend, BATCH, lr=0.1)
    return m, g, args


@functools.lru_cache(maxsize=None)
def reference(name: str, train: bool, frontend: str = "jax"):
    """Graph.evaluate of `captured(...)`: the oracle every stage is checked against."""
    _, g, args = captured(name, train, frontend)
    return g.evaluate(*args)


def specs_for(m, g, layout) -> dict:
    _, tp, sp, _ = layout
    specs = dict(m.tp_specs()) if tp else {}
    if sp:
        specs.update(sequence_parallel_specs(g))
    return specs


def partitioned(m, g, layout, **options):
    """g partitioned on one of LAYOUTS' rows."""
    return partition(g, Mesh(layout[0]), specs_for(m, g, layout), layout[3], **options)


def kernel_cases(fast: set) -> list:
    """The codegen zoo's cases (model × step × f32/bf16 × tp/dp), those not in `fast` marked slow."""
    out = []
    for name in ZOO:
        for train in (False, True):
            for bf16 in (False, True):
                for layout in ("tp", "dp"):
                    c = (name, train, bf16, layout)
                    out.append(pytest.param(*c, marks=() if c in fast else (pytest.mark.slow,),
                                            id=f"{name}-{'train' if train else 'forward'}-"
                                               f"{'bf16' if bf16 else 'f32'}-{layout}"))
    return out
