"""Pinning a backward program to its forward's layouts (the integrations' VJP programs): the P of
a sharding the forward program chose, where P can say it."""
from __future__ import annotations


def pin(sharding):
    """The P of `sharding`, or None where P cannot say it (a strided or partial layout): that
    tensor is left to propagation instead."""
    if sharding.partial or any(d.outer != 1 for d in sharding.dims):
        return None
    return sharding.spec()
