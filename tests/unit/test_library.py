"""The model library: custom models checked against a real local Hub, status on disk, endpoints."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import snapshot_download
from sqlalchemy import update

from core.errors import (
    ConfigError,
    GatedRepoError,
    InvalidRepoIdError,
    ListingFailedError,
    NotFoundError,
    RepoNotFoundError,
    UnsupportedModelError,
)
from core.hardware import HardwareInfo
from core.hub import listing
from core.hub.catalog import BUILTIN_MODELS
from core.hub.library import ModelLibrary
from core.hub.listing import MAX_CARD_LANGUAGES
from core.hub.manager import DownloadManager
from core.hub.transfer import TransferPolicy
from core.inference.sizing import SIXTEEN_BIT
from core.preferences import Preferences
from core.storage.db import Database
from core.storage.schema import DownloadJobRow
from tests.fixtures.hub_server import Fault, HubServer, unanswering_endpoint
from ui.i18n import error_text

POLICY = TransferPolicy(backoff_s=0.01, stall_timeout_s=2, disk_margin_bytes=0, interrupted_after_s=0.2)


@pytest.fixture
def library(database: Database, hub: HubServer) -> ModelLibrary:
    models_dir = Preferences(database).get("models_dir")
    manager = DownloadManager(database, models_dir, lambda: [hub.url], policy=POLICY)
    lib = ModelLibrary(database, manager=manager)
    lib.set_endpoints([hub.url])
    return lib


def _variant(source: Path, tmp_path: Path, name: str, **edits: object) -> Path:
    """A copy of a tiny model with files removed (value None) or JSON fields changed."""
    target = Path(shutil.copytree(source, tmp_path / name))
    for path, change in edits.items():
        file = target / path.replace("__", ".")
        if change is None:
            file.unlink()
        else:
            file.write_text(json.dumps({**json.loads(file.read_text()), **change}))
    return target


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "a/b/c", "has space/model", "x" * 150 + "/" + "y" * 150, "org/na$me", "", "noslash", "a/.."],
)
def test_invalid_repo_ids_are_refused_before_any_request(library: ModelLibrary, hub: HubServer, bad_id: str):
    with pytest.raises(InvalidRepoIdError, match="not a Hugging Face repository id"):
        library.add_custom(bad_id)
    assert hub.requests() == []


@pytest.mark.parametrize(
    "page",
    [
        "https://huggingface.co/someone/Tiny-Chat",
        "  https://huggingface.co/someone/Tiny-Chat/tree/main  ",
        "https://hf.co/someone/Tiny-Chat?library=transformers",
        "http://hf-mirror.com/someone/Tiny-Chat/blob/main/config.json#L2",
        "huggingface.co/someone/Tiny-Chat",  # typed without https://
        "hf.co/someone/Tiny-Chat:Q4_K_M",  # Ollama's way to name a Hub model
        "https://www.modelscope.cn/models/someone/Tiny-Chat/files",  # ModelScope: the same ids, mostly
        "modelscope.cn/models/someone/Tiny-Chat",
    ],
)
def test_a_model_pages_address_adds_its_repo(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path], page: str
):
    """What users copy from the browser's address bar."""
    hub.add_repo("someone/Tiny-Chat", tiny_models["llama"])
    assert library.add_custom(page).repo_id == "someone/Tiny-Chat"


@pytest.mark.parametrize(
    "page",
    [
        "https://huggingface.co/datasets/someone/Tiny-Chat",
        "https://huggingface.co/spaces/someone/Tiny-Chat",
        "https://example.com/someone/Tiny-Chat",
        "https://huggingface.co/someone",
        "ftp://huggingface.co/someone/Tiny-Chat",
        "http://[::1/someone/Tiny-Chat",
        "https://modelscope.cn/datasets/someone/Tiny-Chat",
        "huggingface.co/spaces/someone/Tiny-Chat",
    ],
)
def test_other_addresses_are_refused_before_any_request(library: ModelLibrary, hub: HubServer, page: str):
    with pytest.raises(InvalidRepoIdError, match="not a Hugging Face repository id"):
        library.add_custom(page)
    assert hub.requests() == []


