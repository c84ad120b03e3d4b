"""Triton's interpreter, chosen at run time rather than by TRITON_INTERPRET before import.

Triton binds every `@triton.jit` function to the interpreter or the compiler when it is decorated:
a generated kernel file imported inside `interpret_mode(True)` becomes interpretable, but Triton's
own library (tl.sum, tl.max, tl.cdiv, … are `@jit` functions in triton.language) was bound when
Triton was first imported, which torch.export does before a user's script reaches shardc. Inside
the scope, those library functions are swapped for interpreted twins of the same Python functions
(what a process started with TRITON_INTERPRET=1 would hold), and put back on leaving, so compiled
kernels in the same process are unaffected."""
from __future__ import annotations

import contextlib
import sys
import threading

_lock = threading.RLock()
_twins: dict = {}  # JITFunction -> InterpretedFunction (one twin each, so identities stay consistent)


def _library_swaps() -> list[tuple[object, str, object, object]]:
    """(module, attribute, compiled function, interpreted twin) for Triton's library jit functions."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    swaps = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("triton.language"):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, JITFunction):
                twin = _twins.setdefault(value, InterpretedFunction(value.fn))
                swaps.append((mod, attr, value, twin))
    return swaps


@contextlib.contextmanager
def interpret_mode(on: bool):
    """Decorate (import) and launch Triton kernels on the interpreter (on=True) or the compiler."""
    from triton import knobs
    with _lock, knobs.runtime.scope():
        knobs.runtime.interpret = on
        swaps = _library_swaps() if on else []
        for mod, attr, _, twin in swaps:
            setattr(mod, attr, twin)
        try:
            yield
        finally:
            for mod, attr, compiled, _ in swaps:
                setattr(mod, attr, compiled)
