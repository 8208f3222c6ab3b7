"""Pure units of the HTTP layer: the SSE framer and the shared client parser, request schemas and their
conversion, --set parsing."""

from __future__ import annotations

import msgspec
import pytest

from loadtests.sse import SSEParser, iter_events
from server.apis.decode import decode_body
from server.apis.openai.chat_completions.protocol import ChatCompletionRequest
from server.exceptions import InvalidRequest
from server.settings import SettingsError, parse_override
from server.sse import DONE, HEARTBEAT, ReplyEvent, frame


def test_framer_and_parser_round_trip() -> None:
    raw = (frame({"a": 1}) + HEARTBEAT + frame({"b": "x\ny"}, event=ReplyEvent.DELTA, event_id=7) + DONE).decode()
    parser = SSEParser()
    events = list(iter_events(raw.splitlines(), parser))
    assert [e.json() for e in events[:2]] == [{"a": 1}, {"b": "x\ny"}]
    assert (events[1].event, events[1].id) == ("message.delta", "7") and events[2].done
    assert parser.comments == 1


def test_set_fields_reach_the_engine_under_vllms_names_and_nulls_mean_unset() -> None:
    request = decode_body(b'{"messages": [{"role": "user", "content": "hi"}], "stop": "x", "top_k": -1, "n": null, '
                          b'"presence_penalty": null, "logprobs": null, "stream": null, "model": null, '
                          b'"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}}',
                          ChatCompletionRequest, empty_means=None)
    chat = request.chat_input()
    assert chat.messages == [{"role": "user", "content": "hi"}]
    assert chat.fields == {"stop": "x", "top_k": -1,
                           "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}}


@pytest.mark.parametrize("field, value", [("use_beam_search", True), ("length_penalty", 0.5),
                                          ("chat_template", "{{ x }}"), ("kv_transfer_params", {}),
                                          ("logprob_token_ids", [1])])
def test_refused_fields_are_400_naming_them(field: str, value: object) -> None:
    body = msgspec.json.encode({"messages": [{"role": "user", "content": "hi"}], field: value})
    with pytest.raises(InvalidRequest) as caught:
        decode_body(body, ChatCompletionRequest)
    assert caught.value.param == field and "not supported" in caught.value.message


def test_harmless_values_of_refused_fields_are_accepted() -> None:
    request = decode_body(b'{"messages": [{"role": "user", "content": "hi"}], "use_beam_search": false, '
                          b'"length_penalty": 1.0, "mm_payload": "tensors"}', ChatCompletionRequest)
    assert (request.use_beam_search, request.length_penalty, request.mm_payload) == (False, 1.0, "tensors")
    assert request.chat_input().messages == [{"role": "user", "content": "hi"}]


def test_cross_field_check_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_body(b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', ChatCompletionRequest)
    assert caught.value.param == "top_logprobs"


@pytest.mark.parametrize("item", ["max_model_len", "=4", "no_such_key=1"])
def test_malformed_set_is_a_clear_error(item: str) -> None:
    with pytest.raises(SettingsError, match="--set"):
        parse_override(item)


def test_set_keeps_everything_after_the_first_equals() -> None:
    assert parse_override("database_url=sqlite:///a=b.db") == ("database_url", "sqlite:///a=b.db")


def test_the_api_docs_carry_the_field_tables() -> None:
    from pathlib import Path

    from server.apis.openai.fields import CHAT_FIELDS, markdown_table

    api_docs = (Path(__file__).resolve().parents[2] / "docs/api.md").read_text()
    assert markdown_table(CHAT_FIELDS) in api_docs, "run python -m server.apis.openai.fields and paste the tables"


def test_the_conversation_docs_carry_the_javascript_example_the_browser_test_runs() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    example = (root / "server/static/chat/example.js").read_text()
    assert f"```js\n{example}```" in (root / "docs/conversations.md").read_text()
