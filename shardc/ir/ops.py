"""The closed op set. Adding an op: one line here and one entry in each stage's table
(shape rules, evaluator, printer needs nothing, sharding rules, codegen); completeness tests list gaps."""
from __future__ import annotations

import enum


class Op(enum.Enum):
    # members are singletons: hash them by identity (Enum's own __hash__ runs Python code, and the
    # analyses test `op in SET` millions of times at 80 layers)
    __hash__ = object.__hash__

    # graph leaves
    PARAMETER = "parameter"
    CONSTANT = "constant"
    IOTA = "iota"
    # elementwise unary
    NEG = "neg"
    ABS = "abs"
    SIGN = "sign"
    EXP = "exp"
    LOG = "log"
    LOG1P = "log1p"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    TANH = "tanh"
    LOGISTIC = "logistic"
    ERF = "erf"
    SIN = "sin"
    COS = "cos"
    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"
    NOT = "not"
    # elementwise binary
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    REM = "rem"
    POW = "pow"
    MAX = "max"
    MIN = "min"
    AND = "and"
    OR = "or"
    XOR = "xor"
    SHL = "shl"
    SHR = "shr"
    # compare (bool result)
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    # ternary and conversion
    SELECT = "select"
    CAST = "cast"
    # layout
    BROADCAST = "broadcast"
    RESHAPE = "reshape"
    TRANSPOSE = "transpose"
    SLICE = "slice"
    CONCATENATE = "concatenate"
    PAD = "pad"
    # indexing (embeddings, MoE routing)
    GATHER = "gather"
    SCATTER = "scatter"
    # reductions
    REDUCE_SUM = "reduce_sum"
    REDUCE_MAX = "reduce_max"
    REDUCE_MIN = "reduce_min"
    # contraction
    DOT_GENERAL = "dot_general"
    RAGGED_DOT = "ragged_dot"   # grouped matmul: rows (or the contraction) in value-sized groups
    # SPMD
    AXIS_INDEX = "axis_index"
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    COLLECTIVE_PERMUTE = "collective_permute"
    RAGGED_ALL_TO_ALL = "ragged_all_to_all"   # value-sized row segments in a static buffer

    def __repr__(self) -> str:
        return self.value


UNARY = frozenset({Op.NEG, Op.ABS, Op.SIGN, Op.EXP, Op.LOG, Op.LOG1P, Op.SQRT, Op.RSQRT, Op.TANH,
                   Op.LOGISTIC, Op.ERF, Op.SIN, Op.COS, Op.FLOOR, Op.CEIL, Op.ROUND, Op.NOT})
BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.REM, Op.POW, Op.MAX, Op.MIN,
                    Op.AND, Op.OR, Op.XOR, Op.SHL, Op.SHR})
COMPARE = frozenset({Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE})
ELEMENTWISE = UNARY | BINARY | COMPARE | {Op.SELECT, Op.CAST}
REDUCE = frozenset({Op.REDUCE_SUM, Op.REDUCE_MAX, Op.REDUCE_MIN})
COLLECTIVES = frozenset({Op.ALL_REDUCE, Op.ALL_GATHER, Op.REDUCE_SCATTER, Op.ALL_TO_ALL,
                         Op.COLLECTIVE_PERMUTE, Op.RAGGED_ALL_TO_ALL})
# ops whose operands must be floats / integers-or-bool
FLOAT_ONLY = frozenset({Op.EXP, Op.LOG, Op.LOG1P, Op.SQRT, Op.RSQRT, Op.TANH, Op.LOGISTIC, Op.ERF,
                        Op.SIN, Op.COS, Op.FLOOR, Op.CEIL, Op.ROUND, Op.POW})
INT_OR_BOOL_ONLY = frozenset({Op.NOT, Op.AND, Op.OR, Op.XOR, Op.SHL, Op.SHR})
