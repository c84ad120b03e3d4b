"""A graph as plain data for sending to worker processes: nodes as (op, input positions, attrs,
shape, dtype, source, name) in order, so that pickling never recurses through node chains. A
compiled launch plan likewise (`plan_to_wire`): kernels as their source and key, steps as node
positions; ranks load the kernels from source through the kernel cache and never compile."""
from __future__ import annotations

from ..ir import Graph, Node, Op


def graph_to_wire(g: Graph) -> dict:
    index = {n: i for i, n in enumerate(g.nodes)}
    nodes = [(n.op.value, tuple(index[i] for i in n.inputs), n.attrs, n.shape, n.dtype, n.source, n.name)
             for n in g.nodes]
    return {"nodes": nodes, "inputs": [index[p] for p in g.inputs], "outputs": [index[o] for o in g.outputs],
            "output_names": list(g.output_names), "name": g.name, "mesh_axes": dict(g.mesh_axes),
            "scheduled": g.scheduled}


def graph_from_wire(w: dict) -> Graph:
    nodes: list[Node] = []
    for op, ins, attrs, shape, dtype, source, name in w["nodes"]:
        nodes.append(Node(Op(op), [nodes[i] for i in ins], attrs, shape, dtype, source, name))
    g = Graph(nodes, [nodes[i] for i in w["inputs"]], [nodes[i] for i in w["outputs"]],
              w["output_names"], w["name"], w["mesh_axes"])
    g.scheduled = w.get("scheduled", False)
    return g


def plan_to_wire(exe) -> dict:
    """A compiled launch plan as plain data, node positions in the per-device program `exe.prog.local`
    (sent with graph_to_wire): each kernel's generated source, cache key and resolved launch
    configs, so that a rank loads exactly what was compiled instead of compiling again."""
    index = {n: i for i, n in enumerate(exe.prog.local.nodes)}
    ids = lambda nodes: [index[n] for n in nodes]
    steps = []
    for s in exe.plan:
        if s.step == "kernel":
            k = s.kernel
            steps.append(("kernel", {"name": k.name, "kind": k.kind, "source": k.source, "key": k.key,
                                     "ops": ids(k.ops), "inputs": ids(k.inputs), "outputs": ids(k.outputs),
                                     "axes": list(k.axes), "reason": k.reason, "signature": dict(k.signature),
                                     "configs": {True: k.config(True), False: k.config(False)}}))
        elif s.step == "collective":
            steps.append(("collective", index[s.node]))
        else:
            steps.append(("view", index[s.node], index[s.source]))
    return {"target": exe.target, "steps": steps}


def plan_from_wire(w: dict, local: Graph) -> list:
    """The launch plan `plan_to_wire` sent, over this process's copy of the per-device program;
    kernel files come from (or are written to) this process's kernel cache."""
    from ..codegen.cache import load_kernel_file
    from ..codegen.executable import Kernel, KernelLaunch
    from ..codegen.fusion import CollectiveStep, ViewStep
    nodes = local.nodes
    at = lambda ids: [nodes[i] for i in ids]
    plan = []
    for entry in w["steps"]:
        if entry[0] == "kernel":
            k = entry[1]
            path = load_kernel_file(k["key"], k["name"], k["source"], w["target"])
            configs = k["configs"]
            plan.append(KernelLaunch(Kernel(k["name"], k["kind"], k["source"], at(k["ops"]), at(k["inputs"]),
                                            at(k["outputs"]), k["axes"], k["reason"], path, k["key"],
                                            lambda interpret, tuned=True, c=configs: dict(c[interpret]),
                                            k["signature"])))
        elif entry[0] == "collective":
            plan.append(CollectiveStep(nodes[entry[1]]))
        else:
            plan.append(ViewStep(nodes[entry[1]], nodes[entry[2]]))
    return plan
