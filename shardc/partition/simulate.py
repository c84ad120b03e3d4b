"""The SPMD simulator: runs the one per-device program for every device of the mesh in one
process, node by node in lockstep, with collectives computed exactly over their device groups."""
from __future__ import annotations

import numpy as np

from ..errors import ShardingError
from ..ir import Node, Op
from ..ir.evaluate import eval_node
from ..ir.ops import COLLECTIVES
from .mesh import Mesh


def ragged_exchange(xs: list[np.ndarray], sizes: list[np.ndarray], rows: int, what: str = "") -> list[np.ndarray]:
    """ragged_all_to_all over one group: xs[i] holds its segment for each peer j in order
    (sizes[i][j] rows); peer j gets the segments sent to it in sender order, then zeros."""
    k = len(xs)
    sizes = [np.maximum(np.asarray(s).astype(np.int64), 0) for s in sizes]
    res = []
    for dst in range(k):
        parts = []
        for src in range(k):
            off = int(sizes[src][:dst].sum())
            seg = xs[src][off:off + int(sizes[src][dst])]
            if off + int(sizes[src][dst]) > len(xs[src]):
                raise ShardingError(f"{what}: device {src} sends rows past its {len(xs[src])}-row buffer")
            parts.append(seg)
        got = np.concatenate(parts, axis=0) if parts else xs[0][:0]
        if len(got) > rows:
            raise ShardingError(f"{what}: {len(got)} rows arrive at device {dst}, the buffer holds {rows}")
        out = np.zeros((rows,) + xs[0].shape[1:], dtype=xs[0].dtype)
        out[:len(got)] = got
        res.append(out)
    return res


def run_collective(n: Node, mesh: Mesh, vals: list[np.ndarray], rest: list | None = None) -> list[np.ndarray]:
    """Every device's result of collective `n`, given every device's operand (`rest`: every
    device's further operands, for the ragged all-to-all's send sizes)."""
    out: list = [None] * mesh.size
    axes = n.attrs["axes"]
    for group in mesh.groups(axes):
        xs = [vals[d].astype(np.float32) if vals[d].dtype.itemsize == 2 and vals[d].dtype.kind != "i" else vals[d]
              for d in group]
        k = len(group)
        if n.op is Op.ALL_REDUCE:
            red = {"sum": np.add, "max": np.maximum, "min": np.minimum}[n.attrs["reduce"]]
            total = xs[0]
            for x in xs[1:]:
                total = red(total, x)
            res = [total] * k
        elif n.op is Op.ALL_GATHER:
            res = [np.concatenate(xs, axis=n.attrs["dim"])] * k
        elif n.op is Op.REDUCE_SCATTER:
            res = np.split(np.sum(xs, axis=0), k, axis=n.attrs["dim"])
        elif n.op is Op.ALL_TO_ALL:
            s, c = n.attrs["split_dim"], n.attrs["concat_dim"]
            pieces = [np.split(x, k, axis=s) for x in xs]
            res = [np.concatenate([pieces[src][dst] for src in range(k)], axis=c) for dst in range(k)]
        elif n.op is Op.RAGGED_ALL_TO_ALL:
            res = ragged_exchange(xs, [rest[d][0] for d in group], n.attrs["rows"], n.describe())
        elif n.op is Op.COLLECTIVE_PERMUTE:
            res = [np.zeros_like(xs[0]) for _ in range(k)]
            for src, dst in n.attrs["pairs"]:
                res[dst] = xs[src]
        else:
            raise ShardingError(f"{n.describe()}: not a collective")
        for d, r in zip(group, res):
            out[d] = np.asarray(r).astype(n.dtype.np)
    return out


def simulate(prog, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    env = run_devices(prog, inputs)
    return prog.assemble([[e[o] for o in prog.local.outputs] for e in env])


def run_devices(prog, inputs: dict[str, np.ndarray], keep_all: bool = False) -> list[dict[Node, np.ndarray]]:
    """Every device's values of the per-device program (only the outputs unless keep_all)."""
    mesh, local = prog.mesh, prog.local
    devices = range(mesh.size)
    env: list[dict[Node, np.ndarray]] = [dict(zip(local.inputs, blocks)) for blocks in prog.input_blocks(inputs)]
    uses = {n: 0 for n in local.nodes}
    for n in local.nodes:
        for i in n.inputs:
            uses[i] += 1
    keep = set(local.outputs)
    for n in local.nodes:
        if n.op is Op.PARAMETER:
            continue
        if n.op is Op.AXIS_INDEX:
            for d in devices:
                env[d][n] = np.asarray(mesh.coords(d)[n.attrs["axis"]], dtype=np.int32)
        elif n.op in COLLECTIVES:
            outs = run_collective(n, mesh, [env[d][n.inputs[0]] for d in devices],
                                  [[env[d][i] for i in n.inputs[1:]] for d in devices])
            for d in devices:
                env[d][n] = outs[d]
        else:
            for d in devices:
                env[d][n] = eval_node(n, [env[d][i] for i in n.inputs])
        for i in n.inputs:
            uses[i] -= 1
            if uses[i] == 0 and i not in keep and not keep_all:
                for d in devices:
                    env[d].pop(i, None)
    return env


def first_divergence(prog, inputs: dict[str, np.ndarray], tol: float = 2e-5) -> str | None:
    """The first value of the global graph whose per-device blocks differ from the numpy
    evaluation of the unsharded graph: which node, on which device, in which sharding."""
    from ..ir.evaluate import eval_node as evaluate_node
    from ..testing import rel_err
    from .mesh import global_indices
    g, mesh = prog.graph, prog.mesh
    want: dict[Node, np.ndarray] = {p: np.asarray(inputs[p.name]) for p in g.inputs}
    for n in g.nodes:
        if n not in want:
            want[n] = evaluate_node(n, [want[i] for i in n.inputs])
    env = run_devices(prog, inputs, keep_all=True)
    for n in g.nodes:
        local, s = prog.value_map.get(n, (None, None))
        if local is None or s.partial or local not in env[0]:
            continue  # pending sums have no global value to compare with
        for d in range(mesh.size):
            idx = [global_indices(size, ds, mesh, d) if ds.axes else np.arange(size)
                   for size, ds in zip(n.shape, s.dims)]
            valid = [i < size for i, size in zip(idx, n.shape)]
            got = env[d][local][np.ix_(*valid)] if n.rank else env[d][local]
            ref = want[n][np.ix_(*[i[v] for i, v in zip(idx, valid)])] if n.rank else want[n]
            err = rel_err(got, ref, floor=1.0)
            if not err <= tol:
                return f"first divergence: {n.describe()} on device {d} ({s}): relative error {err:.3g}"
    return None
