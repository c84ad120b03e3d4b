"""Training through `shardc.torch.parallelize`: forward and backward both run partitioned.

For each input signature, a `Runner` holds two programs, each captured, partitioned over the
mesh and compiled once:

- forward: `from_torch(module, args)` as always (parameters and buffers are inputs named by
  their FQN, so specs and plans read them as before). Parameters are no longer frozen at
  capture: before every run the graph's bound values are read afresh from the module, so an
  optimizer's in-place updates are seen without a new capture or compile.
- backward (made on the first `backward`, once per set of inputs that need gradients): a VJP
  program `vjp(state, args, cotangents) -> {name: gradient}` traced with make_fx through
  `torch.func.vjp` of `functional_call(module, ...)`. It recomputes the forward inside
  (rematerialization: no activations travel from the forward ranks to the backward ranks), and
  every input, cotangent and gradient is pinned to the forward program's sharding of the same
  tensor (a gradient is split like its parameter: FSDP's gradients are reduce-scattered).

`Function` is the torch.autograd.Function that joins them: `.grad` of the module's own
parameters is what the unsharded module would give.
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from .errors import Error
from .pins import pin
from .runtime import run


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by FQN (tied tensors under each of their names)."""
    return {**dict(module.named_parameters(remove_duplicate=False)),
            **dict(module.named_buffers(remove_duplicate=False))}


class Runner:
    """One input signature of a Parallelized module: its forward executable, its VJP executables."""

    def __init__(self, module, mesh, specs, plan, target, run_options, args, kwargs=None):
        import shardc
        self.module, self.mesh, self.target, self.run_options = module, mesh, target, run_options
        kwargs = dict(kwargs or {})
        leaves, self.in_spec = pytree.tree_flatten((tuple(args), kwargs))
        self.template = list(leaves)
        self.tensor_at = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        g = shardc.from_torch(module, tuple(args), kwargs)
        self.exe = shardc.compile(shardc.partition(g, mesh, specs, plan), target=target)
        self.graph = self.exe.prog.graph
        state = module_state(module)
        # the bound values the module owns (lifted constants stay as captured)
        self.state_names = [n for n in self.graph.bound if n in state]
        self.arg_names = [p.name for p in self.graph.free_inputs]
        if len(self.arg_names) != len(self.tensor_at):
            raise Error(f"parallelize: {type(module).__name__} was captured with {len(self.arg_names)} tensor "
                        f"inputs for {len(self.tensor_at)} tensor arguments")
        self.backwards: dict[tuple, object] = {}

    # ---- forward -------------------------------------------------------------------------------
    def state_tensors(self) -> list[torch.Tensor]:
        state = module_state(self.module)
        return [state[n] for n in self.state_names]

    def call_args(self, arg_tensors) -> tuple[tuple, dict]:
        """(args, kwargs) of a call with these tensors (non-tensor arguments as captured)."""
        leaves = list(self.template)
        for i, t in zip(self.tensor_at, arg_tensors):
            leaves[i] = t
        return pytree.tree_unflatten(leaves, self.in_spec)

    def forward(self, state, arg_tensors) -> list[torch.Tensor]:
        from .ir import to_numpy
        bound = self.graph.bound
        for n, t in zip(self.state_names, state):
            bound[n] = to_numpy(t.detach())
        args, kwargs = self.call_args(arg_tensors)
        return run(self.exe, *args, *kwargs.values(), engine="torch", **self.run_options)

    # ---- backward ------------------------------------------------------------------------------
    def backward(self, state, arg_tensors, cotangents, needs: tuple[bool, ...]) -> list:
        """Gradients for every state tensor and tensor argument (None where not needed)."""
        key = (needs, tuple(c is not None for c in cotangents))
        if key not in self.backwards:
            self.backwards[key] = self._compile_backward(state, arg_tensors, cotangents, needs)
        exe, diff_state, diff_args, cot_at = self.backwards[key]
        named = dict(zip(self.state_names, [t.detach() for t in state]))
        cots = [cotangents[i].detach().contiguous() for i in cot_at]
        grads = run(exe, named, [t.detach() for t in arg_tensors], cots, engine="torch", **self.run_options)
        by_name = dict(zip(exe.prog.graph.output_names, grads))
        out = [None] * (len(state) + len(arg_tensors))
        for i in diff_state:
            out[i] = by_name[f"out[{self.state_names[i]!r}]"]
        for i in diff_args:
            out[len(state) + i] = by_name[f"out[{self.arg_names[i]!r}]"]
        return out

    def _compile_backward(self, state, arg_tensors, cotangents, needs):
        import shardc
        n = len(state)
        diff_state = [i for i in range(n) if needs[i]]
        diff_args = [i for i in range(len(arg_tensors)) if needs[n + i]]
        names = set(self.state_names)
        if names & {self.arg_names[i] for i in diff_args}:
            raise Error(f"parallelize: an argument shares its name with a parameter of {type(self.module).__name__}")
        cot_at = [i for i, c in enumerate(cotangents) if c is not None]
        module, state_names, arg_names = self.module, self.state_names, self.arg_names
        ds_names = [state_names[i] for i in diff_state]

        def vjp(state, args, cots):
            def f(dstate, dargs):
                a = list(args)
                for i, t in zip(diff_args, dargs):
                    a[i] = t
                out = torch.func.functional_call(module, {**state, **dstate}, *self.call_args(a))
                flat = pytree.tree_leaves(out)
                return [flat[i] for i in cot_at]

            _, pull = torch.func.vjp(f, {k: state[k] for k in ds_names}, [args[i] for i in diff_args])
            gs, ga = pull(list(cots))
            return {**gs, **{arg_names[i]: g for i, g in zip(diff_args, ga)}}

        named = dict(zip(state_names, [t.detach() for t in state]))
        cots = [cotangents[i].detach() for i in cot_at]
        args = [t.detach() for t in arg_tensors]
        g = shardc.from_torch(vjp, (named, args, cots), capture="make_fx")
        g.name = f"{self.graph.name}_backward"
        fwd = self.exe.prog
        by_name = {p.name: s for p, s in zip(fwd.graph.inputs, fwd.input_shardings)}
        specs = {}
        for k in state_names:
            specs[f"state[{k!r}]"] = specs[f"out[{k!r}]"] = by_name[k]
        for i, k in enumerate(arg_names):
            specs[f"args[{i}]"] = by_name[k]
            specs[f"out[{k!r}]"] = by_name[k]
        for j, i in enumerate(cot_at):
            specs[f"cots[{j}]"] = fwd.output_shardings[i]
        present = set(g.input_names) | set(g.output_names)
        specs = {k: p for k, s in specs.items() if k in present and (p := pin(s)) is not None}
        exe = shardc.compile(shardc.partition(g, self.mesh, specs), target=self.target)
        return exe, diff_state, diff_args, cot_at


class Function(torch.autograd.Function):
    """apply(runner, n_state, *state, *arg_tensors) → the forward's outputs; backward runs the
    runner's VJP program."""

    @staticmethod
    def forward(ctx, runner, n_state, *tensors):
        outs = runner.forward(tensors[:n_state], tensors[n_state:])
        ctx.runner, ctx.n_state = runner, n_state
        ctx.set_materialize_grads(False)  # an output the loss does not use has no cotangent
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *cotangents):
        tensors, n = ctx.saved_tensors, ctx.n_state
        grads = ctx.runner.backward(tensors[:n], tensors[n:], cotangents, tuple(ctx.needs_input_grad[2:]))
        return (None, None, *grads)
