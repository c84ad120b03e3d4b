"""MODEL given as path/to/file.py:factory, for the CLI.

factory() returns (model_or_fn, example_args), (model_or_fn, example_args, specs), or a dict with
keys model, args and optionally specs, loss and targets:

    def factory(batch=4):                       # a `batch` parameter receives --batch
        model = Net()
        x, y = torch.randn(batch, 16), torch.randint(0, 10, (batch,))
        return {"model": model, "args": (x,), "targets": (y,),
                "loss": lambda out, y: F.cross_entropy(out, y), "specs": {"x": P("dp")}}

The forward pass is model(*args) (JAX: fn(*args), args[0] the parameters). With a loss, --train
captures one training step: loss(model(*args), *targets), its gradients with respect to the
parameters (a torch module's parameters; JAX: the pytree args[0]) and the optimizer update
(sgd, adam, adamw), as one graph step(params[, opt_state], *args, *targets) → (loss, new
params[, new opt_state]). The file's folder is on the import path while it loads, as
`python file.py` would have it."""
from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from .errors import Error
from .models.optim import init_state, update

KEYS = ("model", "args", "specs", "loss", "targets")


class FileModel:
    def __init__(self, text: str, batch: int | None = None):
        path, _, factory = text.rpartition(":")
        if not path.endswith(".py") or not factory.isidentifier():
            raise Error(f"MODEL {text!r}: expected a zoo name (gpt2:tiny) or path/to/file.py:factory")
        file = Path(path)
        if not file.is_file():
            raise Error(f"MODEL {text!r}: no such file {str(file)!r}")
        self.text = text
        made = self._call_factory(self._load(file), factory, batch)
        if isinstance(made, dict):
            unknown = sorted(set(made) - set(KEYS))
            if unknown or "model" not in made or "args" not in made:
                raise Error(f"MODEL {text!r}: {factory}() returned a dict with keys {sorted(made)}; expected "
                            f"model, args and optionally specs, loss, targets")
        elif isinstance(made, tuple) and len(made) in (2, 3):
            made = dict(zip(("model", "args", "specs"), made))
        else:
            raise Error(f"MODEL {text!r}: {factory}() must return (model_or_fn, example_args[, specs]) "
                        f"or a dict with model, args[, specs, loss, targets]")
        self.fn = made["model"]
        self.args = _as_tuple(made["args"])
        self.specs = dict(made.get("specs") or {})
        self.loss = made.get("loss")
        self.targets = _as_tuple(made.get("targets", ()))
        self.is_torch = any(type(a).__module__.startswith("torch") for a in self.args) or \
            type(self.fn).__module__.startswith("torch")

    def _load(self, file: Path):
        folder = str(file.resolve().parent)
        added = folder not in sys.path
        if added:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(f"shardc_user_model_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code failed: say where, in one line
            raise Error(f"MODEL {self.text!r}: {type(e).__name__}: {e}") from e
        return module

    def _call_factory(self, module, factory: str, batch: int | None):
        fn = getattr(module, factory, None)
        if fn is None:
            raise Error(f"MODEL {self.text!r}: {module.__file__!r} has no function {factory!r}")
        kwargs = {}
        if batch is not None:
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                params = {}
            if "batch" not in params:
                raise Error(f"MODEL {self.text!r}: --batch needs the factory to take it: def {factory}(batch=...)")
            kwargs["batch"] = batch
        try:
            return fn(**kwargs)
        except Exception as e:
            raise Error(f"MODEL {self.text!r}: {factory}() raised {type(e).__name__}: {e}") from e

    def tp_specs(self):
        raise Error("--plan megatron needs a zoo model; give a file model's specs with --spec or its factory")

    def capture(self, train: bool, optimizer: str = "sgd", lr: float = 1e-3):
        """(Graph, args): the forward pass, or with `train` the training step, captured."""
        import shardc
        if not train:
            g = shardc.from_torch(self.fn, self.args) if self.is_torch else shardc.from_jax(self.fn, *self.args)
            return g, self.args
        if self.loss is None:
            raise Error(f"MODEL {self.text!r}: --train needs a loss: return a dict with 'loss' (and 'targets') "
                        f"from the factory")
        if self.is_torch:
            step, args = self._torch_step(optimizer, lr)
            return shardc.from_torch(step, args, capture="make_fx"), args
        step, args = self._jax_step(optimizer, lr)
        return shardc.from_jax(step, *args), args

    def _torch_step(self, optimizer: str, lr: float):
        import torch
        from torch.func import functional_call, grad_and_value
        module, loss, n = self.fn, self.loss, len(self.args)
        if not isinstance(module, torch.nn.Module):
            raise Error(f"MODEL {self.text!r}: --train needs a torch.nn.Module: its parameters are what the step "
                        f"trains")
        params = {k: p.detach().clone() for k, p in module.named_parameters()}
        state = init_state(optimizer, params, torch.zeros_like, torch.zeros((), dtype=torch.float32))

        def loss_of(p, args, targets):
            return loss(functional_call(module, p, args), *targets)

        def step(params, *rest):
            state, rest = (rest[0], rest[1:]) if optimizer != "sgd" else ({}, rest)
            grads, value = grad_and_value(loss_of)(params, tuple(rest[:n]), rest[n:])
            new_params, new_state = update(optimizer, params, grads, state, lr, torch.sqrt)
            return (value, new_params) + ((new_state,) if optimizer != "sgd" else ())

        first = (params, state) if optimizer != "sgd" else (params,)
        return step, first + self.args + self.targets

    def _jax_step(self, optimizer: str, lr: float):
        import jax
        import jax.numpy as jnp
        fn, loss = self.fn, self.loss
        params, inputs = self.args[0], self.args[1:]
        n = len(inputs)
        state = init_state(optimizer, params, jnp.zeros_like, jnp.zeros((), jnp.float32), jax.tree_util.tree_map)

        def step(params, *rest):
            state, rest = (rest[0], rest[1:]) if optimizer != "sgd" else ({}, rest)
            value, grads = jax.value_and_grad(lambda p: loss(fn(p, *rest[:n]), *rest[n:]))(params)
            new_params, new_state = update(optimizer, params, grads, state, lr, jnp.sqrt, jax.tree_util.tree_map)
            return (value, new_params) + ((new_state,) if optimizer != "sgd" else ())

        first = (params, state) if optimizer != "sgd" else (params,)
        return step, first + tuple(inputs) + self.targets


def _as_tuple(args) -> tuple:
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)
