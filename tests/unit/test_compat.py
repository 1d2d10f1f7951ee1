"""The seed product's Python example runs as written (its README, verbatim below), on the real API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.chat.service import ChatService
from core.settings import PROJECT_ROOT, load_settings
from core.storage.db import Database
from tests.fixtures.tiny_models import install_ready

SEED_EXAMPLE = """
from src.utils.ChatUtils import AIRequestHandlerWithHistory

# 创建聊天处理器
chat_handler = AIRequestHandlerWithHistory()

# 设置本地模型配置
from src.db.llm_config_db import LLMConfigDB
db = LLMConfigDB()
config_id = db.save_config(
    provider="local_model",
    model="qwen2.5-0.5b",
    base_url=None,
    api_key=None
)
db.set_current_config(config_id)

# 刷新配置
chat_handler.refresh_config()

# 发送消息
chat_id = "test_chat"
response = chat_handler.get_single_response(chat_id, "你好，请介绍一下自己")
print(response)
"""
# The seed's advice under "内存管理" (memory management).
UNLOAD = """
from src.utils.LocalLLMEngine import local_llm_engine
print("loaded before:", local_llm_engine.is_loaded)
local_llm_engine.unload_model()
print("loaded after:", local_llm_engine.is_loaded)
"""


def test_the_seed_example_runs_as_written(tiny_models: dict[str, Path]) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "qwen2.5-0.5b", tiny_models["qwen2"])
    command = [sys.executable, "-c", SEED_EXAMPLE + UNLOAD]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "loaded before: True" in result.stdout and "loaded after: False" in result.stdout
    chat = ChatService(Database(load_settings().db_url), provider=lambda: None)
    [conversation] = chat.conversations()
    messages = chat.messages(conversation.id)
    assert conversation.title == "test_chat"
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == "你好，请介绍一下自己"
    assert messages[1].content and messages[1].finish_reason in ("stop", "length")  # the printed reply
