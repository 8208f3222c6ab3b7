"""Pure units of the HTTP layer: the SSE framer and the shared client parser, request schemas and their
conversion, --set parsing."""

from __future__ import annotations

import pytest

from loadtests.sse import SSEParser, iter_events
from server.exceptions import InvalidRequest
from server.protocol.chat import ChatCompletionRequest
from server.protocol.decode import decode_body
from server.protocol.sampling import SamplingDefaults
from server.serving.sse import DONE, HEARTBEAT, ReplyEvent, frame
from server.settings import SettingsError, parse_override


def test_framer_and_parser_round_trip() -> None:
    raw = (frame({"a": 1}) + HEARTBEAT + frame({"b": "x\ny"}, event=ReplyEvent.DELTA, event_id=7) + DONE).decode()
    parser = SSEParser()
    events = list(iter_events(raw.splitlines(), parser))
    assert [e.json() for e in events[:2]] == [{"a": 1}, {"b": "x\ny"}]
    assert (events[1].event, events[1].id) == ("message.delta", "7") and events[2].done
    assert parser.comments == 1


def test_sampling_options_use_defaults_and_request_values() -> None:
    request = decode_body(b'{"messages": [{"role": "user", "content": "hi"}], "stop": "x", "top_k": -1}',
                          ChatCompletionRequest, empty_means=None)
    options = request.sampling_options(SamplingDefaults(temperature=0.3, max_tokens=9))
    assert (options.temperature, options.max_tokens, options.stop, options.top_k) == (0.3, 9, ["x"], 0)
    assert request.chat_messages() == [{"role": "user", "content": "hi"}]


def test_developer_role_is_system_for_the_template() -> None:
    request = decode_body(b'{"messages": [{"role": "developer", "content": "be brief"}, '
                          b'{"role": "user", "content": "hi"}]}', ChatCompletionRequest)
    assert request.chat_messages()[0] == {"role": "system", "content": "be brief"}


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
