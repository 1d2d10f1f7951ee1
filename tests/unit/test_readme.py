"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from core.settings import PROJECT_ROOT


def test_readme_python_example_runs() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no Python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=PROJECT_ROOT, capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stderr
    assert "provider='local_model'" in result.stdout and "model='qwen2.5-0.5b'" in result.stdout
    assert "is_current=True" in result.stdout
