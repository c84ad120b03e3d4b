"""Run by test_multihost.py as every process of a two-host job, on this machine:

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d ... multihost_job.py torch [die]
    multihost_job.py jax PROCESS_ID COORDINATOR [die]      (2 processes x 4 CPU devices)

(`die-spmd`: the second host dies in a step of the plain SPMD program instead; `die-store`: the
first host dies, the one whose agent holds the rendezvous store.)

Every process builds the same training step and pipeline program (a host per stage) and runs
shardc.check on the job's engine (torch_pipeline / jax_pipeline; on JAX also the plain SPMD
program on the jax engine). With `die`, the processes of the second host announce
themselves and then wait to be killed (the test kills that host); the first host's report names them.
"""
import os
import sys
import time

import numpy as np


def step_graph():
    """An MLP's SGD step with layer-named parameters (two stages), captured from JAX."""
    import jax
    import jax.numpy as jnp

    import shardc

    def loss_fn(params, x, y):
        h = x
        for i in range(4):
            h = jnp.tanh(h @ params[f"layers.{i}.w"])
        return jnp.mean((h - y) ** 2)

    def step(params, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        return loss, {k: params[k] - 0.1 * g[k] for k in params}

    rng = np.random.default_rng(0)
    params = {f"layers.{i}.w": (rng.standard_normal((16, 16)) * 0.3).astype(np.float32) for i in range(4)}
    x, y = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((8, 16)).astype(np.float32)
    return shardc.from_jax(step, params, x, y), (params, x, y)


def pipeline_program(g, tp: int = 1):
    """pp=2 x dp=2 (x tp): a host per stage (2 ranks per torchrun node, 4 devices per JAX process)."""
    import shardc
    from shardc import P
    specs = {"x": P("dp"), "y": P("dp")}
    if tp > 1:
        specs.update({n: P(None, "tp") for n in g.input_names if "layers." in n})
    return shardc.partition(g, shardc.Mesh({"pp": 2, "dp": 2, "tp": tp}), specs,
                            pipeline=shardc.Pipeline("pp", 2, "1f1b"))


def torch_main(die: bool, spmd: bool = False, dying_node: int = 1):
    import torch.distributed as dist

    import shardc
    rank, node = int(os.environ["RANK"]), int(os.environ["GROUP_RANK"])
    g, args = step_graph()
    prog = pipeline_program(g)
    tp = {n: shardc.P(None, "tp") for n in g.input_names if "layers." in n}
    spmd_prog = shardc.partition(g, shardc.Mesh({"dp": 2, "tp": 2}), {"x": shardc.P("dp"), "y": shardc.P("dp"), **tp})
    shardc.check(prog, *args, engine="torch_pipeline", timeout_s=60)     # (also: every rank learns the roster)
    if dying_node == 1:        # (the job where the store's host dies checks the pipeline only)
        shardc.check(spmd_prog, *args, engine="torch")
    print(f"rank {rank} node {node} check ok", flush=True)
    if die:    # a second step: the second host stops in it, then the test kills it (the host "dies")
        print(f"rank {rank} node {node} pid {os.getpid()} ready", flush=True)
        if node == dying_node:
            time.sleep(600)
        if spmd:
            shardc.check(spmd_prog, *args, engine="torch")
        else:
            shardc.check(prog, *args, engine="torch_pipeline", timeout_s=60)
    print(f"rank {rank} of {dist.get_world_size()} node {node} ok", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def jax_main(process_id: int, coordinator: str, die: bool, spmd_dies: bool = False):
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=2, process_id=process_id, heartbeat_timeout_seconds=10)
    import shardc
    from shardc import Mesh, P
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    g, args = step_graph()
    prog = pipeline_program(g, tp=2)
    shardc.check(prog, *args, engine="jax_pipeline")
    tp = {n: P(None, "tp") for n in g.input_names if "layers." in n}
    spmd = shardc.partition(g, Mesh({"dp": 4, "tp": 2}), {"x": P("dp"), "y": P("dp"), **tp})
    shardc.check(spmd, *args, engine="jax")
    print(f"process {process_id} check ok", flush=True)
    if die:
        print(f"process {process_id} pid {os.getpid()} ready", flush=True)
        if process_id == 1:
            time.sleep(600)
        shardc.check(spmd if spmd_dies else prog, *args, engine="jax" if spmd_dies else "jax_pipeline")
    print(f"process {process_id} of {jax.process_count()} ok", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "torch":
        torch_main(bool({"die", "die-spmd", "die-store"} & set(sys.argv[2:])), "die-spmd" in sys.argv[2:],
                   0 if "die-store" in sys.argv[2:] else 1)
    else:
        from shardc.runtime import RankError
        try:
            jax_main(int(sys.argv[2]), sys.argv[3], bool({"die", "die-spmd"} & set(sys.argv[4:])),
                     "die-spmd" in sys.argv[4:])
        except RankError as e:     # exit at once: jax.distributed's shutdown would wait for the dead peer
            print(f"RankError: {e}", flush=True)
            os._exit(1)
