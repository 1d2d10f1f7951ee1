"""Provider configs round trip through the Model servers page against a real `core serve` on loopback; the
Hardware & Settings page's settings, the dashboard's own API among them."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.chat.configs import ConfigStore
from core.errors import ConfigError
from core.inference.engine import LocalEngine
from core.storage.db import Database
from core.units import format_count
from tests.fixtures.openai_faults import FaultyOpenAIServer
from tests.unit.test_server import engine, long_model, serving  # noqa: F401 - fixtures reused

SECRET = "k-secret-1234"


def test_add_test_refresh_save_use_and_delete_a_server(new_app, engine: LocalEngine, db_url: str) -> None:  # noqa: F811
    with serving(engine, api_key=SECRET) as url:
        at = new_app()
        at.switch_page("pages/servers.py").run()
        at.text_input(key="pnew.url").input(url)
        at.text_input(key="pnew.key").input(SECRET)
        at.button(key="pnew.refresh").click().run()
        assert not at.exception
        connected = ("Connected: 1 model available.", "Connected: 2 models available.")
        assert any(s.value in connected for s in at.success)
        # Each model with the context the server lists (vLLM's max_model_len; this project's serve too).
        context = format_count(engine.context_tokens("tiny"))
        assert at.selectbox(key="pnew.model.select").options == [f"tiny · {context} tokens"]
        at.text_input(key="pnew.name").input("GPU box")
        at.button(key="pnew.save").click().run()
        assert any("Saved GPU box" in s.value for s in at.success)

        store = ConfigStore(Database(db_url))
        [config] = store.list_configs()
        assert (config.name, config.base_url, config.model, config.api_key) == (
            "GPU box",
            url,
            "tiny",
            SECRET,
        )
        assert at.text_input(key="pnew.key").value == ""  # the form was cleared
        assert SECRET not in repr(at._tree)  # never sent to the browser, even masked fields
        assert config.masked_api_key in at.text_input(key=f"p{config.id}.key").placeholder

        # the only thing that can answer (no local model here): chosen by itself, as a first visit does
        assert store.get_current_config().id == config.id and at.button(key=f"p{config.id}.use").disabled
        store.set_current_config(store.save_config("openai_compatible", "gpt", "http://127.0.0.1:1/v1"))
        at.run()
        at.button(key=f"p{config.id}.use").click().run()
        assert store.get_current_config().id == config.id
        at.switch_page("pages/chat.py").run()
        assert not at.exception
        assert at.selectbox(key="chat.model").value.startswith("GPU box · tiny")

        at.switch_page("pages/servers.py").run()
        at.button(key=f"p{config.id}.delete").click().run()
        at.button(key=f"p{config.id}.delete-yes").click().run()
        assert [c.name for c in store.list_configs()] == ["gpt"]


def test_a_usual_server_fills_in_its_address_and_a_save_clears_the_form(new_app, db_url: str) -> None:
    at = new_app()
    at.switch_page("pages/servers.py").run()
    assert at.expander[0].proto.expanded  # nothing saved yet: the form is open
    at.pills(key="pnew.kind").set_value("LM Studio").run()
    assert at.text_input(key="pnew.url").value == "http://localhost:1234/v1"
    at.pills(key="pnew.kind").set_value("OpenAI").run()
    assert at.text_input(key="pnew.url").value == "https://api.openai.com/v1"
    at.text_input(key="pnew.model.text").input("gpt-4o-mini")
    at.button(key="pnew.save").click().run()
    assert not at.exception
    assert [c.base_url for c in ConfigStore(Database(db_url)).list_configs()] == ["https://api.openai.com/v1"]
    assert (at.pills(key="pnew.kind").value, at.text_input(key="pnew.url").value) == (None, "")
    assert not at.expander[-1].proto.expanded  # a server is saved: the form for another one is closed


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9/v1", "Cannot connect to `http://127.0.0.1:9/v1`"),
        ("http://[::1", "is not a server address"),  # the page stopped with Streamlit's error
        ("ftp://x", "must start with `http://`"),
        ("page", "answered, but not as an OpenAI-compatible server"),  # the same
    ],
)
def test_a_bad_server_gives_a_clear_message(new_app, url: str, said: str) -> None:
    at = new_app()
    at.switch_page("pages/servers.py").run()
    with FaultyOpenAIServer("page") as web_page:
        at.text_input(key="pnew.url").input(web_page.url if url == "page" else url)
        at.button(key="pnew.test").click().run()
    assert not at.exception
    assert any(said in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("bad_url", ["ftp://x", "not a url"])
def test_an_invalid_base_url_is_refused(new_app, db_url: str, bad_url: str) -> None:
    at = new_app()
    at.switch_page("pages/servers.py").run()
    at.text_input(key="pnew.url").input(bad_url)
    at.text_input(key="pnew.model.text").input("m")
    at.button(key="pnew.save").click().run()
    said = "The base URL must start with `http://` or `https://`."
    assert said in [e.value for e in at.error], [e.value for e in at.error]
    assert ConfigStore(Database(db_url)).list_configs() == []


def test_changing_the_models_directory_finds_the_models_already_there(
    new_app, tmp_path, tiny_models, db_url: str
) -> None:
    from tests.fixtures.tiny_models import install_ready
    from ui import resources

    other = tmp_path / "elsewhere"
    install_ready(other, "tinyllama-1.1b", tiny_models["llama"])  # a copy made earlier by hand
    at = new_app()
    at.switch_page("pages/hardware.py").run()
    at.text_input(key="models-dir-input").input(str(other))
    at.button(key="models-dir-submit").click().run()
    assert not at.exception
    assert resources.library().models_dir == other.resolve()
    assert [s.value for s in at.success] == [f"Models are kept in `{other.resolve()}` now."]
    assert resources.library().status("tinyllama-1.1b").kind == "ready"
    at.switch_page("pages/models.py").run()
    assert any("Ready" in m.value for m in at.markdown)


def test_faster_prompts_can_be_turned_off_and_every_engine_reads_it(new_app, db_url: str) -> None:
    from core.inference.engine import LocalEngine
    from core.preferences import Preferences
    from ui import resources

    at = new_app()
    at.switch_page("pages/hardware.py").run()
    assert at.toggle(key="settings.prompt_copy").value  # on by default: it only takes spare memory
    at.toggle(key="settings.prompt_copy").set_value(False).run()
    assert not at.exception
    assert resources.engine().keep_prompt_weights is False  # the next load keeps nothing
    preferences = Preferences(Database(db_url))
    assert preferences.get("prompt_copy") is False
    assert LocalEngine.from_preferences(preferences).keep_prompt_weights is False  # `localllm serve`


def test_models_kept_loaded_is_a_setting_and_lowering_it_unloads_the_least_recently_used(
    new_app, db_url: str, ready_model: str, tiny_models: dict[str, Path]
) -> None:
    from core.preferences import Preferences
    from tests.fixtures.tiny_models import install_ready
    from ui import resources

    install_ready(resources.engine().models_dir, "second", tiny_models["llama"])
    at = new_app()
    at.switch_page("pages/hardware.py").run()
    assert at.number_input(key="settings.loaded_models").value == 3  # as Ollama keeps
    local = resources.engine()
    local.load("second")
    local.load(ready_model)
    at.number_input(key="settings.loaded_models").set_value(1).run()
    assert not at.exception and local.max_loaded == 1
    assert [model.key for model in local.loaded_models] == [ready_model]
    preferences = Preferences(Database(db_url))
    assert preferences.get("loaded_models") == 1
    assert LocalEngine.from_preferences(preferences).max_loaded == 1  # `localllm serve` keeps to it too
    with pytest.raises(ConfigError, match="between 1 and 8"):
        preferences.set("loaded_models", 0)


def test_the_hardware_page_counts_the_loaded_models_kept_weights(
    new_app, db_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.inference import engine as engine_module
    from core.units import format_bytes
    from tests.app.conftest import _install
    from tests.fixtures.tiny_models import build_tiny_model
    from ui import resources

    monkeypatch.setattr(engine_module, "KEEP_UNPACKED_MIN_BYTES", 0)  # a real model's copy is ≥ 0.5 GB
    key = _install(db_url, build_tiny_model(tmp_path / "wide", "llama", hidden_size=128))
    at = new_app()
    at.switch_page("pages/hardware.py").run()
    assert not any("kept unpacked" in m.value for m in at.markdown)  # nothing loaded
    local = resources.engine()
    list(local.stream(key, [{"role": "user", "content": "hello " * 20}], local.default_params(key)))
    local.settle()
    copy = local.prompt_copies.get(key, 0)
    assert copy > 0
    at.run()
    people = next(m.value for m in at.markdown if "How many people" in m.value)
    assert f"(loaded; {format_bytes(copy)} more for its weights kept unpacked for faster prompts)" in people


def test_the_admin_serves_the_api_from_the_dashboard_and_it_stays_on(
    new_app, ready_model: str, db_url: str
) -> None:
    """Hardware & Settings: the dashboard answers the API itself, with its own engine; kept in the
    settings (the next start serves it again); a taken port said on the page, nothing saved."""
    import socket

    import openai

    from core.preferences import Preferences
    from tests.fixtures.serving import free_port
    from ui import resources

    port = free_port()
    at = new_app()
    at.switch_page("pages/hardware.py").run()
    assert "Not running. Turn it on below" in at.info[-1].value
    at.selectbox(key="api-serving-choice").select("local")
    at.number_input(key="api-serving-port").set_value(port)
    at.button(key="api-serving-apply").click().run()
    try:
        assert not at.exception and not at.error
        assert any(f"`http://127.0.0.1:{port}/v1`" in s.value for s in at.success)
        preferences = Preferences(Database(db_url))
        assert (preferences.get("api_serving"), preferences.get("api_port")) == ("local", port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        said = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model=ready_model, messages=said, max_tokens=2)
        assert reply.usage.completion_tokens == 2 and resources.engine().loaded.key == ready_model
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            held = taken.getsockname()[1]
            at.number_input(key="api-serving-port").set_value(held)
            at.button(key="api-serving-apply").click().run()
        assert [e.value for e in at.error] == [
            f"Port {held} is in use (another localllm serve, or another program): choose another."
        ]
        assert preferences.get("api_port") == port and client.models.list().data[0].id == ready_model
    finally:
        at.selectbox(key="api-serving-choice").select("off")
        at.button(key="api-serving-apply").click().run()
    assert Preferences(Database(db_url)).get("api_serving") == "off" and not at.error
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
