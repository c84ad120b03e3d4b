"""The zoo programs the e2e tests run: captured once per session, partitioned once per layout
(the models and layouts: tests/zoo_cases.py, shared with the unit tests)."""
import functools

from zoo_cases import LAYOUTS, ZOO, captured, partitioned  # noqa: F401  (ZOO: the e2e tests import it from here)


@functools.lru_cache(maxsize=None)
def program(name: str, train: bool, layout: str, frontend: str = "jax", passes="default"):
    m, g, args = captured(name, train, frontend)
    return partitioned(m, g, LAYOUTS[layout], passes=passes), args
