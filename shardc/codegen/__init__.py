"""Code generation: per-device program → fusion groups → kernel source (Triton or Pallas),
cached on disk, plus the launch plan each device runs.

    exe = shardc.compile(prog, target="triton")   # or "pallas" (TPU kernels, codegen/pallas.py)
    exe.kernels                 # each: .name .source .ops (the IR nodes it fuses) .reason
    print(exe.plan_text())      # kernels, collectives and views in order

codegen makes plain data; shardc.compile wraps it as runtime.Executable, whose `run` and
`run_interpreted` are the runtime's engines (codegen never imports the runtime).
"""
from __future__ import annotations

import dataclasses

from ..errors import Error
from ..ir.graph import cyclic_gc_paused
from ..flags import debug_level, dump, log
from .cache import cache_key, group_ir_text, load_kernel_file
from .executable import Executable, Kernel, KernelLaunch
from .fused_multi import horizontal
from .fusion import CollectiveStep, FusionGroup, ViewStep, canonical_nodes, plan_fusion
from .plan_order import topological
from .repeated import plan_once_per_block

__all__ = ["compile", "Executable", "Kernel", "KernelLaunch", "CollectiveStep", "ViewStep", "FusionGroup"]

TARGETS = ("triton", "pallas")


def compile(prog, target: str = "triton") -> Executable:
    """SpmdProgram → Executable: fused kernels written as source, and the launch plan."""
    if target not in TARGETS:
        raise Error(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    with cyclic_gc_paused():
        return _compile(prog, target)


def _compile(prog, target: str) -> Executable:
    whole = prog.unrolled() if hasattr(prog, "unrolled") else prog   # a repeated block: every layer's ops
    if target == "pallas":
        from . import pallas as emitter
    else:
        from . import triton as emitter

    def plan_of(g):
        return plan_fusion(g, emitter.feasible, getattr(emitter, "epilogue_fits", None))

    # a repeated block is planned once and its plan replicated for every copy (codegen/repeated.py)
    planned = plan_once_per_block(prog, whole, plan_of) if whole is not prog else None
    if planned is None:
        planned = [(s, None) for s in plan_of(whole.local)]   # (step, share: steps sharing it share their text)
    planned = horizontal(planned, emitter.multi_footprint)  # independent row kernels: one launch each group
    prog = whole
    plan = []
    salt = emitter.key_text() if hasattr(emitter, "key_text") else ""
    emitted_for: dict[str, tuple] = {}  # cache key → (the group first emitted, its kernel, its file)
    signatures: dict = {}  # each node's part of group_ir_text, made once
    key_of: dict = {}  # share → cache key: the copies of a block's kernel have the same text
    for step, share in planned:
        if step.step != "kernel":  # collectives and views pass through
            plan.append(step)
            continue
        key = key_of.get(share) if share is not None else None
        if key is None:
            key = cache_key(group_ir_text(step, signatures) + salt, target)
            if share is not None:
                key_of[share] = key
        name = f"{step.kind}_{key[:12]}"
        emitted = None
        if key in emitted_for:  # the same computation (an identical layer's): written once, reused
            first, emitted, path = emitted_for[key]
            emitted = _rebind(emitted, first, step)
        if emitted is None:
            emitted = emitter.emit(step, name)
            path = load_kernel_file(key, name, emitted.source, target)
            emitted_for[key] = (step, emitted, path)
        plan.append(KernelLaunch(Kernel.emitted(name, emitted, step, path, key)))
    plan = topological(plan)
    exe = Executable(prog, plan, target)
    log(1, f"codegen: {len(exe.kernels)} kernel launches ({len(emitted_for)} distinct kernels written), "
           f"{len(plan) - len(exe.kernels)} other steps per device")
    if debug_level() >= 4:
        for k in exe.kernels:
            log(4, f"kernel {k.name} ({k.reason}):\n{k.source}")
    dump(30, "launch-plan", exe.plan_text())
    for i, k in enumerate(exe.kernels):
        dump(31, f"kernel-{i:03d}-{k.name}", k.source)
    return exe


def _rebind(emitted, first, step):
    """`emitted` (written for group `first`) for `step`, a group with the same canonical IR: the
    values it reads and writes are `step`'s, matched by their place in that text."""
    here = dict(zip(canonical_nodes(first), canonical_nodes(step)))
    if not all(x in here for x in (*emitted.inputs, *emitted.outputs)):
        return None
    return dataclasses.replace(emitted, inputs=[here[x] for x in emitted.inputs],
                               outputs=[here[x] for x in emitted.outputs],
                               dot_sites=[(here.get(n, n), loops) for n, loops in emitted.dot_sites])
