"""Issue 11, item 8: every parameter and buffer dynamo lifts into a graph input is named by its
module path, whatever form dynamo's source takes (no engine: the sources are built by hand)."""
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.source import (AttrSource, DictGetItemSource, GetItemSource, LocalSource,
                                  UnspecializedParamBufferSource)

from shardc.torch_dynamo import input_name, input_names


def _placeholder(source, example=None):
    return SimpleNamespace(meta={"grapharg": SimpleNamespace(source=source, _example=example)}, op="placeholder")


def _modules(root: str, *path: str):
    src = LocalSource(root)
    for p in path:
        src = DictGetItemSource(AttrSource(src, "_modules"), p)
    return src


PARAM = torch.nn.Parameter(torch.zeros(2))


@pytest.mark.parametrize("source, example, want", [
    # inlined nn modules (torch 2.5+): _modules / _parameters / _buffers dict lookups, any root name
    (DictGetItemSource(UnspecializedParamBufferSource(_modules("self", "h", "0", "attn", "c_attn"), "_parameters"),
                       "weight"), PARAM, "params['h.0.attn.c_attn.weight']"),
    (DictGetItemSource(UnspecializedParamBufferSource(_modules("model", "blocks", "1"), "_parameters"), "bias"),
     PARAM, "params['blocks.1.bias']"),
    (DictGetItemSource(AttrSource(_modules("s"), "_buffers"), "pos"), torch.zeros(2), "params['pos']"),
    # attribute chains (older dynamo, unspecialized modules): self.h[0].attn.c_attn.weight
    (AttrSource(AttrSource(AttrSource(GetItemSource(AttrSource(LocalSource("self"), "h"), 0), "attn"), "c_attn"),
                "weight"), PARAM, "params['h.0.attn.c_attn.weight']"),
    (AttrSource(LocalSource("self"), "mask"), torch.zeros(2), "params['mask']"),  # a plain tensor attribute
    # user inputs keep their argument name and key path
    (LocalSource("x"), torch.zeros(2), "x"),
    (DictGetItemSource(LocalSource("batch"), "ids"), torch.zeros(2), "batch['ids']"),
    (GetItemSource(LocalSource("args"), 0), torch.zeros(2), "args[0]"),
])
def test_lifted_inputs_are_named_by_module_path(source, example, want):
    assert input_name(_placeholder(source, lambda: example)) == want


def test_no_source_and_repeated_names():
    assert input_name(SimpleNamespace(meta={}, op="placeholder")) is None
    x = _placeholder(LocalSource("x"), lambda: torch.zeros(2))
    gm = SimpleNamespace(graph=SimpleNamespace(nodes=[x, x]))
    assert input_names(gm) == ["x", None]  # a name two inputs would share stays with the first
