"""The whole pipeline matrix of issue 19 on one engine: GPT-2 and Llama (tiny) × SGD and Adam ×
pp2×dp2×tp2 and pp4×dp2 × GPipe, 1F1B, interleaved-1F1B and zero-bubble. Each row checks
simulate == evaluate and two training steps on the engine against the unsharded model (f32, rel.
error < 1e-5), with the e2e tests' own helpers (tests/e2e/test_pipeline_torch.py); the suite runs a
chosen subset of these rows, this runs all of them.

    .venv/bin/python bench/pipeline_matrix.py --engine torch_pipeline     # ~3 min on 2 cores
    .venv/bin/python bench/pipeline_matrix.py --engine jax_pipeline       # ~10 min (XLA compiles)

Models have 4 layers (8 for interleaving on pp4: two one-layer chunks per stage). Exits 1 if a
row fails."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / d) for d in ("e2e", "unit", "")]

MODELS, OPTIMIZERS = ("gpt2", "llama"), ("sgd", "adam")
MESHES = ("pp2xdp2xtp2", "pp4xdp2")
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")


def row(engine: str, model: str, optimizer: str, mesh: str, schedule: str) -> tuple[int, str]:
    from shardc import runtime
    from shardc.testing import rel_err
    from test_pipeline_torch import _program, _steps, assert_steps_match
    layers = 8 if (mesh.startswith("pp4") and schedule == "interleaved-1f1b") else 4
    m, g, args, prog = _program(model, optimizer, mesh, schedule, "jax", layers)
    try:
        assert_steps_match(m, g, prog.simulate(*args), g.evaluate(*args), optimizer)
        got, got_loss = _steps(g, args, lambda *a: runtime.run(prog, *a, engine=engine))
        want, want_loss = _steps(g, args, g.evaluate)
        assert max(rel_err(a, b) for a, b in zip(got_loss, want_loss)) < 1e-5
        assert_steps_match(m, g, got, want, optimizer)
    except AssertionError as e:
        return layers, f"FAIL {str(e)[:160]}"
    return layers, f"ok (max rel. error {max(rel_err(a, b) for a, b in zip(got, want)):.1e})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="torch_pipeline", choices=("torch_pipeline", "jax_pipeline"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    a = ap.parse_args(argv)
    failed = 0
    print(f"{'model':6} {'opt':5} {'mesh':12} {'schedule':17} layers  seconds  result")
    for model in a.models.split(","):
        for optimizer in OPTIMIZERS:
            for mesh in MESHES:
                for schedule in a.schedules.split(","):
                    t = time.perf_counter()
                    layers, result = row(a.engine, model, optimizer, mesh, schedule)
                    failed += result.startswith("FAIL")
                    print(f"{model:6} {optimizer:5} {mesh:12} {schedule:17} {layers:6} {time.perf_counter() - t:8.1f}  {result}",
                          flush=True)
    print(f"{failed} of the rows failed" if failed else "every row matches the unsharded model")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
