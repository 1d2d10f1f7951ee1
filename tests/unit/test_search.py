"""Finding chat models on the Hub by name: a real Hub-compatible server on loopback, hostile answers too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli import main
from core.errors import InvalidSearchError, SearchFailedError
from core.hub.library import ModelLibrary
from core.hub.search import MAX_SEARCH_BYTES, FoundModel, found_models, search_models
from core.inference.sizing import weight_count
from core.storage.db import Database
from tests.fixtures.hub_server import HubServer

NOTHING_LISTENS = "http://127.0.0.1:9"


@pytest.fixture
def hub_with_models(hub: HubServer, tiny_models: dict[str, Path]) -> HubServer:
    hub.add_repo("Qwen/Qwen2.5-1.5B-Instruct", tiny_models["qwen2"], downloads=1_200_000)
    hub.add_repo("Qwen/Qwen2.5-0.5B-Instruct", tiny_models["qwen2"], downloads=2_500_000)
    hub.add_repo("Qwen/QwQ-32B", tiny_models["qwen2"], downloads=90_000, gated=True)
    hub.add_repo("HuggingFaceTB/SmolLM2-360M-Instruct", tiny_models["llama"], downloads=300_000)
    return hub


def test_a_search_lists_matching_chat_models_the_most_downloaded_first_with_their_size(
    hub_with_models: HubServer, tiny_models: dict[str, Path]
) -> None:
    for copy in (
        "Qwen/Qwen2.5-1.5B-Instruct-AWQ",
        "Qwen/Qwen2.5-0.5B-Instruct-GPTQ-Int4",
        "x/Qwen2.5-3B-bnb-4bit",
    ):
        hub_with_models.add_repo(copy, tiny_models["qwen2"], downloads=5_000_000)  # more downloaded
    results = search_models("  QWEN  ", [hub_with_models.url])

    assert (results.query, results.endpoint) == ("QWEN", hub_with_models.url)
    assert [model.repo_id for model in results.models] == [
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/QwQ-32B",
    ]  # fmt: skip
    weights = weight_count(tiny_models["qwen2"])  # float32 weights: 4 bytes each
    first = results.models[0]
    assert first == FoundModel("Qwen/Qwen2.5-0.5B-Instruct", 2_500_000, 0, weights, 4 * weights, gated=False)
    assert [model.gated for model in results.models] == [False, False, True]
    assert results.copies_left_out == 3  # refused when added: the engine quantizes the original itself
    (asked,) = hub_with_models.state.searches  # one request, for chat models transformers runs
    assert asked["pipeline_tag"] == ["text-generation"] and asked["filter"] == ["transformers"]
    assert asked["sort"] == ["downloads"] and asked["limit"] == ["40"]  # 20 shown, copies left out
    assert {"downloads", "safetensors", "gated"} <= set(asked["expand"])


@pytest.mark.parametrize(
    ("text", "sentence"),
    [("", "at least two letters"), ("  q ", "at least two letters"), ("x" * 101, "101 characters long")],
)
def test_a_search_too_short_or_too_long_is_refused_before_any_request(
    hub: HubServer, text: str, sentence: str
) -> None:
    with pytest.raises(InvalidSearchError, match=sentence) as raised:
        search_models(text, [hub.url])
    assert raised.value.bad_input and hub.state.searches == []


def test_entries_that_do_not_check_out_are_left_out_and_counts_out_of_range_read_as_unknown() -> None:
    good = {"id": "org/good", "downloads": 7, "likes": 3,
            "safetensors": {"parameters": {"BF16": 1000, "F32": 10}, "total": 1010}}  # fmt: skip
    entries = [
        "org/not-an-object",
        {"id": "../../etc/passwd"},
        {"id": "a/b/c"},
        {"id": "x" * 300 + "/y"},
        {"id": {"nested": "org/x"}},
        {"modelId": "org/old-style", "downloads": -5, "likes": True},
        good,
        {**good, "id": "ORG/GOOD"},  # the same repository again
        {"id": "org/huge", "downloads": 10**30, "likes": 2.5, "gated": "manual",
         "safetensors": {"parameters": {"BF16": 10**20}, "total": 10**20}},
        {"id": "org/odd", "safetensors": {"parameters": {"BF16": -1, "F32": "many"}}},
        {"id": "org/no-dict", "safetensors": ["BF16", 10]},
    ]  # fmt: skip

    found, copies = found_models(json.dumps(entries).encode())

    assert copies == 0
    assert found == (
        FoundModel("org/old-style", 0, 0, 0, 0, gated=False),
        FoundModel("org/good", 7, 3, 1010, 2040, gated=False),
        FoundModel("org/huge", 0, 0, 0, 0, gated=True),
        FoundModel("org/odd", 0, 0, 0, 0, gated=False),
        FoundModel("org/no-dict", 0, 0, 0, 0, gated=False),
    )
    many = [{"id": f"org/m{number}"} for number in range(1000)]
    assert len(found_models(json.dumps(many).encode(), limit=20)[0]) == 20
    for body in (b"not json", b'{"error": "no"}', b"\xff\xfe", b"null"):
        with pytest.raises(ValueError, match="not a list of models"):
            found_models(body)


@pytest.mark.parametrize(
    "answer",
    [b" " * (MAX_SEARCH_BYTES + 1), b"<html>a login page</html>", b'{"error": "Invalid expand"}'],
)
def test_an_endpoint_that_answers_otherwise_gives_way_to_the_next(
    hub_with_models: HubServer, answer: bytes
) -> None:
    with HubServer() as hostile:
        hostile.state.search_answer = answer
        results = search_models("smol", [hostile.url, hub_with_models.url])
    assert results.endpoint == hub_with_models.url
    assert [model.repo_id for model in results.models] == ["HuggingFaceTB/SmolLM2-360M-Instruct"]


def test_an_endpoint_a_search_could_not_reach_is_asked_last_by_the_next_check(
    hub_with_models: HubServer, database: Database
) -> None:
    """A search is often the first thing asked of the Hub: with huggingface.co out of reach, adding the
    model found asked it first again (10 s where it drops connections). One that answered otherwise (a
    mirror without search) may still download, and keeps its turn."""
    library = ModelLibrary(database)
    with HubServer() as without_search:
        without_search.state.search_answer = b"<html>a login page</html>"
        library.set_endpoints([NOTHING_LISTENS, without_search.url, hub_with_models.url])
        assert library.search("smol").endpoint == hub_with_models.url
        assert library.manager.failures.ordered(library.endpoints()) == [
            without_search.url, hub_with_models.url, NOTHING_LISTENS
        ]  # fmt: skip


def test_when_every_endpoint_fails_the_sentence_says_why_and_where(hub: HubServer) -> None:
    with pytest.raises(SearchFailedError) as raised:
        search_models("qwen", [NOTHING_LISTENS, f"{hub.url}/missing"])
    assert raised.value.params["reason"] == "server"  # the last one's: an error status
    assert str(raised.value) == (
        f"Could not search for 'qwen': the server answered with an error ({NOTHING_LISTENS}, "
        f"{hub.url}/missing). Check the network, or add a mirror in the download settings, then try again."
    )
    with pytest.raises(SearchFailedError) as raised:
        search_models("qwen", [NOTHING_LISTENS])
    assert raised.value.params["reason"] == "connect"


def test_the_command_line_lists_what_it_found_and_what_the_catalog_has(
    hub_with_models: HubServer, db_url: str, capsys: pytest.CaptureFixture[str], tiny_models: dict[str, Path]
) -> None:
    ModelLibrary(Database(db_url)).set_endpoints([hub_with_models.url])

    assert main(["search", "qwen"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/QwQ-32B",
    ]  # fmt: skip
    assert lines[0].endswith("2.5M downloads  (in the catalog)")  # the built-in qwen2.5-0.5b
    assert lines[2].endswith("90K downloads  (gated)")
    assert lines[3:] == []
    hub_with_models.add_repo("Qwen/Qwen2.5-0.5B-Instruct-AWQ", tiny_models["qwen2"])
    assert main(["search", "qwen2.5-0.5b"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Quantized copies left out (-AWQ, -GPTQ, ...): 1. This app quantizes the original model itself."
    )

    assert main(["search", "smollm2", "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["endpoint"] == hub_with_models.url
    assert [(m["repo_id"], m["in_catalog"]) for m in as_json["models"]] == [
        ("HuggingFaceTB/SmolLM2-360M-Instruct", False)
    ]
    assert main(["search", "nothing-like-it"]) == 0
    assert capsys.readouterr().out.startswith("No chat model for transformers has 'nothing-like-it'")
    assert main(["search", "q"]) == 2
    assert capsys.readouterr().err == "error: Type at least two letters of a model's name to search for.\n"


def test_several_words_find_names_that_hold_each_of_them(hub_with_models: HubServer) -> None:
    """The Hub matches its search as one substring ("qwen2.5 instruct" is in no name): asked again for
    the longest word, the others are required of each name here."""
    results = search_models("qwen2.5 INSTRUCT", [hub_with_models.url])
    assert [model.repo_id for model in results.models] == [
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen/Qwen2.5-1.5B-Instruct",
    ]
    assert [query["search"] for query in hub_with_models.state.searches] == [
        ["qwen2.5 INSTRUCT"],
        ["INSTRUCT"],
    ]
    assert search_models("qwen2.5 nothing-like-it", [hub_with_models.url]).models == ()
    assert search_models("smollm2", [hub_with_models.url]).models  # one word: asked once
    assert len(hub_with_models.state.searches) == 5
