"""Every visible string, in English and Chinese. `t(key, **params)` returns it in the session's language."""

from __future__ import annotations

from typing import Any

from ui import state

LANGUAGES: dict[str, str] = {"zh": "中文", "en": "English"}
DEFAULT_LANGUAGE = "en"

MESSAGES: dict[str, dict[str, str]] = {
    "app.title": {"en": "LocalLLM Dashboard", "zh": "本地 LLM 控制台"},
    "nav.chat": {"en": "Chat", "zh": "聊天"},
    "nav.models": {"en": "Models", "zh": "模型"},
    "nav.hardware": {"en": "Hardware & Settings", "zh": "硬件与设置"},
    "lang.label": {"en": "Language / 语言", "zh": "语言 / Language"},
    "status.header": {"en": "Status", "zh": "状态"},
    "status.provider": {"en": "Provider: {name}", "zh": "当前配置：{name}"},
    "status.no_provider": {"en": "Provider: none configured", "zh": "当前配置：尚未配置"},
    "status.no_model": {"en": "No model loaded", "zh": "未加载模型"},
    "status.downloads_none": {"en": "Running downloads: none", "zh": "进行中的下载：无"},
    "status.downloads_some": {"en": "Running downloads: {count}", "zh": "进行中的下载：{count} 个"},
    "chat.title": {"en": "Chat", "zh": "聊天"},
    "chat.no_model": {
        "en": "No model is ready yet. Download one on the Models page, or add an OpenAI-compatible "
        "server in Hardware & Settings.",
        "zh": "还没有可用的模型。请在“模型”页面下载一个模型，或在“硬件与设置”中添加 OpenAI 兼容服务。",
    },
    "chat.current": {
        "en": "Current configuration: **{name}** ({provider}, model {model}).",
        "zh": "当前配置：**{name}**（{provider}，模型 {model}）。",
    },
    "chat.coming": {
        "en": "Chatting with a local model arrives with the inference engine.",
        "zh": "本地模型对话将随推理引擎一同提供。",
    },
    "chat.go_models": {"en": "Go to Models", "zh": "前往模型页面"},
    "models.title": {"en": "Models", "zh": "模型"},
    "models.intro": {
        "en": "Small open chat models that run on this machine. "
        "Nothing leaves it when a local model is used.",
        "zh": "可在本机运行的小型开源对话模型。使用本地模型时，数据不会离开本机。",
    },
    "models.size": {"en": "Download size", "zh": "下载大小"},
    "models.params": {"en": "Parameters", "zh": "参数量"},
    "models.context": {"en": "Context length", "zh": "上下文长度"},
    "models.languages": {"en": "Languages", "zh": "语言"},
    "models.license": {"en": "License", "zh": "许可证"},
    "models.strengths": {"en": "Strengths", "zh": "特点"},
    "models.use": {"en": "Recommended use", "zh": "推荐用途"},
    "models.tokens": {"en": "{count} tokens", "zh": "{count} tokens"},
    "language.zh": {"en": "Chinese", "zh": "中文"},
    "language.en": {"en": "English", "zh": "英文"},
    "hardware.title": {"en": "Hardware & Settings", "zh": "硬件与设置"},
    "hardware.section": {"en": "This machine", "zh": "本机硬件"},
    "hardware.cpu": {"en": "CPU", "zh": "处理器"},
    "hardware.threads": {"en": "{count} threads", "zh": "{count} 线程"},
    "hardware.cores": {"en": "{count} physical cores", "zh": "{count} 个物理核心"},
    "hardware.ram": {"en": "Memory (RAM)", "zh": "内存"},
    "hardware.ram_detail": {"en": "{available} available of {total}", "zh": "可用 {available}，共 {total}"},
    "hardware.gpu": {"en": "GPU", "zh": "显卡"},
    "hardware.gpu_none": {"en": "None", "zh": "无"},
    "hardware.runs_on_cpu": {"en": "Models run on the CPU", "zh": "模型将在 CPU 上运行"},
    "hardware.gpu_mps": {"en": "Apple MPS", "zh": "Apple MPS"},
    "hardware.gpu_detail": {"en": "{free} free of {total}", "zh": "可用 {free}，共 {total}"},
    "hardware.disk": {"en": "Free disk (models)", "zh": "可用磁盘（模型目录）"},
    "settings.section": {"en": "Settings", "zh": "设置"},
    "settings.models_dir": {"en": "Models directory", "zh": "模型目录"},
    "settings.database": {"en": "Database", "zh": "数据库"},
    "settings.endpoints": {"en": "Download endpoints, in order", "zh": "下载地址（按顺序尝试）"},
    "settings.configs": {"en": "Provider configs", "zh": "模型服务配置"},
    "settings.no_configs": {"en": "No provider configs yet.", "zh": "暂无模型服务配置。"},
    "settings.current": {"en": "current", "zh": "当前"},
    "error.storage": {
        "en": "The database cannot be opened: {detail}. Check the path and its permissions, or set "
        "LOCALLLM_DB_URL to another database and restart.",
        "zh": "无法打开数据库：{detail}。请检查路径和权限，或将 LOCALLLM_DB_URL 设置为其他数据库后重启。",
    },
}


def language_from_locale(locale: str | None) -> str:
    """Chinese for any zh-* browser locale, English otherwise."""
    return "zh" if (locale or "").lower().startswith("zh") else DEFAULT_LANGUAGE


def t(key: str, **params: Any) -> str:
    text = MESSAGES[key][state.language() or DEFAULT_LANGUAGE]
    return text.format(**params) if params else text
