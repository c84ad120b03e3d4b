"""The README's examples run as a user runs them: each Python block saved to a file and run as a
plain script (no main guard) in a clean environment (no TRITON_INTERPRET, no SHARDC_* variables)."""
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent.parent / "README.md"


def test_python_examples_run_as_plain_scripts(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path))}
    for i, code in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"README block {i} failed:\n{proc.stderr[-3000:]}"
        assert "FutureWarning" not in proc.stderr, proc.stderr[-2000:]
