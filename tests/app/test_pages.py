"""Every page renders in both languages with the sidebar status; the language switch is remembered."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.chat.configs import ConfigStore
from core.hardware import probe
from core.hub.catalog import BUILTIN_MODELS, GB
from core.hub.library import ModelLibrary
from core.settings import PROJECT_ROOT
from core.storage.db import Database
from tests.fixtures.hub_server import Fault, HubServer
from ui import resources

PAGES = {
    "pages/chat.py": {"en": "Chat", "zh": "聊天"},
    "pages/models.py": {"en": "Models", "zh": "模型"},
    "pages/servers.py": {"en": "Model servers", "zh": "模型服务"},
    "pages/hardware.py": {"en": "Hardware & Settings", "zh": "硬件与设置"},
}
STATUS = {
    "en": ("Provider: none configured", "No model loaded", "Running downloads: none"),
    "zh": ("当前配置：尚未配置", "未加载模型", "进行中的下载：无"),
}


def _sidebar_text(at: AppTest) -> str:
    return " ".join(m.value for m in at.sidebar.markdown)


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_in_both_languages(new_app, page: str, language: str) -> None:
    at = new_app()
    at.session_state["language"] = language
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    assert at.title[0].value == PAGES[page][language]


def test_the_hardware_page_says_a_cpu_only_torch_build_in_the_chosen_language(new_app) -> None:
    import torch

    if torch.version.cuda:
        pytest.skip("this torch build has CUDA: its version is shown instead")
    at = new_app()
    at.session_state["language"] = "zh"
    at.run()
    at.switch_page("pages/hardware.py").run()
    captions = " ".join(caption.value for caption in at.caption)
    assert "torch" in captions and "此 torch 版本不支持 CUDA" in captions
    assert "not in this torch build" not in captions


@pytest.mark.parametrize("language", ["en", "zh"])
def test_sidebar_shows_status(new_app, language: str) -> None:
    at = new_app()
    at.session_state["language"] = language
    at.run()
    for page in PAGES:
        at.switch_page(page).run()
        for line in STATUS[language]:
            assert line in _sidebar_text(at), page


def test_models_page_shows_both_catalog_models(new_app) -> None:
    at = new_app()
    at.run()
    at.switch_page("pages/models.py").run()
    assert [h.value for h in at.subheader] == ["qwen2.5-0.5b", "tinyllama-1.1b"]
    body = " ".join(m.value for m in at.markdown)
    assert "Chinese Q&A" in body and "English Q&A" in body


def test_language_switch_changes_the_page_and_is_remembered(new_app) -> None:
    at = new_app()
    at.run()
    assert at.title[0].value == "Chat"  # AppTest has no browser locale: English
    at.radio(key="language.en").set_value("zh").run()
    assert at.title[0].value == "聊天"

    second_session = new_app()
    second_session.run()
    assert second_session.title[0].value == "聊天"
    assert "未加载模型" in _sidebar_text(second_session)


def test_current_config_shows_escaped_in_the_sidebar(new_app, db_url: str) -> None:
    store = ConfigStore(Database(db_url))
    store.set_current_config(store.save_config("local_model", "qwen2.5-0.5b", name="**bold** <b>x</b>"))
    at = new_app()
    at.run()
    assert r"Provider: \*\*bold\*\* \<b\>x\</b\>" in _sidebar_text(at)
    # its model is not downloaded: the chat page says what to do instead of failing
    assert any("Download the one below to chat on this machine" in info.value for info in at.info)
    links = [(link.proto.page, link.proto.label) for link in at.get("page_link")]
    assert links == [
        ("models", "Go to Models"),
        ("servers", "Or connect a server that runs one (Ollama, LM Studio, vLLM, OpenAI)"),
    ]


def test_a_ready_model_nobody_chose_answers_and_the_status_says_so_from_the_first_visit(
    new_app, ready_model: str, db_url: str
) -> None:
    at = new_app()
    at.run()
    assert at.selectbox(key="chat.model").value == ready_model
    assert f"Provider: {ready_model}" in _sidebar_text(at)  # drawn before the chat page ran
    assert ConfigStore(Database(db_url)).get_current_config().model == ready_model


def test_the_servers_page_lists_configs_with_masked_keys_and_the_hardware_page_the_endpoints(
    new_app, db_url: str
) -> None:
    ConfigStore(Database(db_url)).save_config(
        "openai_compatible", "gpt", "http://127.0.0.1:1/v1", "sk-hidden-5678"
    )
    ModelLibrary(Database(db_url)).set_endpoints(["http://mirror.test", "http://127.0.0.1:9"])
    at = new_app()
    at.run()
    at.switch_page("pages/hardware.py").run()
    assert not at.exception
    body = " ".join(m.value for m in at.markdown)
    assert "1. `http://mirror.test`\n2. `http://127.0.0.1:9`" in body  # the order saved on the Models page
    assert [m.label for m in at.metric][:4] == ["CPU", "Memory (RAM)", "GPU", "Free disk (models)"]
    at.switch_page("pages/servers.py").run()
    assert not at.exception
    assert at.text_input(key="p1.key").value == ""  # the stored key is never sent to the page
    assert "••••5678" in at.text_input(key="p1.key").placeholder
    # A key is no password of this site: no browser offers to make one up or to save it as one.
    assert (
        at.text_input(key="p1.key").proto.autocomplete
        == at.text_input(key="pnew.key").proto.autocomplete
        == "off"
    )
    assert "sk-hidden" not in repr(at._tree)
    # words, not provider ids; the model is not said twice when the config is named after it
    assert "gpt · remote — current" in [e.label for e in at.expander]
    ConfigStore(Database(db_url)).save_config(
        "openai_compatible", "gpt-4o", "http://127.0.0.1:1/v1", name="Big"
    )
    at.run()
    assert "Big · remote · gpt-4o" in [e.label for e in at.expander]


def _python(code: str) -> str:
    """What `code` prints, run in a fresh interpreter in the project's folder."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-1000:]
    return done.stdout


