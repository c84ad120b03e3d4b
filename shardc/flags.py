"""Every environment variable shardc reads, in one table.

SHARDC_DEBUG=1..5   1 summary, 2 timings and bytes, 3 shardings, 4 kernel source, 5 IR after each
                    pass; any level also shows compiler frames in CLI errors.
SHARDC_DUMP_DIR     write each stage's text there, numbered with its pass name.
SHARDC_CACHE_DIR    the kernel cache and the tuning database (default ~/.cache/shardc; codegen/cache.py).
SHARDC_PALLAS_TPU   the TPU generation Pallas kernels are written for: tpu-v5p (default), tpu-v5e,
                    tpu-v6e (its VMEM limits: codegen/vmem.py), or none (interpreter only, unchecked).
SHARDC_TUNE         which tuned launch configs compile() uses: auto (default: the tuning database's
                    best), pinned (only autotune.pin'ned ones; tuning never times), off (defaults).
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

FLAGS = {
    "SHARDC_DEBUG": "debug level 0-5 (see module docstring)",
    "SHARDC_DUMP_DIR": "directory for each stage's text, numbered by pass",
    "SHARDC_CACHE_DIR": "kernel cache and tuning database directory (default ~/.cache/shardc)",
    "SHARDC_PALLAS_TPU": "TPU generation Pallas kernels fit: tpu-v5p (default), tpu-v5e, tpu-v6e, none (codegen/vmem.py)",
    "SHARDC_TUNE": "tuned launch configs: auto (default), pinned (pins only, never re-timed), off (codegen/autotune.py)",
}


def debug_level() -> int:
    try:
        return int(os.environ.get("SHARDC_DEBUG", "0") or 0)
    except ValueError:
        return 1


def log(level: int, msg) -> None:
    """`msg`: text, or a function that makes it (a program's text costs seconds at scale)."""
    if debug_level() >= level:
        print(f"[shardc] {msg() if callable(msg) else msg}", file=sys.stderr)


def dump(stage: int, name: str, text) -> None:
    """Write one stage's text (or what a function returns) to SHARDC_DUMP_DIR/NN-name.txt
    (atomically: no half-written files)."""
    root = os.environ.get("SHARDC_DUMP_DIR")
    if not root:
        return
    text = text() if callable(text) else text
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"{stage:02d}-{name}.txt"
    # a name of its own per writer: processes or threads dumping the same stage never share a .tmp
    tmp = path / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(text)
    tmp.replace(target)
