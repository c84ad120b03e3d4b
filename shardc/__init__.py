"""shardc: a parallelizing ML compiler. The public API lives here and nowhere else."""
from .errors import Error, IRError, ShardingError, UnsupportedOpError
from .ir import DType, Graph, Op, parse_graph
from .partition import CollectiveRecord, Mesh, P, Sharding, SpmdProgram, Strided, partition
from .partition.pipeline import Pipeline, PipelineProgram
from .version import __version__
from .analysis import Analysis, analyze, hardware  # noqa: E402  (no framework imports)


def from_torch(fn, args, kwargs=None, **options) -> Graph:
    """torch.nn.Module or function + example args → Graph (torch.export, core ATen)."""
    from .frontend.torch import from_torch as _impl
    return _impl(fn, args, kwargs, **options)


def from_jax(fn, *args, **options) -> Graph:
    """jax function + example args → Graph (jaxpr)."""
    from .frontend.jax import from_jax as _impl
    return _impl(fn, *args, **options)


def fold(g: Graph) -> Graph:
    """A captured graph of N identical layers held as 4 of them, partitioned once per block and
    unrolling to the capture exactly (ir/fold.py); `g` itself when not, `g.fold_note` says why."""
    from .ir.fold import fold as _impl
    return _impl(g)


def check(exe, *args, engine: str | None = None, **options):
    """Run the unsharded reference and the executable (or SpmdProgram) on its engine; returns
    per-output errors and raises shardc.runtime.CheckError on a mismatch."""
    from .runtime import check as _check
    return _check(exe, *args, engine=engine or getattr(exe, "engine", "torch"), **options)


def constrain(x, spec):
    """Pin the sharding of a value inside a torch model's forward: `shardc.constrain(h, P("dp", None))`.
    An identity that torch.export keeps; the partitioner treats it as a spec on that value.
    (In JAX use jax.lax.with_sharding_constraint, which from_jax reads the same way.)"""
    from .frontend.torch_constrain import Constrain, encode
    spec = P(*spec) if not isinstance(spec, P) else spec
    if any(isinstance(e, Strided) for e in spec):
        raise ShardingError(f"constrain({spec!r}): Strided entries are for the weights' specs given to partition")
    return Constrain.apply(x, encode(spec))


def pipeline_split(x):
    """Begin a pipeline stage at value `x` inside a torch model's forward: `h = shardc.pipeline_split(h)`.
    An identity that torch.export keeps; partition(..., pipeline=...) cuts the stages there."""
    from .frontend.torch_pipeline_split import PipelineSplit
    return PipelineSplit.apply(x)


def compile(prog, target: str = "triton"):
    """SpmdProgram → Executable: fused kernels (Triton source) and each device's launch plan;
    codegen makes it, the runtime gives it `run` and `run_interpreted`."""
    from .runtime.executable import compile as _impl
    return _impl(prog, target)


__all__ = ["Analysis", "CollectiveRecord", "DType", "Error", "Graph", "IRError", "Mesh", "Op", "P", "Pipeline", "PipelineProgram", "Sharding",
           "ShardingError", "SpmdProgram", "Strided", "UnsupportedOpError", "analyze", "check", "compile", "constrain", "fold", "from_jax",
           "from_torch", "hardware", "parse_graph", "partition", "pipeline_split"]
