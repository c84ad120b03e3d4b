"""What the autotuner times, decided before anything runs: a kernel's tuning space and two prunes.

    space(kernel, default)            the default config, then each point of its template's TUNING
                                      (block sizes, warps, stages, a matmul's grid order GM) over it
    model_s(kernel, cfg, hw)          the roofline time of one config on `hw`
    prune_by_roofline(kernel, cfgs)   drops configs the model puts more than SLACK x the best
    prune_by_resources(kernel, cfgs)  compiles each config ahead of time (sm_90, no GPU needed) and
                                      drops those over the shared-memory limit or spilling registers

    pallas_space(kernel)              a Pallas kernel's block shapes: its group emitted within each
                                      VMEM budget of kernels/pallas_templates.TUNING_VMEM, one per grid
    prune_pallas_by_lowering(cands)   drops block shapes Mosaic refuses when lowering for a TPU

The roofline model is deliberately coarse: it sees what a config changes and a GPU cannot hide,
namely tiles that overhang the problem (padded work), programs too few to fill the machine, and
the last partial wave of programs. It never measures; it only keeps the timer off configs that
cannot win. The default config is never dropped (the tuner compares against it).
A Pallas kernel's block shapes are fixed when its source is written (codegen/pallas.py picks the
largest legal blocks within a VMEM budget), so its candidates are whole kernels, one per budget;
timing them needs a TPU (the interpreter says nothing about one), so none is chosen here.
"""
from __future__ import annotations

import math

SLACK = 1.5          # a config the model puts above SLACK x the best is not timed
SMS = {"h100": 132, "h200": 132, "b200": 148, "a100": 108}   # streaming multiprocessors per GPU
BLOCKS_PER_SM = {"matmul": 1, "attention": 1}                # large tiles: one program per SM
ROW_BLOCKS_PER_SM = 8                                         # row kernels: small programs, many per SM


def space(kernel, default: dict) -> list[dict]:
    """The default config first, then each point of the template's tuning space laid over it."""
    out = [dict(default)]
    for point in kernel.tuning:
        c = {**default, **point}
        if c not in out:
            out.append(c)
    return out


def hardware_for(device: str | None):
    """The analysis preset closest to a GPU's name ("NVIDIA H200" -> h200; else h100)."""
    from ..analysis import hardware
    name = (device or "").lower()
    for key in ("h200", "b200", "a100", "h100"):
        if key in name:
            return hardware.get(key)
    return hardware.get("h100")


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // max(1, int(b)))


def _waves(programs: int, slots: int) -> float:
    """Fraction of the launched program slots doing work: too few programs leave SMs idle and the
    last wave runs partly empty."""
    programs = max(1, programs)
    return programs / (_cdiv(programs, slots) * slots)


def min_bytes(kernel) -> int:
    """Every input read once and every output written once."""
    return sum(x.size * x.dtype.itemsize for x in list(kernel.inputs) + list(kernel.outputs))


def model_s(kernel, cfg: dict, hw) -> float | None:
    """Seconds the roofline gives `kernel` under `cfg` on `hw`, or None (no model for its kind)."""
    d, kind = kernel.dims, kernel.kind
    need = {"matmul": ("B", "M", "N", "K", "dtype"), "attention": ("B", "NQ", "NKV", "D", "DV", "dtype")}
    if not d or "BM" not in cfg or not all(k in d for k in need.get(kind, ("rows", "cols"))):
        return None  # a kind the model does not know (its configs are all timed)
    sms = SMS.get(hw.name, 132)
    nbytes = min_bytes(kernel)
    if kind == "matmul":
        tiles_m, tiles_n = _cdiv(d["M"], cfg["BM"]), _cdiv(d["N"], cfg["BN"])
        programs = d["B"] * tiles_m * tiles_n
        flops = 2.0 * programs * cfg["BM"] * cfg["BN"] * _cdiv(d["K"], cfg["BK"]) * cfg["BK"]
        t = max(flops / hw.flops_for(d["dtype"]), nbytes / hw.hbm_bw)
        return t / _waves(programs, sms * BLOCKS_PER_SM[kind])
    if kind == "attention":
        programs = d["B"] * _cdiv(d["NQ"], cfg["BM"])
        pq, pk = _cdiv(d["NQ"], cfg["BM"]) * cfg["BM"], _cdiv(d["NKV"], cfg["BN"]) * cfg["BN"]
        flops = 2.0 * d["B"] * pq * pk * (d["D"] + d["DV"])
        t = max(flops / hw.flops_for(d["dtype"]), nbytes / hw.hbm_bw)
        return t / _waves(programs, sms * BLOCKS_PER_SM[kind])
    rows, cols = d["rows"], d["cols"]  # row kernels (pointwise, reductions, scatter): memory-bound
    bn = cfg.get("BN", cols)
    tiles_n = 1 if d.get("looped") else _cdiv(cols, bn)
    programs = _cdiv(rows, cfg["BM"]) * tiles_n
    covered = _cdiv(rows, cfg["BM"]) * cfg["BM"] * (_cdiv(cols, bn) * bn)
    return nbytes * (covered / max(1, rows * cols)) / hw.hbm_bw / _waves(programs, sms * ROW_BLOCKS_PER_SM)


