"""Every visible string, in English and Chinese. `t(key, **params)` returns it in the session's language."""

from __future__ import annotations

from typing import Any

from core.errors import LocalLLMError
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
        "en": "No model is ready yet. Download one on the Models page, then come back to chat.",
        "zh": "还没有可用的模型。请先在“模型”页面下载一个模型，然后回到这里聊天。",
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
    "models.status.not_downloaded": {"en": "Not downloaded", "zh": "未下载"},
    "models.status.partial": {"en": "Partial ({percent})", "zh": "部分下载（{percent}）"},
    "models.status.downloading": {"en": "Downloading ({percent})", "zh": "下载中（{percent}）"},
    "models.status.ready": {"en": "Ready", "zh": "已就绪"},
    "models.status.damaged": {"en": "Damaged", "zh": "文件损坏"},
    "models.custom": {"en": "custom", "zh": "自定义"},
    "models.damaged_files": {
        "en": "These files are missing or wrong: {files}. Repair downloads only them again.",
        "zh": "以下文件缺失或不正确：{files}。点击“修复”只重新下载这些文件。",
    },
    "models.verdict.fits_gpu": {
        "en": "Fits on the GPU: needs {needed}, {available} free.",
        "zh": "可在显卡上运行：需要 {needed}，可用 {available}。",
    },
    "models.verdict.fits_ram": {
        "en": "Fits in RAM (CPU): needs {needed}, {available} available.",
        "zh": "可在内存中运行（CPU）：需要 {needed}，可用 {available}。",
    },
    "models.verdict.tight": {
        "en": "Tight: needs {needed}, only {available} available now. Close other programs first.",
        "zh": "内存紧张：需要 {needed}，当前仅可用 {available}。请先关闭其他程序。",
    },
    "models.verdict.too_large": {
        "en": "Too large for this machine: needs {needed}, {available} available.",
        "zh": "超出本机能力：需要 {needed}，可用 {available}。",
    },
    "models.speed": {
        "en": "Estimated decode speed on the CPU: about {tps} tokens/s. Basis: {bandwidth} GB/s memory "
        "bandwidth ÷ {weights} of weights read per token = at most {bound}; this engine reaches about "
        "{efficiency} % of that (bench/speed.py, docs/performance.md).",
        "zh": "预计 CPU 生成速度：约 {tps} tokens/s。依据：内存带宽 {bandwidth} GB/s ÷ 每个 token 读取的权重 "
        "{weights} = 上限 {bound}；本引擎实测可达上限的约 {efficiency}%（见 bench/speed.py 与 "
        "docs/performance.md）。",
    },
    "models.speed_pending": {
        "en": "Decode speed: measuring this machine's memory bandwidth…",
        "zh": "生成速度：正在测量本机内存带宽…",
    },
    "models.measured": {"en": " Measured here: {tps} tokens/s.", "zh": " 本机实测：{tps} tokens/s。"},
    "models.action.check": {"en": "Check files and download", "zh": "检查文件并下载"},
    "models.action.download": {"en": "Download", "zh": "下载模型"},
    "models.action.cancel": {"en": "Cancel", "zh": "取消"},
    "models.action.resume": {"en": "Resume", "zh": "恢复下载"},
    "models.action.retry": {"en": "Retry", "zh": "重新下载"},
    "models.action.verify": {"en": "Verify", "zh": "校验"},
    "models.action.redownload": {"en": "Re-download", "zh": "重新下载全部文件"},
    "models.action.repair": {"en": "Repair", "zh": "修复"},
    "models.action.delete": {"en": "Delete", "zh": "删除"},
    "models.action.remove": {"en": "Remove from catalog", "zh": "从列表移除"},
    "models.action.use_cache": {
        "en": "Use the copy in the Hugging Face cache",
        "zh": "使用 Hugging Face 缓存中的副本",
    },
    "models.confirm_delete": {
        "en": "Delete {key} and free {size}? The files are removed from disk.",
        "zh": "删除 {key} 并释放 {size}？文件将从磁盘删除。",
    },
    "models.confirm_yes": {"en": "Yes, delete", "zh": "确认删除"},
    "models.deleted": {"en": "Deleted {key}, freed {size}.", "zh": "已删除 {key}，释放 {size}。"},
    "models.verified": {"en": "Every file of {key} checks out.", "zh": "{key} 的所有文件校验通过。"},
    "models.verify_failed": {
        "en": "{count} file(s) failed the check: {files}.",
        "zh": "{count} 个文件校验失败：{files}。",
    },
    "models.plan.title": {"en": "Files to download", "zh": "需要下载的文件"},
    "models.plan.file": {"en": "File", "zh": "文件"},
    "models.plan.size": {"en": "Size", "zh": "大小"},
    "models.plan.summary": {
        "en": "Total {total}; {have} already here, {fetch} to fetch; {free} free on the models disk.",
        "zh": "共 {total}；本地已有 {have}，需下载 {fetch}；模型磁盘可用 {free}。",
    },
    "models.plan.no_space": {
        "en": "Not enough disk space: free at least {needed} on the models disk, or change the models "
        "directory in Settings.",
        "zh": "磁盘空间不足：请在模型磁盘上至少释放 {needed}，或在设置中更换模型目录。",
    },
    "models.progress": {
        "en": "{done} of {total} ({percent}) · {speed}/s · {eta} left · {file}",
        "zh": "{done} / {total}（{percent}）· {speed}/s · 剩余 {eta} · {file}",
    },
    "models.progress_paused": {
        "en": "{done} of {total} ({percent}) downloaded; the rest resumes where it stopped.",
        "zh": "已下载 {done} / {total}（{percent}），恢复后从中断处继续。",
    },
    "models.interrupted": {
        "en": "This download was interrupted (the app closed or stopped).",
        "zh": "下载被中断（应用已关闭或停止）。",
    },
    "models.failed": {"en": "Download failed: {error}", "zh": "下载失败：{error}"},
    "models.started": {"en": "Download of {key} started.", "zh": "已开始下载 {key}。"},
    "models.already_running": {
        "en": "{key} is already downloading (maybe in another window or process).",
        "zh": "{key} 已在下载中（可能在其他窗口或进程中）。",
    },
    "models.add.title": {"en": "Add a model from Hugging Face", "zh": "从 Hugging Face 添加模型"},
    "models.add.repo": {"en": "Repository id", "zh": "仓库 ID"},
    "models.add.placeholder": {
        "en": "org/name, e.g. Qwen/Qwen2.5-1.5B-Instruct",
        "zh": "org/name，例如 Qwen/Qwen2.5-1.5B-Instruct",
    },
    "models.add.submit": {"en": "Check and add", "zh": "检查并添加"},
    "models.add.done": {"en": "Added {repo} as {key}.", "zh": "已添加 {repo}（{key}）。"},
    "models.endpoints.title": {"en": "Download endpoints", "zh": "下载地址"},
    "models.endpoints.help": {
        "en": "One URL per line, tried in order. If one fails, the download continues from the next one "
        "without starting files over. hf-mirror.com is a mirror for mainland China.",
        "zh": "每行一个地址，按顺序尝试。某个地址失败时，会从下一个地址继续下载，不会重新开始。"
        "hf-mirror.com 是国内镜像。",
    },
    "models.endpoints.save": {"en": "Save order", "zh": "保存顺序"},
    "models.endpoints.saved": {"en": "Saved.", "zh": "已保存。"},
    "models.endpoints.test": {"en": "Test endpoints", "zh": "测试连接"},
    "models.endpoints.ok": {"en": "{url}: reachable, {ms} ms", "zh": "{url}：可访问，{ms} 毫秒"},
    "models.endpoints.bad": {"en": "{url}: unreachable ({error})", "zh": "{url}：无法访问（{error}）"},
    "models.auto_resume": {
        "en": "Resume interrupted downloads when the app starts",
        "zh": "应用启动时自动恢复未完成的下载",
    },
    "error.repo_not_found": {"en": "{message}", "zh": "未找到该模型仓库，请检查仓库 ID。（{message}）"},
    "error.gated": {
        "en": "{message}",
        "zh": "该模型需要授权：请在 huggingface.co 接受许可协议，并使用 HF token 登录。（{message}）",
    },
    "error.invalid_repo_id": {
        "en": "{message}",
        "zh": "这不是有效的 Hugging Face 仓库 ID，请使用 org/name 格式，例如 Qwen/Qwen2.5-0.5B-Instruct。",
    },
    "error.unsupported_model": {"en": "{message}", "zh": "本应用无法运行该模型：{message}"},
    "error.disk_space": {"en": "{message}", "zh": "磁盘空间不足：{message}"},
    "error.not_writable": {"en": "{message}", "zh": "模型目录不可写：{message}"},
    "error.download": {"en": "{message}", "zh": "下载失败：{message}"},
    "error.unsafe_listing": {
        "en": "{message}",
        "zh": "下载服务器返回的文件列表不可信，已拒绝，未写入任何文件：{message}",
    },
    "error.config": {"en": "{message}", "zh": "设置无效：{message}"},
    "error.not_found": {"en": "{message}", "zh": "未找到：{message}"},
    "error.generic": {"en": "{message}", "zh": "出错了：{message}"},
    "status.loaded": {
        "en": "Loaded: {model} ({device}, {dtype}, {memory})",
        "zh": "已加载：{model}（{device}，{dtype}，{memory}）",
    },
    "status.idle_unload": {"en": "Unloads after {time} idle", "zh": "空闲 {time} 后自动卸载"},
    "status.unload": {"en": "Unload model", "zh": "卸载模型"},
    "chat.model": {"en": "Model", "zh": "模型"},
    "chat.pick_model": {"en": "Choose a downloaded model", "zh": "选择已下载的模型"},
    "chat.new": {"en": "New chat", "zh": "新对话"},
    "chat.search": {"en": "Search conversations", "zh": "搜索对话"},
    "chat.conversations": {"en": "Conversations", "zh": "对话列表"},
    "chat.no_conversations": {"en": "No conversations yet.", "zh": "还没有对话。"},
    "chat.input": {"en": "Message the model…", "zh": "输入消息…"},
    "chat.stop": {"en": "Stop", "zh": "停止"},
    "chat.regenerate": {"en": "Regenerate", "zh": "重新生成"},
    "chat.edit": {"en": "Edit last message", "zh": "编辑上一条消息"},
    "chat.edit_send": {"en": "Send edited message", "zh": "发送修改后的消息"},
    "chat.copy": {"en": "Copy", "zh": "复制"},
    "chat.rename": {"en": "Rename", "zh": "重命名"},
    "chat.title_label": {"en": "Title", "zh": "标题"},
    "chat.save": {"en": "Save", "zh": "保存"},
    "chat.delete": {"en": "Delete conversation", "zh": "删除对话"},
    "chat.confirm_delete": {
        "en": "Delete “{title}” and all its messages?",
        "zh": "删除“{title}”及其全部消息？",
    },
    "chat.confirm_yes": {"en": "Yes, delete", "zh": "确认删除"},
    "chat.export_md": {"en": "Export Markdown", "zh": "导出 Markdown"},
    "chat.export_json": {"en": "Export JSON", "zh": "导出 JSON"},
    "chat.options": {"en": "System prompt and parameters", "zh": "系统提示词与生成参数"},
    "chat.system_prompt": {"en": "System prompt", "zh": "系统提示词"},
    "chat.temperature": {"en": "Temperature", "zh": "温度（temperature）"},
    "chat.top_p": {"en": "Top-p", "zh": "Top-p"},
    "chat.max_new_tokens": {"en": "Max new tokens", "zh": "最大生成 token 数"},
    "chat.repetition_penalty": {"en": "Repetition penalty", "zh": "重复惩罚"},
    "chat.queued": {"en": "Waiting: {place} in line…", "zh": "排队中：排在{place}位…"},
    "chat.loading": {"en": "Loading {model}…", "zh": "正在加载 {model}…"},
    "chat.trimmed": {
        "en": "{count} older messages were left out to fit the model's context window.",
        "zh": "为适应模型的上下文长度，省略了 {count} 条较早的消息。",
    },
    "chat.stats": {
        "en": "{model} · {prompt} prompt + {completion} tokens · first token {ttft} · {tps} tokens/s · "
        "{reason}",
        "zh": "{model} · 输入 {prompt} + 输出 {completion} tokens · 首字 {ttft} · {tps} tokens/s · {reason}",
    },
    "chat.reason.stop": {"en": "finished", "zh": "已完成"},
    "chat.reason.length": {"en": "hit the length limit", "zh": "达到长度上限"},
    "chat.reason.stopped": {"en": "stopped by you", "zh": "已被你停止"},
    "chat.reason.interrupted": {"en": "interrupted", "zh": "被中断"},
    "chat.reason.error": {"en": "error", "zh": "出错"},
    "chat.load_anyway": {"en": "Load anyway", "zh": "仍然加载"},
    "error.engine": {"en": "{message}", "zh": "模型运行出错：{message}"},
    "error.model_not_ready": {"en": "{message}", "zh": "模型尚未下载，请先在“模型”页面下载。（{message}）"},
    "error.memory": {"en": "{message}", "zh": "内存不足：{message}"},
    "error.no_chat_template": {"en": "{message}", "zh": "该模型没有对话模板，无法用于聊天。"},
    "error.queue_full": {"en": "{message}", "zh": "排队的请求太多，请稍后再试。"},
    "error.generation": {"en": "{message}", "zh": "生成失败：{message}"},
    "error.message": {"en": "{message}", "zh": "消息无法发送：{message}"},
    "error.context_length": {"en": "{message}", "zh": "消息太长，超出了模型的上下文窗口：{message}"},
    "models.use_for_chat": {"en": "Use for chat", "zh": "用于聊天"},
    "models.now_current": {"en": "{key} is now the model for chat.", "zh": "已将 {key} 设为聊天模型。"},
    "providers.title": {"en": "Provider configs", "zh": "模型服务配置"},
    "providers.intro": {
        "en": "Use a bigger model on another machine: vLLM, Ollama, LM Studio, OpenAI or any "
        "OpenAI-compatible server.",
        "zh": "使用其他机器上的更大模型：vLLM、Ollama、LM Studio、OpenAI 或任何 OpenAI 兼容服务。",
    },
    "providers.add": {"en": "Add an OpenAI-compatible server", "zh": "添加 OpenAI 兼容服务"},
    "providers.name": {"en": "Name", "zh": "名称"},
    "providers.base_url": {"en": "Base URL", "zh": "服务地址（Base URL）"},
    "providers.api_key": {"en": "API key", "zh": "API 密钥"},
    "providers.keep_key": {"en": "{masked} (leave empty to keep)", "zh": "{masked}（留空则保持不变）"},
    "providers.model": {"en": "Model", "zh": "模型"},
    "providers.test": {"en": "Test connection", "zh": "测试连接"},
    "providers.refresh": {"en": "Refresh models", "zh": "刷新模型列表"},
    "providers.connected": {
        "en": "Connected: {count} models available.",
        "zh": "连接成功：共 {count} 个模型。",
    },
    "providers.save": {"en": "Save", "zh": "保存"},
    "providers.saved": {"en": "Saved {name}.", "zh": "已保存 {name}。"},
    "providers.use": {"en": "Use for chat", "zh": "用于聊天"},
    "providers.delete": {"en": "Delete", "zh": "删除"},
    "providers.confirm_delete": {"en": "Delete the config “{name}”?", "zh": "删除配置“{name}”？"},
    "providers.confirm_yes": {"en": "Yes, delete", "zh": "确认删除"},
    "providers.current": {"en": "current", "zh": "当前"},
    "providers.remote": {"en": "remote", "zh": "远程"},
    "lan.title": {"en": "Sharing on the LAN", "zh": "局域网共享"},
    "lan.dashboard_off": {
        "en": "The dashboard is open to this machine only (bound to {address}). To open it to the LAN, set "
        'a password (`LOCALLLM_PASSWORD` or `password = "..."` in `.streamlit/secrets.toml`) and start '
        "it with `python -m core app --lan`: other machines then sign in with a name and that password.",
        "zh": "控制台仅对本机开放（绑定 {address}）。如需向局域网开放，请先设置密码（环境变量 "
        '`LOCALLLM_PASSWORD`，或在 `.streamlit/secrets.toml` 中写 `password = "..."`），再用 '
        "`python -m core app --lan` 启动：其他机器需输入用户名和该密码登录。",
    },
    "lan.dashboard_on": {
        "en": "LAN sharing is on: other machines open the dashboard and sign in with a user name and the "
        "password. Each user sees only their own conversations; settings and deletions are for the admin.",
        "zh": "局域网共享已开启：其他机器打开控制台后，输入用户名和密码登录。每个用户只能看到自己的对话；"
        "设置和删除操作仅限管理员。",
    },
    "settings.backups": {
        "en": "Backups: the database is copied at every start and daily to `{folder}` (the last 7 are kept; "
        "newest: {newest}). `python -m core db restore FILE` brings one back.",
        "zh": "备份：每次启动及每天会把数据库复制到 `{folder}`（保留最近 7 份；最新：{newest}）。"
        "用 `python -m core db restore 文件` 恢复。",
    },
    "lan.accounts.title": {"en": "LAN users", "zh": "局域网用户"},
    "lan.accounts.intro": {
        "en": "Each name is claimed with a personal password at its first sign-in. Reset a name when its "
        "owner forgot the password: the name is signed out everywhere, its conversations stay, and its "
        "next sign-in claims it again.",
        "zh": "每个用户名在第一次登录时用个人密码认领。若用户忘记密码，可重置该用户名："
        "它会在所有设备上退出登录，对话保留，下次登录时重新认领。",
    },
    "lan.accounts.name": {"en": "Name", "zh": "用户名"},
    "lan.accounts.state": {"en": "Password", "zh": "密码"},
    "lan.accounts.claimed": {"en": "set", "zh": "已设置"},
    "lan.accounts.unclaimed": {"en": "not claimed yet", "zh": "尚未认领"},
    "lan.accounts.last": {"en": "Last sign-in", "zh": "上次登录"},
    "lan.accounts.pick": {"en": "Name to reset", "zh": "要重置的用户名"},
    "lan.accounts.reset": {"en": "Reset password", "zh": "重置密码"},
    "lan.accounts.reset_done": {
        "en": "{name} was signed out; the next sign-in with this name sets a new password.",
        "zh": "{name} 已退出登录；下次以该用户名登录时将设置新密码。",
    },
    "lan.accounts.none": {"en": "No LAN user has signed in yet.", "zh": "还没有局域网用户登录过。"},
    "access.foreign_host": {
        "en": "This dashboard does not answer to this address. Open it by this machine's name or IP "
        "address, or ask its owner to add the name to LOCALLLM_ALLOWED_HOSTS.",
        "zh": "此控制台不响应这个地址。请用本机的名称或 IP 地址打开，"
        "或请机器主人把该名称加入 LOCALLLM_ALLOWED_HOSTS。",
    },
    "access.title": {"en": "Sign in", "zh": "登录"},
    "access.intro": {
        "en": "This dashboard runs on another machine. Sign in with your user name, the shared password "
        "its owner gave you, and your own password. The first time you use a name, the password you "
        "choose claims it: after that nobody else can sign in as you. Your conversations are kept under "
        "that name.",
        "zh": "此控制台运行在另一台机器上。请输入你的用户名、机器主人提供的共享密码以及你自己的密码登录。"
        "第一次使用某个用户名时，你设置的密码即认领该用户名：此后其他人无法以你的身份登录。"
        "对话将保存在该用户名下。",
    },
    "access.name": {"en": "User name", "zh": "用户名"},
    "access.password": {"en": "Shared password", "zh": "共享密码"},
    "access.personal": {"en": "Your password", "zh": "你的密码"},
    "access.confirm": {"en": "Your password again", "zh": "再次输入你的密码"},
    "access.claim_submit": {"en": "Claim the name and sign in", "zh": "认领用户名并登录"},
    "access.back": {"en": "Back", "zh": "返回"},
    "access.claim": {
        "en": "**{name}** is a new name on this dashboard. Type your password again to claim it; after "
        "that only you can sign in as {name}.",
        "zh": "**{name}** 是此控制台上的新用户名。请再次输入你的密码以认领它；此后只有你能以 {name} 登录。",
    },
    "access.weak_password": {
        "en": "Choose a personal password of at least {length} characters, other than the shared one.",
        "zh": "请设置至少 {length} 个字符的个人密码，且不能与共享密码相同。",
    },
    "access.mismatch": {
        "en": "The two passwords differ. Type them again.",
        "zh": "两次输入的密码不一致，请重新输入。",
    },
    "access.submit": {"en": "Sign in", "zh": "登录"},
    "access.no_password": {
        "en": "This dashboard is not shared on the LAN: no password is configured. Ask its owner to set "
        "LOCALLLM_PASSWORD and start it with `python -m core app --lan`, or open it on that machine.",
        "zh": "此控制台未在局域网共享：尚未配置密码。请让机器主人设置 LOCALLLM_PASSWORD 并用 "
        "`python -m core app --lan` 启动，或在那台机器上直接打开。",
    },
    "access.rate_limited": {
        "en": "Too many wrong passwords. Try again in {wait_s} s.",
        "zh": "输错密码次数过多，请在 {wait_s} 秒后重试。",
    },
    "access.bad_name": {
        "en": "Choose a user name of 1-40 letters, digits, spaces, '.', '@' or '-'.",
        "zh": "用户名须为 1-40 个字母、数字、空格或 “.”、“@”、“-”。",
    },
    "access.bad_password": {"en": "Wrong user name or password.", "zh": "用户名或密码错误。"},
    "access.admin_only": {
        "en": "Only the admin can change this (on the machine itself, or signed in with an admin name).",
        "zh": "只有管理员可以修改此项（在本机上操作，或以管理员用户名登录）。",
    },
    "access.signed_in_as": {"en": "Signed in as **{name}** ({role})", "zh": "已登录：**{name}**（{role}）"},
    "access.role_admin": {"en": "admin", "zh": "管理员"},
    "access.role_user": {"en": "user", "zh": "普通用户"},
    "access.sign_out": {"en": "Sign out", "zh": "退出登录"},
    "lan.urls": {
        "en": "Other machines would reach this one at: {urls}",
        "zh": "其他机器可通过以下地址访问本机：{urls}",
    },
    "lan.no_urls": {"en": "This machine has no LAN address right now.", "zh": "本机当前没有局域网地址。"},
    "lan.models": {
        "en": "Programs on other machines (rather than browsers) can use your models through "
        "`python -m core serve --host 0.0.0.0`, with the bearer token it prints (see the README).",
        "zh": "其他机器上的程序（而非浏览器）可通过 `python -m core serve --host 0.0.0.0` 使用本机模型，"
        "需使用它启动时显示的令牌（见 README）。",
    },
    "chat.empty_message": {
        "en": "The message is empty: type something to send.",
        "zh": "消息为空：请输入内容后再发送。",
    },
    "chat.admin_picks_model": {
        "en": "The admin chooses the model everyone chats with.",
        "zh": "所有人使用的模型由管理员选择。",
    },
    "server.title": {"en": "API for other programs", "zh": "供其他程序调用的 API"},
    "server.running": {
        "en": "Running: OpenAI-compatible API at {urls}{token}",
        "zh": "运行中：OpenAI 兼容 API 地址 {urls}{token}",
    },
    "server.token": {"en": " (a bearer token is required)", "zh": "（需要 Bearer 令牌）"},
    "server.stopped": {
        "en": "Not running. Start it with `python -m core serve` (add `--host 0.0.0.0` for the LAN; "
        "a token is then required).",
        "zh": "未运行。使用 `python -m core serve` 启动（局域网访问加 `--host 0.0.0.0`，此时需要令牌）。",
    },
    "error.provider": {"en": "{message}", "zh": "远程服务出错：{message}"},
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
    "hardware.cpu_use": {"en": "CPU use now", "zh": "当前 CPU 占用"},
    "hardware.ram_use": {"en": "RAM in use now", "zh": "当前内存占用"},
    "hardware.engine": {"en": "Local engine", "zh": "本地引擎"},
    "hardware.generating": {"en": "Generating", "zh": "正在生成"},
    "hardware.idle": {"en": "Idle", "zh": "空闲"},
    "verdict.fits_gpu": {"en": "Fits on the GPU", "zh": "可在显卡上运行"},
    "verdict.fits_ram": {"en": "Fits in RAM", "zh": "可在内存中运行"},
    "verdict.tight": {"en": "Tight", "zh": "内存紧张"},
    "verdict.too_large": {"en": "Too large", "zh": "超出本机能力"},
    "hardware.models_section": {"en": "Will each model run here?", "zh": "各模型能否在本机运行？"},
    "hardware.memory_needed": {"en": "Memory needed (GB)", "zh": "所需内存（GB）"},
    "hardware.ram_available": {"en": "RAM available", "zh": "可用内存"},
    "hardware.chart_note": {
        "en": "Bars: weights at the dtype the engine uses here, KV cache for 4096 tokens, and the runtime. "
        "Dashed lines: memory available now.",
        "zh": "柱形：本机引擎所用精度下的权重、4096 个 token 的 KV 缓存和运行时开销；虚线：当前可用内存。",
    },
    "settings.models_dir": {"en": "Models directory", "zh": "模型目录"},
    "settings.database": {"en": "Database", "zh": "数据库"},
    "settings.models_dir_help": {
        "en": "Models already in the new folder (one sub-folder per model) are found there.",
        "zh": "新目录中已有的模型（每个模型一个子目录）会被自动识别。",
    },
    "settings.change_dir": {"en": "Use this folder", "zh": "使用此目录"},
    "settings.dir_error": {"en": "Cannot use {path}: {reason}", "zh": "无法使用 {path}：{reason}"},
    "settings.endpoints": {"en": "Download endpoints, in order", "zh": "下载地址（按顺序尝试）"},
    "settings.configs": {"en": "Provider configs", "zh": "模型服务配置"},
    "settings.engine": {"en": "Local engine", "zh": "本地推理引擎"},
    "settings.device": {"en": "Device", "zh": "运行设备"},
    "settings.quantization": {"en": "Weights on the CPU", "zh": "CPU 上的权重精度"},
    "settings.quantization.int4": {"en": "int4 (fastest, default)", "zh": "int4（最快，默认）"},
    "settings.quantization.int8": {"en": "int8 (closer to the reference)", "zh": "int8（更接近参考精度）"},
    "settings.quantization.none": {"en": "16-bit (the reference)", "zh": "16 位（参考精度）"},
    "settings.quantization_help": {
        "en": "int4 stores a scale and a zero point per 32 weights, like the Q4 files of Ollama and LM "
        "Studio: the fastest on a CPU. int8 keeps one scale per output channel and stays closest to the "
        "16-bit reference. Figures in docs/performance.md. Applies from the next model load; GPUs always "
        "use 16-bit weights.",
        "zh": "int4 每 32 个权重保存一个缩放系数和零点，与 Ollama、LM Studio 的 Q4 文件同类，CPU 上最快；"
        "int8 为每个输出通道保留一个缩放系数，最接近 16 位参考精度。数据见 docs/performance.md。"
        "下次加载模型时生效；GPU 始终使用 16 位权重。",
    },
    "settings.device_help": {
        "en": "auto: CUDA GPU, then Apple MPS, then CPU. Applies at the next model load.",
        "zh": "auto：依次选择 CUDA 显卡、Apple MPS、CPU。下次加载模型时生效。",
    },
    "settings.idle_unload": {
        "en": "Unload the model after this many idle minutes (0 = never)",
        "zh": "空闲多少分钟后卸载模型（0 = 从不）",
    },
    "settings.saved": {"en": "Saved.", "zh": "已保存。"},
    "settings.no_configs": {"en": "No provider configs yet.", "zh": "暂无模型服务配置。"},
    "settings.current": {"en": "current", "zh": "当前"},
    "db.way_out": {
        "en": "The file `{path}` looks damaged. You can set it aside (it is renamed, not deleted, so nothing "
        "is lost) and start with a new, empty database: downloaded models stay where they are.",
        "zh": "数据库文件 `{path}` 似乎已损坏。可以把它移到一旁（只改名、不删除，数据不会丢失），"
        "然后使用新的空数据库：已下载的模型不受影响。",
    },
    "db.start_fresh": {"en": "Set the file aside and start a new database", "zh": "移开该文件并新建数据库"},
    "db.set_aside_failed": {"en": "Could not set the file aside: {reason}", "zh": "无法移开该文件：{reason}"},
    "db.ask_admin": {
        "en": "Ask the owner of this machine to fix the database.",
        "zh": "请联系这台机器的主人修复数据库。",
    },
    "db.kept": {
        "en": "Started a new database. The damaged file was kept as `{path}`.",
        "zh": "已新建数据库。损坏的文件已保留为 `{path}`。",
    },
    "error.storage": {
        "en": "The database cannot be opened: {message} Check the path and its permissions, or set "
        "LOCALLLM_DB_URL to another database and restart.",
        "zh": "无法打开数据库：{message} 请检查路径和权限，或将 LOCALLLM_DB_URL 设置为其他数据库后重启。",
    },
}


def language_from_locale(locale: str | None) -> str:
    """Chinese for any zh-* browser locale, English otherwise."""
    return "zh" if (locale or "").lower().startswith("zh") else DEFAULT_LANGUAGE


def error_text(exc: LocalLLMError) -> str:
    """A core error in the session's language (the English detail is kept inside the Chinese text)."""
    key = exc.code if exc.code in MESSAGES else "error.generic"
    return t(key, message=exc.message)


def ordinal(position: int) -> str:
    """A place in line: '2nd' in English, '第 2' in Chinese."""
    if (state.language() or DEFAULT_LANGUAGE) == "zh":
        return f"第 {position} "
    suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
    return f"{position}{suffix}"


def t(message_id: str, /, **params: Any) -> str:
    text = MESSAGES[message_id][state.language() or DEFAULT_LANGUAGE]
    return text.format(**params) if params else text
