"""The Models page with real downloads from a local Hub: progress, Resume, auto-resume, errors."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from filelock import FileLock
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1.element_tree import Selectbox

from core.chat.configs import ConfigStore
from core.hub import listing
from core.hub.library import ModelLibrary
from core.storage import repo
from core.storage.db import Database
from core.storage.schema import DownloadJobRow
from tests.fixtures.hub_server import Fault, HubServer, unanswering_endpoint
from tests.fixtures.tiny_models import install_ready
from ui import resources

WEIGHTS = bytes(range(256)) * 8000  # ~2 MB
REPO = {
    "config.json": b'{"model_type": "qwen2", "max_position_embeddings": 512}',
    "tokenizer.json": b"{}",
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "model.safetensors": WEIGHTS,
}


@pytest.fixture
def library(db_url: str, hub: HubServer) -> ModelLibrary:
    hub.add_repo("org/tiny-chat", REPO)
    lib = ModelLibrary(Database(db_url))
    lib.set_endpoints([hub.url])
    return lib


CONTEXT_WIDGET = "context-qwen2.5-0.5b-en"


def _progress_texts(at) -> list[str]:
    return [element.proto.text for element in at.get("progress")]


def _button_labels(at) -> list[str]:
    return [button.label for button in at.button]


def _custom_model(library: ModelLibrary) -> str:
    from core.storage import repo

    with library.db.begin() as session:
        repo.add_custom_model(session, "tiny-chat", "org/tiny-chat", "main", {"download_bytes": len(WEIGHTS)})
    return "tiny-chat"


def _wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_running_download_shows_progress_and_cancel(new_app, library: ModelLibrary, hub: HubServer) -> None:
    key = _custom_model(library)
    hub.hold("model.safetensors")  # the download runs on, part of the file on disk, until the page is read
    at = new_app()
    at.switch_page("pages/models.py").run()
    resources.library().download(key)  # the app's own process-wide library
    _wait_for(lambda: (p := resources.library().progress(key)) is not None and p.bytes_done > 0)
    at.run()
    assert not at.exception
    texts = _progress_texts(at)
    assert any("of 2.0 MB" in text and "model.safetensors" in text for text in texts), texts
    assert "Cancel" in _button_labels(at)
    assert any("Downloading" in m.value for m in at.markdown)
    resources.library().manager.cancel(key)
    hub.release()
    assert resources.library().manager.wait(key, timeout=10).state == "cancelled"


@pytest.mark.parametrize(("language", "attempts"), [("en", 0), ("en", 1), ("en", 2), ("zh", 2)])
def test_a_download_waiting_for_its_file_list_says_whom_it_asked(
    new_app, library: ModelLibrary, language: str, attempts: int
) -> None:
    """Before the file list arrives there is nothing to count: the bar said "0 B of 0 B (0%) · 0 B/s · –
    left ·" for as long as huggingface.co took not to answer (30 s where it drops connections)."""
    key = _custom_model(library)
    with library.db.begin() as session:  # another process's job, its lock held: asking a silent endpoint
        session.add(
            DownloadJobRow(model_key=key, repo_id="org/tiny-chat", state="running", bytes_total=0,
                           endpoint="https://huggingface.co", attempts=attempts, updated_at=datetime.now(UTC))
        )  # fmt: skip
    library.models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(library.models_dir / f".{key}.lock"):
        at = new_app()
        at.session_state["language"] = language
        at.switch_page("pages/models.py").run()
    assert not at.exception
    said = {
        ("en", 0): "Asking https://huggingface.co for the file list…",
        ("en", 1): "Asking https://huggingface.co for the file list… (1 try failed so far)",
        ("en", 2): "Asking https://huggingface.co for the file list… (2 tries failed so far)",
        ("zh", 2): "正在向 https://huggingface.co 获取文件列表…（已失败 2 次）",
    }
    assert _progress_texts(at) == [said[language, attempts]]


