"""shardc IR: a closed op set, SSA graphs, shape rules, verifier, text form, numpy evaluator."""
from .dtypes import DType
from .evaluate import EVAL, evaluate_graph, eval_node
from .graph import Graph, GraphBuilder, Node, to_numpy
from .ops import Op
from .parser import parse_graph
from .printer import print_graph
from .shapes import RULES, infer
from .verify import verify

__all__ = ["DType", "EVAL", "Graph", "GraphBuilder", "Node", "Op", "RULES", "eval_node",
           "evaluate_graph", "infer", "parse_graph", "print_graph", "to_numpy", "verify"]
