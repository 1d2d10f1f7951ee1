"""The Responses API's `previous_response_id` (OpenAI's SDK and its Agents SDK chain turns with it, `store`
being OpenAI's default): a response is kept in memory and a follow-up continues its conversation."""

from __future__ import annotations

import openai
import pytest

from core.api.errors import APIError
from core.api.kept import KeptResponses
from core.api.schemas import InputMessage
from core.inference.engine import LocalEngine
from tests.unit.test_server import _client, engine, long_model, serving  # noqa: F401 - fixtures reused

SHORT = {"model": "tiny", "temperature": 0, "max_output_tokens": 4}


def test_a_follow_up_reads_the_conversation_so_far_and_a_forgotten_one_is_said(engine: LocalEngine) -> None:  # noqa: F811
    with serving(engine) as url:
        client = _client(url)
        first = client.responses.create(input="My name is Ada.", instructions="Answer briefly.", **SHORT)
        second = client.responses.create(previous_response_id=first.id, input="What is my name?", **SHORT)
        streamed = client.responses.create(
            previous_response_id=second.id, input="And again?", stream=True, **SHORT
        )
        third = list(streamed)[-1].response  # response.incomplete: cut at max_output_tokens
        # What the follow-ups read: the earlier turns, not the earlier instructions (as OpenAI's).
        turns = [{"role": "user", "content": "My name is Ada."},
                 {"role": "assistant", "content": first.output_text},
                 {"role": "user", "content": "What is my name?"}]  # fmt: skip
        as_chat = client.chat.completions.create(model="tiny", messages=turns, max_tokens=1)
        turns += [
            {"role": "assistant", "content": second.output_text},
            {"role": "user", "content": "And again?"},
        ]
        as_chat_again = client.chat.completions.create(model="tiny", messages=turns, max_tokens=1)
        kept = client.responses.retrieve(third.id)  # a streamed one is kept too
        unkept = client.responses.create(input="Hi", store=False, **SHORT)
        with pytest.raises(openai.NotFoundError) as not_kept:
            client.responses.create(previous_response_id=unkept.id, input="Hi", **SHORT)
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError) as broken:  # its first turn is gone
            client.responses.create(previous_response_id=second.id, input="Hi", **SHORT)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
    assert first.store and second.previous_response_id == first.id and not unkept.store
    assert second.usage.input_tokens == as_chat.usage.prompt_tokens
    assert third.usage.input_tokens == as_chat_again.usage.prompt_tokens
    assert (kept.id, kept.output_text, kept.previous_response_id) == (third.id, third.output_text, second.id)
    assert not_kept.value.body["param"] == "previous_response_id"
    assert not_kept.value.body["message"].startswith(f"No response '{unkept.id}' is kept here")
    assert broken.value.body["message"].startswith(f"No response '{first.id}' is kept here")


def _response(number: int, text: str = "ok") -> dict:
    message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    return {"id": f"resp_{number}", "output": [message]}


def test_the_store_keeps_the_latest_within_its_bounds() -> None:
    kept = KeptResponses(most=2, most_chars=2_000)
    asked = [InputMessage(role="user", content="hi")]
    for number, previous in ((0, None), (1, None), (2, "resp_1")):
        kept.keep(_response(number, f"reply {number}"), asked, previous)
    with pytest.raises(APIError, match="No response 'resp_0' is kept here"):
        kept.get("resp_0")  # the oldest went
    assert [item.text() for item in kept.conversation("resp_2")] == ["hi", "reply 1", "hi", "reply 2"]
    kept.keep(_response(3), asked, "resp_1")  # resp_1 goes to make room
    with pytest.raises(APIError, match="'resp_1'"):
        kept.conversation("resp_3")  # follows resp_1, which is gone: said, not half a conversation
    kept.keep(_response(4, "x" * 3_000), asked, None)  # larger than the whole store: not kept
    with pytest.raises(APIError):
        kept.get("resp_4")
    assert kept.get("resp_3").response["id"] == "resp_3"


def test_a_responses_input_items_are_listed_a_page_at_a_time(engine: LocalEngine) -> None:  # noqa: F811
    """`client.responses.input_items.list`: the conversation a response was asked from, the latest item
    first (OpenAI's default), paged with the same ids at every listing."""
    with serving(engine) as url:
        client = _client(url)
        first = client.responses.create(input="My name is Ada.", **SHORT)
        second = client.responses.create(previous_response_id=first.id, input="What is my name?", **SHORT)
        latest_first = client.responses.input_items.list(second.id)
        paged = list(client.responses.input_items.list(second.id, limit=1, order="asc"))  # page after page
        with pytest.raises(openai.BadRequestError) as too_many:
            client.responses.input_items.list(second.id, limit=101)
        with pytest.raises(openai.BadRequestError) as no_number:
            client.get(f"/responses/{second.id}/input_items?limit=ten", cast_to=object)
        with pytest.raises(openai.BadRequestError) as unknown:
            client.responses.input_items.list(second.id, after="msg_nothing")
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.input_items.list(second.id)
    texts = [(item.type, item.role, item.content[0].text) for item in latest_first.data]
    assert texts == [("message", "user", "What is my name?"), ("message", "assistant", first.output_text),
                     ("message", "user", "My name is Ada.")]  # fmt: skip
    assert latest_first.data[1].id == first.output[0].id and not latest_first.has_more
    assert [item.id for item in paged] == [item.id for item in reversed(latest_first.data)]
    assert too_many.value.body["param"] == no_number.value.body["param"] == "limit"
    assert unknown.value.body["param"] == "after"