@pytest.mark.parametrize(
    ("path", "fault", "said"),
    [
        ("config.json", Fault(cut_after=0, reset=True), "the connection was reset or closed early"),
        ("model.safetensors", Fault(cut_after=0, reset=True), "the connection was reset or closed early"),
        ("config.json", Fault(status=503), "the server answered with an error"),
    ],
    ids=["config-reset", "weights-headers-reset", "config-503"],
)
def test_a_connection_lost_while_a_model_is_checked_is_the_next_endpoints_turn(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path], path: str, fault: Fault, said: str
) -> None:
    """Adding a model reads its file list, then its config and its weights' headers: a connection reset
    after the list was an unexpected error on the page (httpx's ReadError), and a server error on the
    config a refusal, not the mirror's turn."""
    hub.add_repo("someone/Tiny-Chat", tiny_models["llama"])
    hub.add_fault(replace(fault, path=path))
    with pytest.raises(ListingFailedError, match=rf"{said} \(http"):
        library.add_custom("someone/Tiny-Chat")
    with HubServer() as mirror:
        mirror.add_repo("someone/Tiny-Chat", tiny_models["llama"])
        library.set_endpoints([hub.url, mirror.url])
        spec = library.add_custom("someone/Tiny-Chat")
    assert spec.parameters > 10_000
    assert spec.context_length == 512


def test_add_custom_model_checks_the_hub_and_stores_details(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
):
    card = {"language": ["en", "zh", "EN", "pt-BR"], "license": "apache-2.0", "tags": ["chat"]}
    hub.add_repo("someone/Tiny-Chat", tiny_models["llama"], card=card)
    spec = library.add_custom("someone/Tiny-Chat")
    assert (spec.key, spec.repo_id, spec.custom) == ("tiny-chat", "someone/Tiny-Chat", True)
    assert (spec.languages, spec.license) == (("en", "zh", "pt-br"), "apache-2.0")  # from its model card
    assert spec.context_length == 512
    assert spec.parameters > 10_000
    assert spec.download_bytes == sum(p.stat().st_size for p in tiny_models["llama"].iterdir())
    assert library.get("someone/Tiny-Chat").key == "tiny-chat"
    with pytest.raises(InvalidRepoIdError, match="already in the catalog"):
        library.add_custom("someone/tiny-chat")
    library.remove_custom("tiny-chat")
    with pytest.raises(NotFoundError):
        library.get("tiny-chat")
    with pytest.raises(ConfigError, match="built in"):
        library.remove_custom("qwen2.5-0.5b")


