"""Ahead-of-time compilation of generated kernels for a GPU that is not here (Hopper: sm_90),
through Triton's own compiler: PTX, cubin and shared-memory use, with no driver needed.

Triton binds `@triton.jit` functions (its own tl.sum, tl.max, … too) to the interpreter or the
compiler when they are imported, so a process running kernels on the interpreter cannot also
compile them: `compile_for_gpu` compiles in a fresh Python process without TRITON_INTERPRET.

Pointer arguments are compiled as 16-byte aligned (what the JIT sees on a GPU), so shared memory
counts every pipeline stage. Registers and spills come from the cubin through `cuobjdump --dump-resource-usage` (shipped with
Triton's NVIDIA backend); where it is missing they are None."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

HOPPER = ("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes per block on H100 / H200
# opt-in shared memory per block by compute capability (CUDA C Programming Guide, "Technical
# Specifications per Compute Capability"): 8.0 A100 163 KB, 8.6/8.9 99 KB, 9.0 and 10.0 227 KB
SHARED_MEMORY_BY_ARCH = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: SHARED_MEMORY_LIMIT,
                         100: SHARED_MEMORY_LIMIT}


def shared_memory_limit(target=HOPPER) -> int:
    """Bytes of shared memory one block may use on `target` ("cuda", capability, warp size)."""
    return SHARED_MEMORY_BY_ARCH.get(int(target[1]), 99 * 1024)


def compile_for_gpu(kernels, target=HOPPER, configs=None, timeout: float = 600, errors: str = "raise") -> list[dict]:
    """For each kernel: {"name", "shared" (bytes), "wgmma" (in the PTX), "ptx", "cubin_bytes",
    "num_warps", "regs" (per thread), "spill_bytes" (local memory per thread)}. `configs` (one per
    kernel) default to each kernel's own GPU launch choice. errors="return": a kernel that does
    not compile gets {"name", "error"} instead of failing the whole batch."""
    jobs = []
    for i, k in enumerate(kernels):
        cfg = dict(configs[i] if configs else k.config(interpret=False))
        jobs.append({"path": str(k.path), "name": k.path.stem, "signature": k.signature, "config": cfg,
                     "target": list(target), "errors": errors})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "shardc.codegen.aot"], input=json.dumps(jobs),
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ahead-of-time compile failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compile_one(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    from .cache import import_file
    mod = import_file(job["path"], f"shardc_kernels.c_{job['name']}")
    fn = getattr(mod, job["name"])
    cfg = dict(job["config"])
    opts = {k: cfg.pop(k) for k in ("num_warps", "num_stages") if k in cfg}
    dts = {"fp32": triton.language.float32, "bf16": triton.language.bfloat16, "fp16": triton.language.float16}
    constexprs = {k: (dts[v] if k == "DT" else v) for k, v in cfg.items()}
    signature = dict(job["signature"])
    # pointers 16-byte aligned, as the GPU's JIT specializes torch's allocations: without it the
    # loads cannot become cp.async/TMA copies and a pipelined matmul would show a single stage's
    # shared memory instead of num_stages' worth
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, t in signature.items() if t.startswith("*")}
    signature.update({k: "constexpr" for k in constexprs})
    c = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs),
                       target=GPUTarget(*job["target"]), options=opts)
    ptx = c.asm["ptx"]
    cubin = c.asm.get("cubin", b"")
    return {"name": job["name"], "shared": int(c.metadata.shared), "wgmma": "wgmma" in ptx,
            "ptx": ptx, "cubin_bytes": len(cubin), "num_warps": c.metadata.num_warps,
            **_resource_usage(cubin)}


def _resource_usage(cubin: bytes) -> dict:
    """{"regs", "spill_bytes"} of the cubin's kernel (None each where cuobjdump is not there)."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return {"regs": None, "spill_bytes": None}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             timeout=60).stdout
    regs, local = re.search(r"REG:(\d+)", out), re.search(r"LOCAL:(\d+)", out)
    return {"regs": int(regs.group(1)) if regs else None, "spill_bytes": int(local.group(1)) if local else None}


def _compile_or_error(job: dict) -> dict:
    if job.get("errors") != "return":
        return _compile_one(job)
    try:
        return _compile_one(job)
    except Exception as e:  # noqa: BLE001  (the caller asked for failures as data)
        return {"name": job["name"], "error": f"{type(e).__name__}: {e}"[:500]}


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    results = [_compile_or_error(j) for j in json.loads(sys.stdin.read())]
    print(json.dumps(results))
