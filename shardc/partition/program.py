"""What partitioning produces: the per-device program, every tensor's sharding, the ledger."""
from __future__ import annotations

from dataclasses import dataclass, field

import dataclasses

import numpy as np

from ..analysis.cost import wire_bytes  # noqa: F401  (the ring model; partition's records use it)
from ..ir import Graph, Node
from .mesh import Mesh, Sharding


@dataclass(frozen=True)
class CollectiveRecord:
    """One collective the partitioner inserted: what, over which axes, how many bytes, and why.
    `bytes` counts as XLA's HLO shapes do (all-gather: its result buffer; reduce-scatter: its
    input; all-reduce, all-to-all, permute: the buffer); `wire_bytes` is what each device sends
    with ring algorithms."""
    kind: str
    axes: tuple[str, ...]
    bytes: int
    wire_bytes: int
    tensor: str
    source: str | None
    reason: str
    node: Node | None = field(default=None, compare=False, repr=False)
    copies: int = 1     # times it runs in the whole program (a repeated block's: once per layer)

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        times = f" x{self.copies}" if self.copies != 1 else ""
        return (f"{self.kind}({','.join(self.axes)}) {self.bytes} B{times}  {self.tensor}{where}: {self.reason}")


class SpmdProgram:
    """One program for every device (local shapes, explicit collectives), as XLA's SPMD output."""

    def __init__(self, graph: Graph, mesh: Mesh, local: Graph, shardings: dict, origins: dict,
                 input_shardings: list[Sharding], output_shardings: list[Sharding],
                 collectives: list[CollectiveRecord]):
        self.graph = graph
        self.mesh = mesh
        self.local = local
        self.shardings = shardings          # global node → Sharding
        self.origins = origins              # global node → where its sharding came from
        self.input_shardings = input_shardings
        self.output_shardings = output_shardings
        self.collectives = collectives
        self.notes: list[str] = []          # what the user should know: idle mesh axes, ...
        self.passes: list = []              # what each collective pass changed (passes.PassReport)
        self.hardware = None                # what the passes planned for (a preset name or Hardware)
        self._before_passes: Graph | None = None  # the per-device program as partitioned, before the passes
        self._before_passes_of = None        # unrolled: (the repeated program's, its repeat), unrolled on first use
        self.repeat = getattr(graph, "repeat", None)  # identical layers held once (ir/blocks.py)
        self._unrolled: SpmdProgram | None = None
        self.templates: dict = {}             # unrolled: each per-device op → the repeated program's
        self.unrolled_local = None            # unrolled: ir.blocks.Unrolled of the per-device program

    @property
    def before_passes(self) -> Graph | None:
        """The per-device program as partitioned, before the passes (None: no passes ran)."""
        if self._before_passes_of is not None:
            from ..ir.blocks import unroll
            raw = unroll(*self._before_passes_of)
            self._before_passes, self._before_passes_of = raw.graph, None
            self.templates.update({m: n for (n, _), m in raw.made.items()})
        return self._before_passes

    @before_passes.setter
    def before_passes(self, g: Graph | None) -> None:
        self._before_passes, self._before_passes_of = g, None

    def unrolled(self) -> "SpmdProgram":
        """The whole program: this one, or with a repeated block (`repeat`) each layer instantiated
        in the global graph, the per-device program and the ledger. What needs every op (codegen,
        the engines, simulate) takes this; the ledger and `analyze` multiply the block out."""
        if self.repeat is None:
            return self
        if self._unrolled is None:
            from ..ir.blocks import unroll
            whole, local = unroll(self.graph, self.repeat), unroll(self.local, self.repeat)
            shardings, origins = {}, {}
            for (n, _), m in whole.made.items():
                if n in self.shardings:
                    shardings[m] = self.shardings[n]
                if n in self.origins:
                    origins[m] = self.origins[n]
            records = []
            for c in self.collectives:
                copies = [local.made[(c.node, k)] for k in range(self.repeat.copies + 1) if (c.node, k) in local.made]
                records += [dataclasses.replace(c, node=m, copies=1) for m in copies] or [c]
            prog = SpmdProgram(whole.graph, self.mesh, local.graph, shardings, origins,
                               [self.input_shardings[k] for k in whole.input_from],
                               [self.output_shardings[k] for k in whole.output_from], records)
            prog.notes, prog.passes, prog.hardware, prog.repeat = self.notes, self.passes, self.hardware, None
            prog.templates = {m: n for (n, _), m in local.made.items()}   # each op → the block's op it copies
            prog.unrolled_local = local   # (block op, copy) → op, and the program in the block's order
            if self.before_passes is self.local:
                prog.before_passes = local.graph
            elif self.before_passes is not None:   # unrolled when asked (only analyze's timeline is)
                prog._before_passes_of = (self.before_passes, self.repeat)
            self._unrolled = prog
        return self._unrolled

    def count_copies(self) -> None:
        """Each record's `copies`: how many layers run it (after partitioning and the passes)."""
        if self.repeat is None:
            return
        from ..ir.blocks import multiplicity
        times = multiplicity(self.local, self.repeat)
        self.collectives = [dataclasses.replace(c, copies=times.get(c.node, 1)) if c.node is not None else c
                            for c in self.collectives]

    def sharding_of(self, name: str) -> Sharding:
        for i, p in enumerate(self.graph.inputs):
            if p.name == name:
                return self.input_shardings[i]
        for i, o in enumerate(self.graph.output_names):
            if o == name:
                return self.output_shardings[i]
        return self.shardings[self.graph.node_by_name(name)]

    def simulate(self, *args) -> list[np.ndarray]:
        """Global outputs: every device run in one process, collectives exact."""
        from .simulate import simulate
        whole = self.unrolled()
        out = simulate(whole, whole.graph.input_values(*args))
        return self.graph.restack(out) if self.graph.restack else out

    def input_blocks(self, values: dict[str, np.ndarray], devices=None) -> list[list[np.ndarray] | None]:
        """Every device's local block of every input, blocks[device][input], from the global
        values by input name (only `devices`' blocks if given; None for the others). The one
        place inputs are split per device: the simulator and every engine use it."""
        from .mesh import shard_array
        glob = [np.asarray(values[p.name]) for p in self.graph.inputs]
        want = range(self.mesh.size) if devices is None else set(devices)
        return [[shard_array(x, s, self.mesh, d) for x, s in zip(glob, self.input_shardings)] if d in want else None
                for d in range(self.mesh.size)]

    def assemble(self, per_device: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Global outputs from every device's output blocks, per_device[device][output] (replicas
        must agree exactly). The one place outputs are assembled."""
        from .mesh import unshard_arrays
        g = self.graph
        return [unshard_arrays([per_device[d][i] for d in range(self.mesh.size)], go.shape, s, self.mesh,
                               what=f"output {name!r}")
                for i, (go, s, name) in enumerate(zip(g.outputs, self.output_shardings, g.output_names))]

    def bytes_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.collectives:
            out[c.kind] = out.get(c.kind, 0) + c.bytes * c.copies
        return out

    def shardings_text(self) -> str:
        """One line per value of the global graph: its sharding and where that came from."""
        return "".join(f"%{i} {n.name or n.op.value}: {self.shardings[n]}  ({self.origins.get(n, '')})\n"
                       for i, n in enumerate(self.graph.nodes))

    def ledger(self) -> str:
        return "\n".join(str(c) for c in self.collectives) or "(no collectives)"

    def __str__(self) -> str:
        return str(self.local)

    def __repr__(self) -> str:
        layers = f", layers 1..{self.repeat.depth - 3} as one block" if self.repeat else ""
        return (f"<SpmdProgram {self.mesh} {len(self.local.nodes)} local nodes{layers}, "
                f"{sum(c.copies for c in self.collectives)} collectives, "
                f"{sum(c.bytes * c.copies for c in self.collectives)} B>")