def test_unrunnable_or_unreachable_repos_get_their_own_message(
    library: ModelLibrary,
    hub: HubServer,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    source = tiny_models["qwen2"]
    hub.add_repo("x/no-template", _variant(source, tmp_path, "a", chat_template__jinja=None))
    hub.add_repo(
        "x/remote-code", _variant(source, tmp_path, "b", config__json={"auto_map": {"AutoModel": "m.M"}})
    )
    hub.add_repo("x/no-weights", _variant(source, tmp_path, "c", model__safetensors=None))
    # Quantized copies sit beside each model on the Hub (Qwen's -AWQ and -GPTQ-Int4, unsloth's -bnb-4bit,
    # mlx-community's -4bit): they were added, downloaded, then failed to load.
    # Qwen2.5-VL has safetensors, a config and a chat template: 7 GB were fetched before it failed to load.
    hub.add_repo("x/Chat-VL", _variant(source, tmp_path, "g", config__json={"model_type": "qwen2_5_vl"}))
    hub.add_repo("x/Future", _variant(source, tmp_path, "h", config__json={"model_type": "qwen9_<b>"}))
    no_tokenizer = _variant(source, tmp_path, "i", tokenizer__json=None)
    (no_tokenizer / "tokenizer.model").write_bytes(b"a sentencepiece model: no library here to read it")
    hub.add_repo("x/no-tokenizer", no_tokenizer)
    hub.add_repo("x/Chat-GGUF", _variant(source, tmp_path, "f", model__safetensors=None))
    awq = {"quantization_config": {"quant_method": "awq", "bits": 4}}
    hub.add_repo("x/Chat-1.5B-Instruct-AWQ", _variant(source, tmp_path, "d", config__json=awq))
    hub.add_repo(
        "x/Chat-4bit-mlx", _variant(source, tmp_path, "e", config__json={"quantization": {"bits": 4}})
    )
    hub.add_repo("x/gated", source, gated=True)
    cases = {  # the English message (the CLI's), and the start of the Models page's sentence in Chinese
        "x/no-template": (
            UnsupportedModelError,
            "no chat template",
            "本应用无法运行该模型：x/no-template 没有对话模板",
        ),
        "x/remote-code": (
            UnsupportedModelError,
            "trust_remote_code",
            "本应用无法运行该模型：x/remote-code 需要运行",
        ),
        "x/no-weights": (
            UnsupportedModelError,
            "no safetensors",
            "本应用无法运行该模型：x/no-weights 没有 safetensors",
        ),
        "x/Chat-1.5B-Instruct-AWQ": (
            UnsupportedModelError,
            r"quantized already \(awq\), .* add the original model instead, probably x/Chat-1.5B-Instruct\.$",
            "本应用无法运行该模型：x/Chat-1.5B-Instruct-AWQ 的权重已经量化（awq）",
        ),
        "x/Chat-4bit-mlx": (
            UnsupportedModelError,
            r"quantized already \(MLX\), .* probably x/Chat\.$",
            "本应用无法运行该模型：x/Chat-4bit-mlx 的权重已经量化（MLX）",
        ),
        "x/Chat-VL": (
            UnsupportedModelError,
            r"x/Chat-VL is a qwen2_5_vl model, which takes images or sound beside text",
            "本应用无法运行该模型：x/Chat-VL 是 qwen2\\_5\\_vl 模型，除文字外还需要图像或声音输入",
        ),
        "x/Future": (
            UnsupportedModelError,
            r"x/Future is a model of a kind \(unnamed\) that this app's transformers \(5\.",
            "本应用无法运行该模型：x/Future 属于本应用的 transformers（5\\.",
        ),
        "x/no-tokenizer": (
            UnsupportedModelError,
            r"x/no-tokenizer has no tokenizer.json, the tokenizer this app reads\.$",
            "本应用无法运行该模型：x/no-tokenizer 没有本应用可读取的分词器",
        ),
        "x/Chat-GGUF": (
            UnsupportedModelError,
            r"x/Chat-GGUF has no safetensors weights; add the original model, perhaps x/Chat\.$",
            "本应用无法运行该模型：x/Chat-GGUF 没有 safetensors 格式的权重（其 GGUF 文件",
        ),
        "x/missing": (RepoNotFoundError, "was not found", "未找到模型仓库 x/missing：请检查仓库 ID"),
        "x/gated": (GatedRepoError, "accept its license", "x/gated 需要授权：请在 huggingface.co 接受"),
    }
    monkeypatch.setattr("ui.state.language", lambda: "zh")
    for repo_id, (error, message, in_chinese) in cases.items():
        with pytest.raises(error, match=message) as refused:
            library.add_custom(repo_id)
        assert error_text(refused.value).startswith(in_chinese), error_text(refused.value)
        assert not re.search("[A-Za-z]{3,} [a-z]{3,}", error_text(refused.value)), "English words in Chinese"
    assert [spec.key for spec in library.models() if spec.custom] == []


def test_an_endpoint_that_did_not_answer_is_asked_last_by_the_next_check_and_download(
    database: Database, hub: HubServer, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface.co dropping connections (from mainland China) cost every check of a model's files 10 s
    and every download 30 s (three tries) before the mirror's turn: once it failed, this process asks
    the mirror first, for a while."""
    monkeypatch.setattr(listing, "HUB_TIMEOUT", httpx2.Timeout(2.0, connect=0.3))  # 30 s / 10 s
    models_dir = Preferences(database).get("models_dir")
    manager = DownloadManager(database, models_dir, lambda: library.endpoints(), policy=POLICY)
    library = ModelLibrary(database, manager=manager)  # its jobs take the library's endpoints
    hub.add_repo("someone/tiny", tiny_models["qwen2"])
    with unanswering_endpoint(drops_connections=True) as unanswering:
        library.set_endpoints([unanswering, hub.url])
        key = library.add_custom(
            "someone/tiny"
        ).key  # its check: the first endpoint fails, the mirror answers
        assert library.plan(key).endpoint == hub.url
        assert library.download(key)
        done = library.manager.wait(key, timeout=30)
    assert done.state == "completed"
    assert done.notes == ()  # not a try of the endpoint that did not answer
    assert library.set_endpoints([unanswering, hub.url]) == [unanswering, hub.url]  # the saved order stays


def test_status_goes_from_not_downloaded_to_ready_to_damaged_and_back(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
):
    hub.add_repo("someone/tiny", tiny_models["qwen2"])
    key = library.add_custom("someone/tiny").key
    assert library.status(key).kind == "not_downloaded"
    plan = library.plan(key)
    assert plan.bytes_on_disk == 0
    assert plan.bytes_to_fetch == plan.listing.total_bytes
    assert plan.disk_free_bytes > 0

    assert library.download(key)
    assert library.manager.wait(key, timeout=30).state == "completed"
    assert library.status(key).kind == "ready"

    weights = library.directory(key) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes: only hashing finds it
    weights.write_bytes(bytes(data))
    assert library.status(key).kind == "ready"
    checks = {c.path: c for c in library.verify(key)}
    assert checks["model.safetensors"].problem == "checksum"
    status = library.status(key)
    assert status.kind == "damaged"
    assert [p.path for p in status.problems] == ["model.safetensors"]

    assert library.download(key)
    final = library.manager.wait(key, timeout=30)
    assert final.state == "completed"
    assert any("checksum mismatch" in note for note in final.notes)
    assert all(c.ok for c in library.verify(key))

    freed = library.delete(key)
    assert freed >= plan.listing.total_bytes
    assert library.status(key).kind == "not_downloaded"


def test_interrupted_jobs_are_found_and_resumed(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path], database: Database
):
    hub.add_repo("someone/tiny", tiny_models["qwen2"])
    key = library.add_custom("someone/tiny").key
    hub.add_fault(Fault(path="model.safetensors", cut_after=20_000, times=1))
    hub.add_fault(Fault(path="model.safetensors", status=503))
    library.download(key)
    assert library.manager.wait(key, timeout=30).state == "failed"
    # The app was killed mid-download and restarted at once: the row still says running and its last
    # heartbeat is recent, but no process holds the model's download lock, so it is known interrupted.
    with database.begin() as session:
        session.execute(update(DownloadJobRow).values(state="running", updated_at=datetime.now(UTC)))
    hub.clear_faults()

    patient = replace(POLICY, interrupted_after_s=3600)  # the heartbeat alone would say "running"
    manager = DownloadManager(database, library.models_dir, lambda: [hub.url], policy=patient)
    restarted = ModelLibrary(database, manager=manager)  # the app starts again: a new process-wide manager
    assert restarted.status(key).kind == "partial"
    assert restarted.progress(key).state == "interrupted"
    assert restarted.resume_interrupted() == [key]
    assert restarted.manager.wait(key, timeout=30).state == "completed"
    assert restarted.status(key).kind == "ready"


def test_endpoints_are_editable_and_probed(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
):
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"])
    closed = "http://127.0.0.1:9"
    assert library.set_endpoints([closed, f" {hub.url}/ ", closed]) == [closed, hub.url]
    assert library.endpoints() == [closed, hub.url]
    with pytest.raises(ConfigError):
        library.set_endpoints(["ftp://mirror"])
    with pytest.raises(ConfigError):
        library.set_endpoints([])
    good = library.probe_endpoint(hub.url)
    assert good.ok
    assert good.latency_ms > 0
    bad = library.probe_endpoint(closed, timeout_s=2)
    assert (bad.ok, bad.reason) == (False, "connect")
    assert library.manager.failures.ordered(library.endpoints()) == [hub.url, closed]  # asked last, a while
    with HubServer() as elsewhere:  # answers, but not with the model's info
        assert library.probe_endpoint(elsewhere.url).reason == "server"
    with pytest.MonkeyPatch.context() as offline:  # HF_HUB_OFFLINE=1, as huggingface_hub read it at import
        offline.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        assert library.probe_endpoint(hub.url).reason == "offline"


def test_a_model_in_the_hf_cache_is_used_without_downloading(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
):
    hub.add_repo("someone/cached", tiny_models["llama"])
    snapshot_download("someone/cached", endpoint=hub.url, token=False)  # the user's earlier download
    key = library.add_custom("someone/cached").key
    before = len(hub.requests("GET", "/resolve/"))
    assert library.cached_snapshot(key) is not None
    library.use_cached(key)
    assert library.status(key).kind == "ready"
    assert all(c.ok for c in library.verify(key))
    assert len(hub.requests("GET", "/resolve/")) == before


def test_redownload_fetches_every_byte_again(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
):
    repo = hub.add_repo("someone/tiny", tiny_models["qwen2"])
    key = library.add_custom("someone/tiny").key
    library.download(key)
    library.manager.wait(key, timeout=30)
    before = hub.bytes_served("model.safetensors")
    assert library.redownload(key)
    assert library.manager.wait(key, timeout=30).state == "completed"
    assert hub.bytes_served("model.safetensors") - before == len(repo.files["model.safetensors"].data)
    assert library.status(key).kind == "ready"


@pytest.mark.parametrize(
    ("card", "languages", "license_name"),
    [
        (None, (), ""),
        ("not a mapping", (), ""),
        ({"language": "fr", "license": "mit"}, ("fr",), "mit"),
        (
            {"language": ["en", 5, None, "<script>", "x" * 300, "english language"], "license": "x" * 300},
            ("en",),
            "",
        ),
        (
            {
                "language": [
                    f"{chr(97 + n % 26)}{chr(97 + n // 26 % 26)}{chr(97 + n // 676 % 26)}"
                    for n in range(10_000)
                ],
                "license": ["mit"],
            },
            None,
            "",
        ),
        ({"language": {"en": True}, "license": "[link](//host)"}, (), ""),
    ],
)
def test_a_model_cards_languages_and_license_are_kept_only_where_they_read_as_such(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path], card: object,
    languages: tuple[str, ...] | None, license_name: str,
) -> None:  # fmt: skip
    hub.add_repo("someone/carded", tiny_models["llama"], card=card)
    spec = library.add_custom("someone/carded")
    if languages is None:  # a card that names thousands: a bounded few
        assert 0 < len(spec.languages) <= MAX_CARD_LANGUAGES
    else:
        assert spec.languages == languages
    assert spec.license == license_name


def _machine(ram_free_gb: float, disk_free_gb: float = 100) -> HardwareInfo:
    """A machine of the given free memory and disk (any size can be described; only this one runs)."""
    return HardwareInfo(
        "cpu", 2, 2, int(64e9), int(ram_free_gb * 1e9), 0, (), False, int(disk_free_gb * 1e9), "/"
    )


def test_the_first_model_is_the_one_on_its_way_else_the_languages_else_any_that_fits(
    library: ModelLibrary, hub: HubServer, tiny_models: dict[str, Path]
) -> None:
    roomy, tight = _machine(16), _machine(2.5)  # TinyLlama in 16 bits with its cache: ~2.7 GB
    assert library.first_model("zh", SIXTEEN_BIT, roomy).key == "qwen2.5-0.5b"
    assert library.first_model("en", SIXTEEN_BIT, roomy).key == "tinyllama-1.1b"
    assert library.fits(BUILTIN_MODELS[1], SIXTEEN_BIT, roomy)
    assert not library.fits(BUILTIN_MODELS[1], SIXTEEN_BIT, tight)
    assert library.first_model("en", SIXTEEN_BIT, tight).key == "qwen2.5-0.5b"  # the other, which fits
    assert library.first_model("en", SIXTEEN_BIT, _machine(16, disk_free_gb=1.5)).key == "qwen2.5-0.5b"
    assert library.first_model("zh", SIXTEEN_BIT, _machine(0.5)) is None  # to the Models page

    hub.add_repo("someone/big", tiny_models["llama"])
    key = library.add_custom("someone/big").key
    (library.directory(key) / "config.json").parent.mkdir(parents=True)
    (library.directory(key) / "config.json").write_text("{}")  # partly downloaded
    assert library.first_model("zh", SIXTEEN_BIT, tight).key == key  # resumed before anything new
