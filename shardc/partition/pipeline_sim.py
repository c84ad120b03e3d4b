"""The pipeline simulator: every stage, microbatch and device of a PipelineProgram in one process.

Actions run in the order of the schedule's timeline (pipeline_schedule.order); each stage's
devices (the other mesh axes) run in lockstep with exact collectives, as partition/simulate.py.
Values cross stages only through a mailbox that the sending action fills: a receive that finds
nothing raises, so the run also proves that the schedule delivers every value in time. Gradient
accumulations (all-reduces over "mb") add up each microbatch's contribution in order, then
all-reduce over the stage's other axes; the step runs after the last microbatch.
"""
from __future__ import annotations

import numpy as np

from ..errors import Error
from ..ir import Op
from ..ir.evaluate import eval_node
from ..ir.ops import COLLECTIVES
from .mesh import Mesh
from .pipeline import MB
from .pipeline_schedule import order
from .simulate import run_collective


class StageDevices:
    """Maps (microbatch j, stage-device r) to the inner program's device, and back."""

    def __init__(self, inner_mesh: Mesh):
        rest = {a: n for a, n in inner_mesh.axes.items() if a != MB}
        self.inner = inner_mesh
        self.sub = Mesh(rest) if rest else Mesh({"one": 1})
        self.rest = tuple(rest)

    def device(self, j: int, r: int) -> int:
        c = dict(self.sub.coords(r)) if self.rest else {}
        c[MB] = j
        d = 0
        for a, n in self.inner.axes.items():
            d = d * n + int(c[a])
        return d


def simulate_pipeline(prog, inputs: dict) -> tuple[list[np.ndarray], list[tuple[int, str, int]]]:
    """(global outputs, the actions in the order run)."""
    inner, local = prog.inner, prog.inner.local
    m, p = prog.pipeline.microbatches, prog.num_stages
    devs = StageDevices(inner.mesh)
    R = devs.sub.size
    blocks = inner.input_blocks(inputs)
    pos = {x: i for i, x in enumerate(local.inputs)}
    batch_in = {x for x, s in zip(local.inputs, inner.input_shardings) if MB in s.used_axes}
    senv = [[{} for _ in range(R)] for _ in range(p)]
    menv = [[[{} for _ in range(R)] for _ in range(m)] for _ in range(p)]
    mail: dict = {}
    acc = [[{} for _ in range(R)] for _ in range(p)]
    sends = {}
    for t in prog.transfers:
        sends.setdefault((t.src, t.phase), []).append(t)

    def get(s, j, r, n):
        if n in pos:
            return blocks[devs.device(j if n in batch_in else 0, r)][pos[n]]
        if j is not None and n in menv[s][j][r]:
            return menv[s][j][r][n]
        if n in senv[s][r]:
            return senv[s][r][n]
        key = (s, None if n in prog.post else j, n)
        if key not in mail:
            raise Error(f"pipeline stage {s} microbatch {j}: {n.describe()} was not sent before it is needed")
        return mail[key][r]

    def run(s, j, nodes, env):
        for n in nodes:
            if n.op is Op.PARAMETER:
                continue
            if n.op is Op.AXIS_INDEX:
                for r in range(R):
                    v = j if n.attrs["axis"] == MB else devs.sub.coords(r)[n.attrs["axis"]]
                    env[r][n] = np.asarray(v, dtype=np.int32)
            elif n in prog.pre:      # a whole-batch sum of batch-only values, before any microbatch
                total = [0] * R
                for k in range(m):
                    run(s, k, prog.pre[n], menv[s][k])
                    total = [t + menv[s][k][r][n.inputs[0]] for r, t in enumerate(total)]
                rest = tuple(a for a in n.attrs["axes"] if a != MB)
                for group in (devs.sub.groups(rest) if rest else [[r] for r in range(R)]):
                    for r in group:
                        env[r][n] = np.asarray(sum(total[q] for q in group)).astype(n.dtype.np)
            elif n.op in COLLECTIVES:
                vals = run_collective(n, devs.sub, [get(s, j, r, n.inputs[0]) for r in range(R)],
                                      [[get(s, j, r, i) for i in n.inputs[1:]] for r in range(R)])
                for r in range(R):
                    env[r][n] = vals[r]
            else:
                for r in range(R):
                    env[r][n] = eval_node(n, [get(s, j, r, i) for i in n.inputs])

    for s in range(p):
        run(s, None, prog.stages[s].free, senv[s])
    done = []
    for s, kind, j in order(prog.slots):
        st = prog.stages[s]
        nodes = st.nodes(kind)
        run(s, j, nodes, menv[s][j])
        computed = set(nodes)
        for c in st.step:
            if c.op is Op.ALL_REDUCE and MB in c.attrs["axes"] and c.inputs[0] in computed:
                for r in range(R):
                    v = menv[s][j][r][c.inputs[0]]
                    acc[s][r][c] = v.copy() if c not in acc[s][r] else acc[s][r][c] + v
        for t in sends.get((s, kind), ()):
            mail[(t.dst, j, t.node)] = [menv[s][j][r][t.node] for r in range(R)]
        done.append((s, kind, j))
    for s in reversed(range(p)):
        st = prog.stages[s]
        for n in st.step:
            if n.op is Op.ALL_REDUCE and MB in n.attrs["axes"]:
                rest = tuple(a for a in n.attrs["axes"] if a != MB)
                for r in range(R):
                    if n not in acc[s][r]:
                        raise Error(f"pipeline stage {s}: accumulation {n.describe()} received no microbatch")
                    senv[s][r][n] = acc[s][r][n]
                if rest:
                    for group in devs.sub.groups(rest):
                        total = sum(senv[s][r][n] for r in group)
                        for r in group:
                            senv[s][r][n] = np.asarray(total).astype(n.dtype.np)
            else:
                run(s, None, [n], senv[s])
        for t in sends.get((s, "step"), ()):
            mail[(t.dst, None, t.node)] = [senv[s][r][t.node] for r in range(R)]
    outs = []
    for r in range(R):
        row = []
        for o in local.outputs:
            s = prog.stage_of.get(o)
            if o in pos:
                row.append(get(0, 0, r, o))
                continue
            if s is None:
                s = next(k for k in range(p) if o in senv[k][r])
            row.append(senv[s][r][o])
        outs.append(row)
    per_device = [None] * inner.mesh.size
    for j in range(m):
        for r in range(R):
            per_device[devs.device(j, r)] = outs[r]
    return inner.assemble(per_device), done