def test_this_apps_download_says_why_its_last_try_failed(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _custom_model(library)
    monkeypatch.setattr(listing, "HUB_TIMEOUT", httpx2.Timeout(5, connect=0.3))  # 30 s / 10 s
    with unanswering_endpoint(drops_connections=True) as dropping:
        library.set_endpoints([dropping])
        at = new_app()
        at.switch_page("pages/models.py").run()
        manager = resources.library().manager  # the app's own, process-wide
        manager.policy = replace(manager.policy, backoff_s=60)  # the next try waits: the page is read now
        resources.library().download(key)
        _wait_for(lambda: resources.library().progress(key).attempts == 1)
        at.run()
        manager.cancel(key)
        assert manager.wait(key, timeout=10).state == "cancelled"
    assert not at.exception
    reason = "no answer to the connection (a network that drops it, or a host out of reach)"
    assert _progress_texts(at) == [f"Asking {dropping} for the file list… (1 try failed so far: {reason})"]


def test_interrupted_download_shows_resume(
    new_app, library: ModelLibrary, hub: HubServer, db_url: str
) -> None:
    key = _custom_model(library)
    library.set_auto_resume(False)
    partial = library.directory(key) / "model.safetensors.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(WEIGHTS[:500_000])
    with library.db.begin() as session:
        session.add(
            DownloadJobRow(
                model_key=key, repo_id="org/tiny-chat", state="running", bytes_done=500_000,
                bytes_total=len(WEIGHTS) + 100, updated_at=datetime.now(UTC) - timedelta(minutes=5),
            )
        )  # fmt: skip
    at = new_app()
    at.switch_page("pages/models.py").run()
    assert not at.exception
    assert "Resume" in _button_labels(at)
    assert any("interrupted" in w.value for w in at.warning)
    assert any("Partial (24%)" in m.value for m in at.markdown)

    at.button(key=f"resume-{key}").click().run()
    assert resources.library().manager.wait(key, timeout=20).state == "completed"
    gets = hub.requests("GET", "model.safetensors")
    assert gets[-1].range == "bytes=500000-"


def test_auto_resume_restarts_interrupted_jobs_when_the_app_starts(
    new_app, library: ModelLibrary, hub: HubServer
) -> None:
    key = _custom_model(library)
    with library.db.begin() as session:
        session.add(
            DownloadJobRow(
                model_key=key, repo_id="org/tiny-chat", state="running", bytes_done=0, bytes_total=0,
                updated_at=datetime.now(UTC) - timedelta(minutes=5),
            )
        )  # fmt: skip
    library.directory(key).mkdir(parents=True)
    at = new_app()
    at.run()
    assert resources.library().manager.wait(key, timeout=20).state == "completed"
    assert resources.library().status(key).kind == "ready"


def test_adding_a_bad_repo_id_shows_a_message(new_app, library: ModelLibrary, hub: HubServer) -> None:
    at = new_app()
    at.session_state["language"] = "zh"
    at.switch_page("pages/models.py").run()
    at.text_input(key="add-model-repo").input("../etc/passwd")
    at.button(key="add-model-submit").click().run()
    assert not at.exception
    assert any("不是有效的 Hugging Face 仓库 ID" in e.value for e in at.error)
    assert hub.requests() == []

    library.preferences.set("endpoints", ["http://127.0.0.1:9"])  # nothing listens there
    at.text_input(key="add-model-repo").input("org/tiny-chat")
    at.button(key="add-model-submit").click().run()
    # the form's next step, not a download's (there is no Retry button here)
    assert [e.value for e in at.error] == [
        "无法获取 org/tiny-chat 的文件列表：无法连接（没有网络、地址错误或服务器未运行）（`http://127.0.0.1:9`）。"
        "请检查网络，或在下载设置中添加镜像，然后重试。"
    ]


def test_adding_a_repo_from_the_hub_puts_it_in_the_catalog(
    new_app, library: ModelLibrary, hub: HubServer
) -> None:
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.text_input(key="add-model-repo").input("org/tiny-chat")
    at.button(key="add-model-submit").click().run()
    assert not at.exception
    assert any("Added org/tiny-chat as tiny-chat" in s.value for s in at.success)
    assert "tiny-chat · custom" in [h.value for h in at.subheader]


def test_plan_lists_files_only_on_request(new_app, library: ModelLibrary, hub: HubServer) -> None:
    key = _custom_model(library)
    at = new_app()
    at.switch_page("pages/models.py").run()
    assert hub.requests() == []  # opening the page asks the hub nothing
    at.button(key=f"check-{key}").click().run()
    assert not at.exception
    assert any("to fetch" in c.value for c in at.caption)
    assert "Download" in _button_labels(at)
    assert len(hub.requests("GET", "/api/models/org/tiny-chat")) == 1


def test_a_failed_download_explains_itself_in_chinese_and_offers_retry(
    new_app, library: ModelLibrary, hub: HubServer
) -> None:
    key = _custom_model(library)
    hub.add_fault(Fault(path="model.safetensors", status=503))  # every try, on the only endpoint
    library.preferences.set("endpoints", [hub.url])
    resources.library().manager.policy = replace(resources.library().manager.policy, backoff_s=0.01)
    at = new_app()
    at.session_state["language"] = "zh"
    at.switch_page("pages/models.py").run()
    at.button(key=f"check-{key}").click().run()
    at.button(key=f"download-{key}").click().run()
    assert resources.library().manager.wait(key, timeout=30).state == "failed"
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert (
        error.startswith("无法下载 org/tiny-chat 的 model.safetensors：服务器返回了错误") and "重试" in error
    )
    assert "Could not" not in error  # the whole sentence is Chinese
    assert "重试" in _button_labels(at)  # the card never loses its download button

    hub.clear_faults()
    at.button(key=f"resume-{key}").click().run()
    assert resources.library().manager.wait(key, timeout=30).state == "completed"


def test_a_plan_that_fails_keeps_a_way_to_try_again(new_app, library: ModelLibrary, hub: HubServer) -> None:
    key = _custom_model(library)
    library.preferences.set("endpoints", ["http://127.0.0.1:9"])  # nothing listens there
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.button(key=f"check-{key}").click().run()
    assert any("cannot connect" in e.value for e in at.error)
    assert "Try again" in _button_labels(at)
    library.preferences.set("endpoints", [hub.url])
    at.button(key=f"check-again-{key}").click().run()
    assert "Download" in _button_labels(at)


def test_each_model_gets_its_context_length_with_the_memory_it_needs(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = new_app()
    at.switch_page("pages/models.py").run()
    widget = at.selectbox(key="context-qwen2.5-0.5b-en")
    assert widget.value.startswith("4K tokens · needs")
    assert any(option.startswith("32K tokens · needs") for option in widget.options)  # up to the window
    widget.select(next(o for o in widget.options if o.startswith("2K tokens"))).run()
    assert any("now keeps 2K tokens" in s.value for s in at.success)
    assert library.preferences.context_for("qwen2.5-0.5b") == 2048

    # Mocked: a machine with 1 GB of RAM (this one has far more), where 32K tokens cannot fit.
    small = replace(resources.hardware(), ram_available_bytes=5 * 10**8, ram_total_bytes=10**9)
    monkeypatch.setattr(resources, "hardware", lambda: small)
    at.run()
    widget = at.selectbox(key="context-qwen2.5-0.5b-en")
    widget.select(next(o for o in widget.options if o.startswith("32K tokens"))).run()
    assert any("do not fit in this machine's memory" in e.value for e in at.error)
    assert library.preferences.context_for("qwen2.5-0.5b") == 2048  # unchanged


def test_a_context_label_drawn_before_the_estimates_changed_is_answered_not_crashed_on(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A choice's label carries its memory, which changes when a download ends or the weights setting
    does; a browser may still send a label drawn before (it did once, right after a download: the page
    stopped with Streamlit's error)."""
    at = new_app()
    at.switch_page("pages/models.py").run()
    stale = next(o for o in at.selectbox(key=CONTEXT_WIDGET).options if o.startswith("2K tokens"))
    resources.engine().quantization = "none"  # as Settings sets it: each label's memory changes
    at.run()
    assert stale not in at.selectbox(key=CONTEXT_WIDGET).options

    # Mocked: AppTest sends only labels that are among the options; a browser sends what it drew.
    def browser_state(widget: Selectbox) -> WidgetState:
        return WidgetState(id=widget.id, string_value=stale if widget.key == CONTEXT_WIDGET else widget.value)

    monkeypatch.setattr(Selectbox, "_widget_state", property(browser_state))
    at.run()
    monkeypatch.undo()
    assert not at.exception
    assert library.preferences.context_for("qwen2.5-0.5b") == 4096  # the saved choice stays
    widget = at.selectbox(key=CONTEXT_WIDGET)
    assert widget.value.startswith("4K tokens · needs") and widget.value in widget.options


def test_the_model_in_use_says_so_and_a_click_puts_a_ready_one_back_in_use(
    new_app, ready_model: str, db_url: str
) -> None:
    at = new_app()
    at.run()  # the app's first visit chooses the only ready model
    at.switch_page("pages/models.py").run()
    button = at.button(key=f"use-{ready_model}")
    assert (button.label, button.disabled) == ("In use for chat", True)

    store = ConfigStore(Database(db_url))
    store.set_current_config(store.save_config("openai_compatible", "gpt", "http://127.0.0.1:1/v1"))
    at.run()
    button = at.button(key=f"use-{ready_model}")
    assert (button.label, button.disabled) == ("Use for chat", False)
    button.click().run()
    assert (at.button(key=f"use-{ready_model}").label, store.get_current_config().model) == (
        "In use for chat",
        ready_model,
    )


def test_an_endpoint_check_says_why_in_the_pages_language_and_stays_until_the_list_changes(
    new_app, library: ModelLibrary, hub: HubServer
) -> None:
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", REPO)  # what the check asks the endpoint for
    library.set_endpoints(["http://127.0.0.1:9", hub.url])  # nothing listens on the first
    at = new_app()
    at.session_state["language"] = "zh"
    at.switch_page("pages/models.py").run()
    at.button(key="downloads.test").click().run()
    checked = ([s.value for s in at.success], [e.value for e in at.error])
    assert checked[0][0].startswith(f"`{hub.url}`：可访问，") and checked[0][0].endswith(" 毫秒")
    assert checked[1] == ["`http://127.0.0.1:9`：无法连接（没有网络、地址错误或服务器未运行）"]
    asked_last = "暂时最后尝试：`http://127.0.0.1:9` 在最近 10 分钟内没有响应（下面保存的顺序不变）。"
    assert asked_last in [c.value for c in at.caption]  # downloads ask the other first meanwhile
    at.run()  # any rerun (a poll redraws the page once the bandwidth is measured) keeps them
    assert ([s.value for s in at.success], [e.value for e in at.error]) == checked
    at.button(key="downloads.keep-last").click().run()  # "保存为最后尝试": for good
    assert library.endpoints() == [hub.url, "http://127.0.0.1:9"]
    assert at.text_area(key="downloads.endpoints").value == f"{hub.url}\nhttp://127.0.0.1:9"
    assert asked_last not in [c.value for c in at.caption]  # the order saved is the one taken now
    at.text_area(key="downloads.endpoints").input(hub.url)
    at.button(key="downloads.save").click().run()
    assert [e.value for e in at.error] == []


def test_the_download_settings_say_which_proxy_downloads_go_through(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = new_app()
    at.switch_page("pages/models.py").run()
    assert not [c for c in at.caption if "proxy" in c.value]
    monkeypatch.setenv("all_proxy", "socks5://me:hunter22@127.0.0.1:7890")
    at.run()
    said = [c.value for c in at.caption if "proxy" in c.value]
    assert said == [
        "Downloads go through the proxy `socks5://127.0.0.1:7890` that the environment sets (https_proxy or "
        "all_proxy); mirrors on this machine or its network are reached directly."
    ]


def test_a_click_shows_its_message_when_the_bandwidth_is_measured_during_its_run(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = new_app()
    at.switch_page("pages/models.py").run()
    # Mocked: the measurement ending in the middle of the click's run (a race on real timing: the
    # page reads it when it starts, None, and again at each card, measured by then).
    readings = iter([None])
    monkeypatch.setattr(resources, "memory_bandwidth", lambda: next(readings, 20e9))
    at.text_input(key="add-model-repo").input("../etc/passwd")
    at.button(key="add-model-submit").click().run()
    assert not at.exception
    assert any("is not a Hugging Face repository id" in e.value for e in at.error)  # not lost to a rerun
    assert any("decode speed on the CPU: about" in c.value and "20 GB/s" in c.value for c in at.caption)


def test_on_a_gpu_the_speed_is_not_estimated_from_the_cpus_memory(
    new_app, library: ModelLibrary, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No GPU here: the engine is told it would run on one (the page's only question to it).
    monkeypatch.setattr(resources, "memory_bandwidth", lambda: 20e9)
    monkeypatch.setattr("core.inference.engine.LocalEngine.runs_on", lambda engine: "cuda")
    at = new_app()
    at.switch_page("pages/models.py").run()
    speeds = [c.value for c in at.caption if "decode speed" in c.value.lower()]
    assert len(speeds) == 2 and all(s.startswith("Decode speed on the GPU: measured with") for s in speeds)


def test_a_listing_that_cannot_be_read_offers_retry_and_the_mirror_settings(
    new_app, library: ModelLibrary
) -> None:
    library.preferences.set("endpoints", ["http://127.0.0.1:9"])  # nothing listens there
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.button(key="check-qwen2.5-0.5b").click().run()
    assert not at.exception
    assert [e.value.split(":")[0] for e in at.error] == [
        "Could not get the file list of Qwen/Qwen2.5-0.5B-Instruct"
    ]
    assert at.button(key="check-again-qwen2.5-0.5b")
    links = [link.proto for link in at.get("page_link")]
    assert [(link.label, link.page) for link in links] == [("Download settings (mirrors)", "hardware")]


def test_deleting_the_loaded_model_unloads_it(new_app, ready_model: str) -> None:
    at = new_app()
    at.run()
    at.chat_input[0].set_value("Hello").run()  # the model answers: loaded
    assert resources.engine().loaded.key == ready_model
    at.switch_page("pages/models.py").run()
    at.button(key=f"unload-{ready_model}").click().run()  # its memory back, its files kept
    assert not at.exception and resources.engine().loaded is None
    assert not any(button.key == f"unload-{ready_model}" for button in at.button)
    resources.engine().load(ready_model)
    at.run()
    at.button(key=f"delete-{ready_model}").click().run()
    at.button(key=f"delete-yes-{ready_model}").click().run()
    assert not at.exception
    assert resources.library().status(ready_model).kind == "not_downloaded"
    assert resources.engine().loaded is None  # its memory is freed with its files


def test_after_the_chosen_model_is_deleted_the_chat_answers_with_a_model_that_is_ready(
    new_app, ready_model: str, db_url: str, tiny_models: dict[str, Path]
) -> None:
    install_ready(Path(os.environ["LOCALLLM_MODELS_DIR"]), "other", tiny_models["llama"])
    with Database(db_url).begin() as session:
        repo.add_custom_model(session, "other", "test/other", "main", {})
    ConfigStore(Database(db_url)).use_local_model("other")
    at = new_app()
    at.run()
    assert at.selectbox(key="chat.model").value == "other"
    at.switch_page("pages/models.py").run()
    at.button(key="delete-other").click().run()
    at.button(key="delete-yes-other").click().run()

    at.switch_page("pages/chat.py").run()
    # The list, the sidebar and the reply agree (the list showed "tiny", the message went to "other":
    # "other is not downloaded yet").
    assert at.selectbox(key="chat.model").value == ready_model
    assert f"Provider: {ready_model}" in "\n".join(m.value for m in at.sidebar.markdown)
    at.chat_input[0].set_value("Hello").run()
    assert not at.exception and not at.error
    [conversation] = resources.chat_service("local").conversations()
    assert resources.chat_service("local").messages(conversation.id)[-1].model == ready_model


def test_a_model_found_by_name_is_added_from_the_results(
    new_app, library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    hub.add_repo("Qwen/Qwen2.5-1.5B-Instruct", tiny_models["qwen2"], downloads=1_200_000)
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"], downloads=2_500_000)
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct-AWQ", tiny_models["qwen2"], downloads=9_000_000)
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.text_input(key="find-model-query").input("qwen2.5")
    at.button(key="find-model-submit").click().run()
    assert not at.exception
    found = [m.value for m in at.markdown if m.value.startswith("**[Qwen/")]
    assert found == [  # the most downloaded first, each a link to its model card
        f"**[Qwen/Qwen2.5-0.5B-Instruct]({hub.url}/Qwen/Qwen2.5-0.5B-Instruct)**",
        f"**[Qwen/Qwen2.5-1.5B-Instruct]({hub.url}/Qwen/Qwen2.5-1.5B-Instruct)**",
    ]
    captions = [c.value for c in at.caption]
    assert any(c.startswith("2 models for “qwen2.5” from") for c in captions), captions
    assert (
        "Quantized copies left out (-AWQ, -GPTQ, -bnb-4bit, …): 1. This app quantizes the original "
        "model itself, for this machine." in captions
    )
    assert any(c.startswith("31.5K parameters · 126.1 KB to download · 1.2M downloads") for c in captions)
    assert any(c.startswith("Fits in RAM (CPU): needs") for c in captions)
    built_in, new = at.button(key="find-add-0"), at.button(key="find-add-1")
    assert (built_in.label, built_in.disabled) == ("In the catalog", True)  # qwen2.5-0.5b is built in
    assert (new.label, new.disabled) == ("Add", False)

    new.click().run()
    assert not at.exception
    assert any("Added Qwen/Qwen2.5-1.5B-Instruct as qwen2.5-1.5b-instruct" in s.value for s in at.success)
    assert "qwen2.5-1.5b-instruct · custom" in [h.value for h in at.subheader]
    assert (at.button(key="find-add-1").label, at.button(key="find-add-1").disabled) == (
        "In the catalog",
        True,
    )
    # its card opens on the files to fetch: Download is the next click
    assert at.button(key="download-qwen2.5-1.5b-instruct").label == "Download"


def test_a_search_that_cannot_reach_the_hub_says_why_in_the_pages_language(
    new_app, library: ModelLibrary
) -> None:
    library.set_endpoints(["http://127.0.0.1:9"])  # nothing listens there
    at = new_app()
    at.session_state["language"] = "zh"
    at.switch_page("pages/models.py").run()
    at.text_input(key="find-model-query").input("q")
    at.button(key="find-model-submit").click().run()
    assert [e.value for e in at.error] == ["请输入 2 到 100 个字符的模型名称进行搜索。"]
    at.text_input(key="find-model-query").input("qwen")
    at.button(key="find-model-submit").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "无法搜索“qwen”：无法连接（没有网络、地址错误或服务器未运行）（`http://127.0.0.1:9`）。"
        "请检查网络，或在下载设置中添加镜像，然后重试。"
    ]


def test_a_custom_models_card_names_the_languages_and_license_of_its_model_card(
    new_app, library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    card = {"language": ["zh", "en", "fr", "de", "es", "ja", "ko", "xx"], "license": "apache-2.0"}
    hub.add_repo("org/many-tongues", tiny_models["qwen2"], card=card)
    at = new_app()
    at.switch_page("pages/models.py").run()
    at.text_input(key="add-model-repo").input("org/many-tongues")
    at.button(key="add-model-submit").click().run()
    assert not at.exception
    assert (
        "**Languages:** Chinese / English / French / German / Spanish / Japanese and 2 more · "
        "**License:** apache-2.0" in [m.value for m in at.markdown]
    )