AFTER_THE_APPS_IMPORTS = """
import gc, time
from ui import resources
resources.engine()  # as the first page does: its imports run on the engine's thread
deadline = time.monotonic() + 60
while not gc.get_freeze_count() and time.monotonic() < deadline:
    time.sleep(0.05)
print(gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_a_scripts_end_does_not_walk_every_object_of_the_imported_modules(isolated_env) -> None:
    # Streamlit collects every generation after each script run, a page's poll included. With the
    # ~350,000 objects of torch, transformers and Streamlit in sight that held the GIL ~250 ms, a stall
    # of every streaming reply: the Hardware page's 2 s poll cost a browser reply ~10 % of its tokens/s.
    frozen, tracked = map(int, _python(AFTER_THE_APPS_IMPORTS).split()[-2:])
    assert frozen > 100_000 and tracked < frozen / 10


THE_PAGES_IMPORTS = """
import ast, importlib, importlib.util, pathlib, sys
for script in ["app.py", *sorted(map(str, pathlib.Path("pages").glob("*.py")))]:
    for node in ast.walk(ast.parse(pathlib.Path(script).read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            package = importlib.import_module(node.module)
            for alias in node.names:  # `from ui import resources` imports ui.resources
                name = f"{node.module}.{alias.name}"
                if hasattr(package, "__path__") and importlib.util.find_spec(name):
                    importlib.import_module(name)
print(" ".join(name for name in ("torch", "transformers") if name in sys.modules) or "none")
"""


def test_no_page_waits_for_torch_to_be_imported(isolated_env) -> None:
    # Importing torch takes 2-3 s on 2 cores: the engine's own thread imports it (resources.engine()),
    # while the first page is drawn. A page that imported it itself was drawn 1.5 s later (4.0 s).
    assert _python(THE_PAGES_IMPORTS).split()[-1] == "none"


@pytest.mark.parametrize(
    ("address", "sentence"),
    [
        ("localhost", "Once shared, other machines reach this one at: `http://192.0.2.7:"),
        ("0.0.0.0", "Other machines reach this one at: `http://192.0.2.7:"),
    ],
)
def test_the_lan_addresses_say_whether_they_work_now(
    new_app, monkeypatch: pytest.MonkeyPatch, address: str, sentence: str
) -> None:
    from streamlit import config

    monkeypatch.setattr("core.access.policy.lan_addresses", lambda: ["192.0.2.7"])
    before = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        at = new_app()
        at.switch_page("pages/hardware.py").run()
    finally:
        config.set_option("server.address", before)
    assert any(m.value.startswith(sentence) for m in at.markdown), [m.value for m in at.markdown]


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize(("language", "key"), [("zh", "qwen2.5-0.5b"), ("en", "tinyllama-1.1b")])
def test_with_no_model_ready_the_chat_page_downloads_the_one_for_its_language_and_opens_the_chat(
    new_app, hub: HubServer, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    language: str, key: str,
) -> None:  # fmt: skip
    """Qwen2.5-0.5B for Chinese, TinyLlama for English (the catalog's advice), from one click."""
    for spec in BUILTIN_MODELS:
        hub.add_repo(spec.repo_id, tiny_models["qwen2"])
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    at = new_app()
    at.session_state["language"] = language
    at.run()
    assert not at.exception
    button = at.button(key="quick-download")
    assert button.label == {"zh": f"下载 {key}", "en": f"Download {key}"}[language]
    assert len(at.get("page_link")) == 2  # the Models page (and the servers) stay a click away
    size = {"qwen2.5-0.5b": "990.0 MB", "tinyllama-1.1b": "2.2 GB"}[key]
    assert [c.value for c in at.caption if size in c.value] == [
        {"zh": f"需下载 {size}（仅一次）；本机的内存和磁盘空间足以运行它。",
         "en": f"{size} to download, once; this machine has the memory and the disk space for it."}[language]
    ]  # fmt: skip

    button.click().run()
    assert not at.exception
    library = ModelLibrary(Database(os.environ["LOCALLLM_DB_URL"]))
    _wait_until(lambda: library.status(key).kind == "ready")
    at.run()  # the next poll of the page
    assert at.selectbox(key="chat.model").value == key  # the chat, with it
    assert not [b for b in at.button if b.key == "quick-download"]
    fetched = {request.path.split("/resolve/")[0] for request in hub.requests("GET", "/resolve/")}
    assert fetched == {f"/{library.get(key).repo_id}"}  # that model alone


def test_a_failed_or_partial_first_download_is_retried_or_resumed_from_the_chat_page(
    new_app, hub: HubServer, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"])
    library = ModelLibrary(Database(os.environ["LOCALLLM_DB_URL"]))
    library.set_endpoints(["http://127.0.0.1:9"])  # nothing listens there
    at = new_app()
    at.session_state["language"] = "zh"
    at.run()
    at.button(key="quick-download").click().run()
    _wait_until(lambda: (p := library.progress("qwen2.5-0.5b")) is not None and p.state == "failed")
    at.run()
    assert not at.exception
    assert at.button(key="quick-download").label == "重试"
    assert any("无法连接" in error.value for error in at.error), [e.value for e in at.error]

    library.set_endpoints([hub.url])
    hub.add_fault(Fault(path="model.safetensors", cut_after=1000, times=10))  # part of the weights, then cut
    at.button(key="quick-download").click().run()
    _wait_until(lambda: (p := library.progress("qwen2.5-0.5b")) is not None and p.state == "failed")
    at.run()
    assert library.status("qwen2.5-0.5b").kind == "partial"
    assert at.button(key="quick-download").label == "重试"
    hub.clear_faults()
    at.button(key="quick-download").click().run()
    _wait_until(lambda: library.status("qwen2.5-0.5b").kind == "ready")
    at.run()
    assert at.selectbox(key="chat.model").value == "qwen2.5-0.5b"


def test_a_machine_that_holds_no_catalog_model_is_sent_to_the_models_page(
    new_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine with 1 GB of RAM cannot be had here: its probe is replaced (the only mock)."""
    small = replace(
        probe(Path(os.environ["LOCALLLM_MODELS_DIR"])), ram_total_bytes=GB, ram_available_bytes=GB // 4
    )
    monkeypatch.setattr(resources, "probe", lambda *_args, **_kwargs: small)
    at = new_app()
    at.run()
    assert not at.exception
    assert [info.value for info in at.info] == [
        "No model is ready yet. Download one on the Models page, then come back to chat."
    ]
    assert not [b for b in at.button if b.key == "quick-download"]
