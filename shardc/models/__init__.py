"""The model zoo: torch and JAX twins of MLP, GPT-2, Llama and a mixture-of-experts block.

    from shardc import models
    m = models.get("gpt2:tiny")                 # or "gpt2" (size "tiny"), or models.get("gpt2", n_layer=1)
    module = m.torch_module(seed=0)             # float32 nn.Module, deterministic from the seed
    params = m.jax_params(seed=0)               # flat {torch parameter name: jax.Array}, same values
    m.torch_loss(module, *m.torch_inputs(), m.torch_targets())
    m.jax_loss(params, *m.jax_inputs(), m.jax_targets())

Each twin pair has identical math, parameter names and layouts (Linear weights are [out, in]).
Parameters and example data come from numpy RNGs (data.py), so the same seed gives the same
values in both frameworks. Token ids are int64 in torch and int32 in JAX (x64 is off by default).

torch and jax are imported only when a torch_*/jax_* method is called: importing this package
imports neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shardc.errors import Error

from .configs import (DEFAULT_SIZE, PRESETS, PRODUCTION, GPT2Config, LlamaConfig, MixtralConfig, MLPConfig, MoEConfig,
                      override)
from .data import example_batch, init_params

__all__ = ["ZOO", "ModelDef", "get", "torch_params_to_jax",
           "MLPConfig", "GPT2Config", "LlamaConfig", "MixtralConfig", "MoEConfig", "PRESETS", "PRODUCTION"]

# Sizes small enough to hold real values on a CPU machine; larger ones capture shape-only.
VALUED_SIZES = ("tiny", "mini", "small")


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """One model of the zoo at one configuration; builds modules, params, inputs and steps."""

    name: str        # "mlp" | "gpt2" | "llama" | "moe"
    size: str        # preset name the config started from ("tiny", "mini", "small")
    config: Any      # frozen dataclass from configs.py (with any overrides applied)

    def __repr__(self):
        return f"ModelDef({self.name}:{self.size}, {self.config})"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.config.param_shapes()

    def num_params(self) -> int:
        return self.config.num_params()

    def numpy_params(self, seed: int = 0):
        """The float32 numpy arrays both twins are initialized from."""
        return init_params(self.config, seed)

    def tp_specs(self, axis: str = "tp") -> dict:
        """Megatron tensor-parallel specs (parameter name globs → P) over mesh axis `axis`."""
        from .specs import tensor_parallel_specs
        return tensor_parallel_specs(self.config.family, self.config, axis)

    @property
    def shape_only(self) -> bool:
        """Captured from shapes alone by default (sizes above "small": no values to hold)."""
        return self.size not in VALUED_SIZES

    # ---------------------------------------------------------------------------------- torch
    def torch_module(self, seed: int = 0, dtype=None, device="cpu"):
        """nn.Module with deterministic params (float32 unless dtype is given, e.g. torch.bfloat16)."""
        from . import torch_models

        module = torch_models.load_numpy(torch_models.build(self.config), init_params(self.config, seed), device)
        return module if dtype is None else module.to(dtype)

    def torch_meta_module(self):
        """The module on the meta device: shapes only, no memory (e.g. to count a "small" model)."""
        from . import torch_models

        return torch_models.build(self.config, device="meta")

    def torch_inputs(self, batch: int = 2, seed: int = 0, dtype=None) -> tuple:
        """Forward args; float inputs in dtype (default float32), token ids always int64."""
        inputs, _ = example_batch(self.config, batch, seed)
        return tuple(_to_torch(a, dtype) for a in inputs)

    def torch_targets(self, batch: int = 2, seed: int = 0, dtype=None):
        return _to_torch(example_batch(self.config, batch, seed)[1], dtype)

    def torch_loss(self, module, *inputs, targets=None):
        """Scalar loss; targets is the last positional argument (or the `targets` keyword)."""
        from . import torch_models

        inputs, targets = _split_targets(inputs, targets)
        return torch_models.loss(self.config, module(*inputs), targets)

    def torch_train_step(self, optimizer: str = "sgd", lr: float = 1e-3):
        """(fn, args_builder); see train.py. args_builder(module, batch=2, seed=0, dtype=None)."""
        from .train import torch_train_step

        return torch_train_step(self, optimizer, lr)

    def capture(self, train: bool = False, frontend: str = "jax", batch: int = 2, seed: int = 1,
                lr: float = 1e-3, optimizer: str = "sgd", shape_only: bool | None = None,
                dtype: str | None = None, repeat: bool | None = None):
        """(Graph, args): the forward pass or training step (sgd, adam, adamw) captured by shardc's
        `frontend`, with the example arguments to call it with (parameters from seed 0, data from `seed`).

        shape_only (default: sizes above "small") captures from shapes alone (jax.ShapeDtypeStruct
        or meta tensors): args are those stand-ins and the Graph cannot be evaluated. `dtype` is
        the parameters' ("bf16", "f32"; default f32, bf16 when shape-only); optimizer state is f32.

        repeat (default: shape-only JAX captures of more than 4 layers) keeps the identical layers
        as one block: the Graph holds 4 of them and `g.repeat` says how many the model has
        (ir/blocks.py); args are still the whole model's. JAX traces 4 layers; torch captures the
        whole model and folds it (ir/fold.py)."""
        import shardc
        shape_only = self.shape_only if shape_only is None else shape_only
        depth = getattr(self.config, "n_layer", None)
        if repeat is None:
            repeat = shape_only and frontend == "jax" and depth is not None and depth > 4
        if repeat:
            return self._capture_repeated(train, frontend, batch, seed, lr, optimizer, shape_only, dtype)
        if shape_only:
            from .shapes import shape_only_args
            fn, args = shape_only_args(self, train, frontend, batch, optimizer, lr, dtype or "bf16")
            if frontend == "torch":
                return shardc.from_torch(fn, args, capture="make_fx" if train else "auto"), args
            return shardc.from_jax(fn, *args), args
        if frontend == "torch":
            if train:
                fn, build = self.torch_train_step(optimizer, lr=lr)
                args = build(self.torch_module(0), batch, seed)
                return shardc.from_torch(fn, args, capture="make_fx"), args
            module, args = self.torch_module(0), self.torch_inputs(batch, seed)
            return shardc.from_torch(module, args), args
        fn, args = self.jax_step(train, batch, seed, lr, optimizer)
        return shardc.from_jax(fn, *args), args

    def _capture_repeated(self, train, frontend, batch, seed, lr, optimizer, shape_only, dtype):
        """The model's layers are one module repeated (the config's n_layer copies of one block):
        capture it with 4 layers and say how many it has."""
        from ..errors import Error
        from ..frontend.jax import FlattenByName, _arg_names
        from ..ir.blocks import CAPTURED, Repeat
        depth = getattr(self.config, "n_layer", None)
        if depth is None or depth <= CAPTURED:
            raise Error(f"repeat=True needs a model of more than {CAPTURED} layers ({self.name}: {depth} layers)")
        if frontend == "torch":   # the whole model captured, its identical layers folded (ir/fold.py)
            from ..ir.fold import fold
            g, args = self.capture(train, frontend, batch, seed, lr, optimizer, shape_only, dtype, repeat=False)
            g = fold(g)
            if g.repeat is None:
                raise Error(f"repeat=True: {self.name}'s torch capture does not fold: {g.fold_note}")
            return g, args
        short = ModelDef(self.name, self.size, override(self.config, n_layer=CAPTURED))
        g, _ = short.capture(train, frontend, batch, seed, lr, optimizer, shape_only, dtype, repeat=False)
        if shape_only:
            from .shapes import shape_only_args
            fn, args = shape_only_args(self, train, frontend, batch, optimizer, lr, dtype or "bf16")
        else:
            fn, args = self.jax_step(train, batch, seed, lr, optimizer)
        g.repeat = Repeat(depth, FlattenByName(_arg_names(fn, len(args))))
        return g, args

    def jax_step(self, train: bool = False, batch: int = 2, seed: int = 1, lr: float = 1e-3,
                 optimizer: str = "sgd"):
        """(fn, args): the JAX forward pass or training step and its example arguments
        (parameters from seed 0, data from `seed`), as `capture` captures them."""
        params = self.jax_params(0)
        if train:
            fn, build = self.jax_train_step(optimizer, lr=lr)
            return fn, build(params, batch, seed)
        return self.jax_forward, (params, *self.jax_inputs(batch, seed))

    # ------------------------------------------------------------------------------------ JAX
    def jax_params(self, seed: int = 0, dtype=None) -> dict:
        """Flat {name: jax.Array} with the same names, shapes and values as torch_module(seed)."""
        import jax.numpy as jnp

        return {n: jnp.asarray(a, dtype=dtype) for n, a in init_params(self.config, seed).items()}

    def jax_forward(self, params, *inputs):
        from . import jax_models

        return jax_models.forward(self.config, params, *inputs)

    def jax_inputs(self, batch: int = 2, seed: int = 0, dtype=None) -> tuple:
        """Same values as torch_inputs; float inputs in dtype (default float32), ids int32."""
        inputs, _ = example_batch(self.config, batch, seed)
        return tuple(_to_jax(a, dtype) for a in inputs)

    def jax_targets(self, batch: int = 2, seed: int = 0, dtype=None):
        return _to_jax(example_batch(self.config, batch, seed)[1], dtype)

    def jax_loss(self, params, *inputs, targets=None):
        from . import jax_models

        inputs, targets = _split_targets(inputs, targets)
        return jax_models.loss(self.config, jax_models.forward(self.config, params, *inputs), targets)

    def jax_train_step(self, optimizer: str = "sgd", lr: float = 1e-3):
        """(fn, args_builder); see train.py. args_builder(params, batch=2, seed=0, dtype=None)."""
        from .train import jax_train_step

        return jax_train_step(self, optimizer, lr)


def _split_targets(args, targets):
    if targets is not None:
        return tuple(args), targets
    if not args:
        raise Error("loss needs the forward inputs followed by the targets")
    return tuple(args[:-1]), args[-1]


def _to_torch(a, dtype):
    import torch

    t = torch.from_numpy(a)
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _to_jax(a, dtype):
    import jax.numpy as jnp
    import numpy as np

    if np.issubdtype(a.dtype, np.integer):
        return jnp.asarray(a, dtype=jnp.int32)  # int64 would be truncated anyway with x64 off
    return jnp.asarray(a, dtype=dtype)


def torch_params_to_jax(module) -> dict:
    """Flat {name: jax.Array} of a torch module's parameters (names, shapes and dtypes kept)."""
    from .torch_models import to_jax

    return to_jax(module)


def get(spec: str, **overrides) -> ModelDef:
    """ModelDef for "name" or "name:size" (test zoo or production presets: "llama3:70b");
    keyword arguments replace config fields."""
    name, _, size = spec.partition(":")
    table = PRESETS if name in PRESETS else PRODUCTION if name in PRODUCTION else None
    if table is None:
        raise Error(f"unknown model {name!r}; valid models: {', '.join(sorted(PRESETS) + sorted(PRODUCTION))}")
    size = size or (DEFAULT_SIZE if table is PRESETS else next(iter(table[name])))
    if size not in table[name]:
        raise Error(f"unknown size {size!r} for model {name!r}; valid sizes: {', '.join(table[name])}")
    config = override(table[name][size], **overrides) if overrides else table[name][size]
    return ModelDef(name, size, config)


# name -> ModelDef at the default size ("tiny").
ZOO: dict[str, ModelDef] = {name: get(name) for name in PRESETS}
