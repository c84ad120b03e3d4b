"""Text → IR: reads what printer.py writes. Errors name the line and what was expected."""
from __future__ import annotations

import json
import re

import numpy as np

from ..errors import IRError
from . import dtypes
from .graph import Graph, Node
from .ops import Op
from .shapes import infer

_HEADER = re.compile(r"graph\s+([\w.\-]+)(?:\s+mesh\(([^)]*)\))?\s*\{$")
_NODE = re.compile(r'%(\d+)(?:\s+("(?:[^"\\]|\\.)*"))?\s*:\s*(\w+)\[([\d,\s]*)\]\s*=\s*(\w+)\(([^)]*)\)(.*)$')
_RETURN = re.compile(r"return\s*(.*)$")
_OUT = re.compile(r'%(\d+)\s+("(?:[^"\\]|\\.)*")')
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(-?inf|nan)\b|(-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+)'
                    r'|(-?\d+)|(dense<)|([A-Za-z_]\w*)|([\[\],>=]))')


class _Values:
    """Recursive-descent reader of attribute values: numbers, strings, lists, dtypes, dense<[...]>."""

    def __init__(self, text: str, where: str):
        self.toks = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise IRError(f"{where}: cannot read attributes at {text[pos:pos + 20]!r}")
            self.toks.append(m)
            pos = m.end()
        self.i = 0
        self.where = where

    def peek(self) -> str | None:
        return self.toks[self.i].group(0).strip() if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        t = self.peek()
        if t is None or (want is not None and t != want):
            raise IRError(f"{self.where}: expected {want or 'a value'}, found {t or 'end of line'}")
        self.i += 1
        return t

    def value(self):
        m = self.toks[self.i] if self.i < len(self.toks) else None
        if m is None:
            raise IRError(f"{self.where}: expected a value, found end of line")
        self.i += 1
        s, special, flt, integer, dense, word, punct = m.groups()
        if s is not None:
            return json.loads(s)
        if special is not None or flt is not None:
            return float(special or flt)
        if integer is not None:
            return int(integer)
        if dense is not None:
            vals = self.value()
            self.take(">")
            return ("dense", vals)
        if word is not None:
            if word in ("true", "false"):
                return word == "true"
            if word == "none":
                return None
            return dtypes.parse(word)
        if punct == "[":
            items = []
            while self.peek() != "]":
                items.append(self.value())
                if self.peek() == ",":
                    self.take(",")
            self.take("]")
            return tuple(items)
        raise IRError(f"{self.where}: unexpected {punct!r}")

    def attrs(self) -> dict:
        out = {}
        while self.peek() is not None:
            key = self.take()
            self.take("=")
            out[key] = self.value()
            if self.peek() == ",":
                self.take(",")
        return out


def parse_graph(text: str) -> Graph:
    lines = [(i + 1, l.strip()) for i, l in enumerate(text.splitlines()) if l.strip()]
    if not lines:
        raise IRError("empty IR text")
    lineno, head = lines[0]
    m = _HEADER.match(head)
    if not m:
        raise IRError(f"line {lineno}: expected 'graph NAME [mesh(...)] {{', found {head!r}")
    name, mesh_text = m.group(1), m.group(2)
    mesh_axes = {}
    for part in filter(None, (p.strip() for p in (mesh_text or "").split(","))):
        k, _, v = part.partition("=")
        if not v.strip().isdigit():
            raise IRError(f"line {lineno}: bad mesh axis {part!r} (expected name=size)")
        mesh_axes[k.strip()] = int(v)
    nodes, inputs, by_id = [], [], {}
    outputs, output_names = None, []
    for lineno, line in lines[1:]:
        where = f"line {lineno}"
        if line == "}":
            break
        r = _RETURN.match(line)
        if r:
            for om in _OUT.finditer(r.group(1)):
                outputs = outputs or []
                outputs.append(_ref(by_id, om.group(1), where))
                output_names.append(json.loads(om.group(2)))
            if outputs is None:
                raise IRError(f"{where}: return needs at least one '%N \"name\"'")
            continue
        nodes.append(_parse_node(line, where, by_id, mesh_axes, inputs))
    else:
        raise IRError("IR text ends without a closing '}'")
    if outputs is None:
        raise IRError("IR text has no return line")
    return Graph(nodes, inputs, outputs, output_names, name, mesh_axes)


def _ref(by_id: dict, ident: str, where: str) -> Node:
    if ident not in by_id:
        raise IRError(f"{where}: %{ident} is used before it is defined")
    return by_id[ident]


def _parse_node(line, where, by_id, mesh_axes, inputs) -> Node:
    m = _NODE.match(line)
    if not m:
        raise IRError(f"{where}: cannot read node {line!r}")
    ident, qname, dt, dims, opname, args, rest = m.groups()
    if ident in by_id:
        raise IRError(f"{where}: %{ident} is defined twice")
    try:
        op = Op(opname)
    except ValueError:
        raise IRError(f"{where}: unknown op {opname!r}") from None
    dtype = dtypes.parse(dt)
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    operands = [_ref(by_id, a.strip().lstrip("%"), where) for a in args.split(",") if a.strip()]
    rest = rest.strip()
    source = None
    lm = re.search(r'\s*loc\(("(?:[^"\\]|\\.)*")\)\s*$', rest)
    if lm:
        source = json.loads(lm.group(1))
        rest = rest[:lm.start()].strip()
    attrs = {}
    if rest:
        if not (rest.startswith("{") and rest.endswith("}")):
            raise IRError(f"{where}: expected '{{attrs}}' or loc(...), found {rest!r}")
        attrs = _Values(rest[1:-1], where).attrs()
    if isinstance(attrs.get("value"), tuple) and attrs["value"][:1] == ("dense",):
        attrs["value"] = np.array(attrs["value"][1], dtype=np.float64 if dtype.is_float else None) \
            .astype(dtype.np).reshape(shape)
    name = json.loads(qname) if qname else None
    try:
        out_shape, out_dtype = infer(op, operands, attrs, shape, dtype, mesh_axes)
    except IRError as e:
        raise IRError(f"{where}: {e}") from None
    if (out_shape, out_dtype) != (shape, dtype):
        raise IRError(f"{where}: declared {dtype}{list(shape)} but {op.value} gives {out_dtype}{list(out_shape)}")
    n = Node(op, operands, attrs, shape, dtype, source, name)
    by_id[ident] = n
    if op is Op.PARAMETER:
        if not name:
            raise IRError(f"{where}: a parameter needs a name")
        inputs.append(n)
    return n
