"""TorchEmitter: the shared Emitter plus what the torch op rules need to know about the op
being mapped: its name and user source line (for errors), torch's example output (`e.val`: its
result dtype and shape, which rules read instead of re-deriving torch's rules), and torch's type
promotion, including how its half-float kernels treat python scalars."""
from __future__ import annotations

import functools

import torch

from ..errors import UnsupportedOpError
from ..ir import DType, Node, Op
from ..ir.emitter import Emitter

HALF = (DType.bf16, DType.f16)
TORCH_TO_IR = {torch.float32: DType.f32, torch.float16: DType.f16, torch.bfloat16: DType.bf16,
               torch.int32: DType.i32, torch.int64: DType.i64, torch.bool: DType.bool}
IR_TO_TORCH = {v: k for k, v in TORCH_TO_IR.items()}


class TorchEmitter(Emitter):
    """Emitter + torch semantics for the op being mapped (its name, source line, example output)."""

    op_name = "?"   # "aten.add.Tensor"
    val = None      # torch's example output of the op: FakeTensor, or a tuple of them

    # ---- messages and torch's view of the op --------------------------------------------------
    def unsupported(self, what: str) -> UnsupportedOpError:
        at = f" at {self.source}" if self.source else ""
        return UnsupportedOpError(f"{self.op_name}{at}: {what} is not supported by shardc")

    def dtype(self, td) -> DType:
        if td not in TORCH_TO_IR:
            hint = " (use float32 or bfloat16)" if td == torch.float64 else ""
            raise self.unsupported(f"dtype {td}{hint}")
        return TORCH_TO_IR[td]

    def out_dtype(self, i: int | None = None) -> DType:
        return self.dtype((self.val if i is None else self.val[i]).dtype)

    def out_shape(self, i: int | None = None) -> tuple[int, ...]:
        return tuple(int(s) for s in (self.val if i is None else self.val[i]).shape)

    # ---- torch type promotion -----------------------------------------------------------------
    def to(self, v, dt: DType) -> Node:
        """A node or python scalar as a node of dtype dt."""
        return self.cast(v, dt) if isinstance(v, Node) else self.const(v, dt)

    def result_type(self, a, b) -> DType:
        """torch.result_type of two operands (nodes or python scalars)."""
        return _result_type(_promo_key(a), _promo_key(b))

    def arith(self, op: Op, a, b, dt: DType | None = None) -> Node:
        """Binary op in torch's result dtype (dt, else promotion). torch's half-float mul and div
        kernels keep a scalar operand (python float, 0-dim f32 tensor) in f32 and round once;
        its other kernels round the scalar to the half type first, as the IR's promotion does."""
        dt = dt or self.result_type(a, b)
        cdt = dt
        if dt in HALF and op in (Op.MUL, Op.DIV) and (_wide_scalar(a) or _wide_scalar(b)):
            cdt = DType.f32
        out = self.binary(op, self.to(a, cdt), self.to(b, cdt))
        return out if op in _COMPARE else self.cast(out, dt)

    def upcast(self, x: Node) -> Node:
        """Half floats computed in f32, as torch's CPU kernels do for norms, softmax and gelu."""
        return self.cast(x, DType.f32) if x.dtype in HALF else x

    def float_out(self, x: Node) -> Node:
        """x cast to the op's (floating) result dtype: exp(int tensor) is float32 in torch."""
        return self.cast(x, self.out_dtype())


_COMPARE = {Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE}


def _wide_scalar(v) -> bool:
    return isinstance(v, float) or (isinstance(v, Node) and v.rank == 0 and v.dtype is DType.f32)


def _promo_key(v):
    if isinstance(v, Node):
        return ("t", v.dtype, v.rank == 0)
    return ("py", type(v))


@functools.lru_cache(maxsize=None)
def _result_type(ka, kb) -> DType:
    def standin(k):
        if k[0] == "t":
            return torch.empty(() if k[2] else (1,), dtype=IR_TO_TORCH[k[1]], device="meta")
        return {bool: True, int: 1, float: 1.0}.get(k[1], 1.0)
    a, b = standin(ka), standin(kb)
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        a = torch.tensor(a)
    return TORCH_TO_IR.get(torch.result_type(a, b), DType.f32)


def reduce_dims(x: Node, dim) -> list[int] | None:
    """torch's reduction dims: None or [] mean all dims."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    return [d % max(x.rank, 1) for d in ([dim] if isinstance(dim, int) else dim)]