def prune_by_roofline(kernel, configs: list[dict], hw, slack: float = SLACK) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept, [(dropped, why)]): configs the model puts above `slack` x the best are dropped; the
    first (the default) is always kept. Kept configs come best-modelled first after the default."""
    times = [model_s(kernel, c, hw) for c in configs]
    if not configs or any(t is None for t in times):
        return list(configs), []
    best = min(times)
    kept, dropped = [configs[0]], []
    for c, t in sorted(zip(configs[1:], times[1:]), key=lambda ct: ct[1]):
        if t > slack * best:
            dropped.append((c, f"roofline: modelled {t * 1e6:.1f} us > {slack:g} x the best {best * 1e6:.1f} us"))
        else:
            kept.append(c)
    return kept, dropped


def prune_by_resources(kernel, configs: list[dict], target=None) -> tuple[list[dict], list[tuple[dict, str]], list[dict]]:
    """(kept, [(dropped, why)], compile results): each config compiled ahead of time for `target`
    (default sm_90); dropped where it does not compile, needs more shared memory than a block may
    have, or spills registers to local memory. The first config (the default) is always kept."""
    from .aot import HOPPER, compile_for_gpu, shared_memory_limit
    target = target or HOPPER
    results = compile_for_gpu([kernel] * len(configs), target, configs=configs, errors="return")
    kept, dropped = [], []
    for i, (c, r) in enumerate(zip(configs, results)):
        why = resource_problem(r, shared_memory_limit(target))
        if why and i > 0:
            dropped.append((c, why))
        else:
            kept.append(c)
    return kept, dropped, results


def resource_problem(result: dict, shared_limit: int) -> str | None:
    """Why an ahead-of-time compile result cannot run well, or None."""
    if "error" in result:
        return f"does not compile: {result['error']}"
    if result["shared"] > shared_limit:
        return f"shared memory {result['shared']} B > the {shared_limit} B a block may use"
    if result.get("spill_bytes"):
        return f"spills {result['spill_bytes']} B of registers per thread ({result.get('regs')} registers)"
    return None


def ideal_s(kernel, hw) -> float:
    """The kernel's roofline time with no padding and a full machine."""
    d = kernel.dims
    t = min_bytes(kernel) / hw.hbm_bw
    if kernel.kind == "matmul" and d:
        t = max(t, 2.0 * d["B"] * d["M"] * d["N"] * d["K"] / hw.flops_for(d["dtype"]))
    elif kernel.kind == "attention" and d:
        t = max(t, 2.0 * d["B"] * d["NQ"] * d["NKV"] * (d["D"] + d["DV"]) / hw.flops_for(d["dtype"]))
    return t


def pallas_space(kernel) -> list[dict]:
    """A Pallas kernel's block-shape candidates: its fusion group emitted within each VMEM budget
    of the template space, one per distinct grid, the default (first budget) first. Each is
    {"vmem_budget", "grid", "kernel"}: a Kernel written to the kernel cache (launchable,
    lowerable), under the original's function name."""
    from ..kernels import pallas_templates as tpl
    from . import pallas
    from .cache import cache_key, load_kernel_file
    from .executable import Kernel
    if kernel.group is None:
        raise ValueError(f"{kernel.name}: no fusion group to re-emit (a kernel loaded on a rank)")
    out, grids = [], set()
    for budget in tpl.TUNING_VMEM:
        with pallas.vmem_budget(budget):
            em = pallas.emit(kernel.group, kernel.name)
        if em.grid in grids:
            continue
        grids.add(em.grid)
        key = cache_key(em.source, "pallas")
        path = load_kernel_file(key, f"{kernel.name}_vmem{budget}", em.source, "pallas")
        out.append({"vmem_budget": budget, "grid": em.grid, "kernel": Kernel.emitted(kernel.name, em, kernel.group, path, key)})
    return out


def prune_pallas_by_lowering(candidates: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept, [(dropped, why)]): each candidate lowered for a TPU (Mosaic, no TPU needed)."""
    from .pallas import export_for_tpu
    kept, dropped = [], []
    for c in candidates:
        try:
            export_for_tpu(c["kernel"])
            kept.append(c)
        except Exception as e:  # noqa: BLE001  (Mosaic's refusal is the answer)
            dropped.append((c, f"Mosaic lowering: {type(e).__name__}: {e}"[:300]))
    return kept, dropped
