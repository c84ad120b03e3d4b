"""The zoo programs the e2e tests run: captured once per session (as tests/unit/test_partition_zoo.py
captures them), partitioned once per layout."""
import functools

from shardc import Mesh, models, partition
from shardc.partition.plans import sequence_parallel_specs

BATCH = 4
ZOO = ["mlp", "gpt2", "llama", "moe"]
# name: (mesh axes, Megatron TP specs?, sequence parallel?, plan)
LAYOUTS = {
    "dp4": (dict(dp=4), False, False, "dp"),
    "fsdp4": (dict(dp=4), False, False, "fsdp"),
    "tp4": (dict(tp=4), True, False, None),
    "tp4+sp": (dict(tp=4), True, True, None),
    "2x2": (dict(dp=2, tp=2), True, False, "dp"),
    "2x2-fsdp": (dict(dp=2, tp=2), True, False, "fsdp"),
    "dp8": (dict(dp=8), False, False, "dp"),          # batch 4 over 8: padded, uneven
    "fsdp8": (dict(dp=8), False, False, "fsdp"),
    "2x4": (dict(dp=2, tp=4), True, False, "dp"),
    "4x2-fsdp": (dict(dp=4, tp=2), True, False, "fsdp"),
    "2x4+sp": (dict(dp=2, tp=4), True, True, "dp"),
}


@functools.lru_cache(maxsize=None)
def captured(name: str, train: bool, frontend: str = "jax"):
    m = models.get(name + ":tiny")
    g, args = m.capture(train, frontend, BATCH, lr=0.1)
    return m, g, args


@functools.lru_cache(maxsize=None)
def program(name: str, train: bool, layout: str, frontend: str = "jax", passes="default"):
    m, g, args = captured(name, train, frontend)
    axes, tp, sp, plan = LAYOUTS[layout]
    specs = dict(m.tp_specs()) if tp else {}
    if sp:
        specs.update(sequence_parallel_specs(g))
    return partition(g, Mesh(axes), specs, plan, passes=passes), args
