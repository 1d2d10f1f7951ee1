"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from core.settings import PROJECT_ROOT, load_settings
from core.storage import repo
from core.storage.db import Database
from tests.fixtures.tiny_models import install_ready


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), flags=re.S)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, env=os.environ
    )


def test_readme_python_example_runs() -> None:
    blocks = _python_blocks()
    assert blocks, "README has no Python example"
    result = _run(blocks[0])
    assert result.returncode == 0, result.stderr
    assert "provider='local_model'" in result.stdout and "model='qwen2.5-0.5b'" in result.stdout
    assert "is_current=True" in result.stdout


def test_readme_chat_example_runs(tiny_models: dict[str, Path]) -> None:
    # The tiny random model stands in for the real Qwen download (no network here).
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    chat_block = next(block for block in _python_blocks() if "get_single_response" in block)
    result = _run(chat_block)
    assert result.returncode == 0, result.stderr
    db = Database(load_settings().db_url)
    with db.begin() as session:
        [conversation] = repo.list_conversations(session, "local")
        messages = repo.list_messages(session, conversation.id)
    assert conversation.title == "test_chat"
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0].content == "你好，请介绍一下自己"
    assert all(m.finish_reason in ("stop", "length") for m in messages if m.role == "assistant")
