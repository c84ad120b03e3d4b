"""The kernel cache: generated source files keyed by a hash of the group's IR, the target and the
shardc version, under SHARDC_CACHE_DIR (default ~/.cache/shardc). Files are written atomically
(tmp + rename) and imported with importlib; a file that is not exactly what the key's generator
writes (corrupt, truncated, from another generator) is regenerated. Triton reads a kernel's source
back from its file (inspect.getsource), which is why kernels generated from text live in files."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from ..version import __version__

CODEGEN_VERSION = "3"  # bump when generated text changes for the same IR


def cache_root() -> Path:
    root = os.environ.get("SHARDC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "shardc"


def group_ir_text(grp, signatures: dict | None = None) -> str:
    """Canonical text of a fusion group's IR: what it computes, independent of node ids.
    `signatures` keeps each node's own part of the text (op, attributes, type) between calls."""
    names: dict = {}
    sigs = {} if signatures is None else signatures
    lines = [f"kind {grp.kind}"]
    for i, x in enumerate(grp.inputs):
        names[x] = f"in{i}"
        lines.append(f"in{i}: {x.dtype}{list(x.shape)}")
    for n in grp.nodes:
        if n in names:
            continue
        names[n] = name = f"%{len(names)}"
        sig = sigs.get(n)
        if sig is None:
            sig = sigs[n] = _signature(n)
        ins = ", ".join(names.get(i, "?") for i in n.inputs)
        lines.append(f"{name} = {sig[0]}({ins}) {sig[1]}")
    lines.append("roots " + " ".join(names.get(r, "?") for r in grp.roots))
    if grp.anchor is not None:
        lines.append("anchor " + names.get(grp.anchor, "?"))
    for m in grp.pattern.get("members", ()):  # a multi-tensor launch: what each member computes from what
        lines.append("member " + " ".join(names.get(r, "?") for r in m.roots) + " <- "
                     + " ".join(names.get(x, "?") for x in m.inputs))
    for k in sorted(grp.pattern):
        if k not in ("internal", "members"):
            v = grp.pattern[k]
            lines.append(f"{k} " + (" ".join(names.get(x, "?") for x in v) if isinstance(v, list) else names.get(v, "?")))
    return "\n".join(lines)


def _signature(n) -> tuple[str, str]:
    attrs = []
    for k in sorted(n.attrs):
        v = n.attrs[k]
        if isinstance(v, np.ndarray):
            v = f"array:{hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]}"
        attrs.append(f"{k}={v!r}")
    return n.op.value, f"{{{', '.join(attrs)}}} : {n.dtype}{list(n.shape)}"


def cache_key(ir_text: str, target: str) -> str:
    h = hashlib.sha256()
    for part in (ir_text, target, __version__, CODEGEN_VERSION):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _header(key: str) -> str:
    return f"# shardc kernel cache entry {key}\n"


def kernel_path(key: str, name: str, target: str) -> Path:
    return cache_root() / target / f"{name}.py"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_kernel_file(key: str, name: str, source: str, target: str = "triton") -> Path:
    """The cache file holding `source` (written or rewritten when missing, corrupt or stale)."""
    path = kernel_path(key, name, target)
    text = _header(key) + source
    try:
        ok = path.read_text() == text
    except (OSError, UnicodeDecodeError):
        ok = False
    if not ok:
        write_atomic(path, text)
    return path


def import_file(path: Path, module_name: str):
    """The module from `path`, registered under `module_name` (inspect and Triton look it up)."""
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return mod
