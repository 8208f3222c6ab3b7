"""OpenAI items to conversation rows and back (the core's ItemRecord in messages.item), what is refused naming its
field, and how item rows enter a prompt: calls as an assistant's tool_calls, outputs as tool messages, and history
cut only at a user message."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.apis.openai.responses.items import new_item, new_items, row_id_of, wire_item
from server.conversations.history import cut_points, visible_turns
from server.conversations.items import ItemKind, ItemRecord
from server.exceptions import InvalidRequest
from storage.models import Message, MessageStatus

ROUND_TRIPS: list[dict[str, Any]] = [
    {"type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "hi"}]},
    {"type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "a", "annotations": []}, {"type": "refusal", "refusal": "no"}]},
    {"type": "message", "role": "assistant", "status": "incomplete", "phase": "commentary",
     "content": [{"type": "output_text", "text": "cut", "annotations": []}]},
    {"type": "message", "role": "developer", "status": "completed", "content": [{"type": "input_text", "text": "be"},
                                                                              {"type": "input_text", "text": "kind"}]},
    {"type": "function_call", "status": "completed", "call_id": "call_1", "name": "f", "arguments": '{"x": 1}'},
    {"type": "function_call_output", "status": "completed", "call_id": "call_1", "output": "42"},
    {"type": "reasoning", "status": "completed", "summary": [{"type": "summary_text", "text": "thought"}],
     "content": [{"type": "reasoning_text", "text": "step 1"}, {"type": "reasoning_text", "text": "step 2"}],
     "encrypted_content": "opaque"},
]


def row(item: dict[str, Any], seq: int = 1) -> Message:
    new = new_item(item, "items[0]", uuid.uuid4())
    return Message(id=new.item_id, seq=seq, role=new.role, content=new.content, status=new.status,
                   item=new.record.to_json() if new.record is not None else None)


@pytest.mark.parametrize("item", ROUND_TRIPS, ids=lambda item: f"{item['type']}-{item.get('role', '')}")
def test_every_kind_reads_back_as_it_was_given(item: dict[str, Any]) -> None:
    stored = row(item)
    back = wire_item(stored)
    prefix = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}
    assert back.pop("id") == f"{prefix[item['type']]}{stored.id.hex}"
    assert back == item
    assert row_id_of(wire_item(stored)["id"]) == (prefix[item["type"]], stored.id)


def test_a_plain_message_is_a_plain_row_as_the_page_writes_it() -> None:
    for item in ({"role": "user", "content": "hello"},
                 {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}):
        stored = row(item)
        assert (stored.role, stored.content, stored.item) == ("user", "hello", None)
    page = Message(id=uuid.uuid4(), seq=1, role="assistant", content="reply", status=MessageStatus.LENGTH)
    assert wire_item(page) == {"id": f"msg_{page.id.hex}", "type": "message", "status": "incomplete",
                               "role": "assistant",
                               "content": [{"type": "output_text", "text": "reply", "annotations": []}]}


def test_the_core_record_is_plain_json_and_round_trips() -> None:
    record = row(ROUND_TRIPS[-1]).item
    assert record is not None and record["kind"] == ItemKind.REASONING
    assert ItemRecord.from_json(record).to_json() == record


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "item_reference", "id": "msg_1"}, "items[0].type"),
    ({"type": "web_search_call", "id": "ws_1"}, "items[0].type"),
    ({"role": "tool", "content": "x"}, "items[0].role"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}, "items[0].content[0].type"),
    ({"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}, "items[0].content[0].type"),
    ({"role": "user", "content": 3}, "items[0].content"),
    ({"role": "user", "content": "nul \x00"}, "items[0].text"),
    ({"type": "function_call", "call_id": "c", "name": "f"}, "items[0].arguments"),
    ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "x"}]},
     "items[0].output"),
    ({"role": "assistant", "status": "done", "content": "x"}, "items[0].status"),
    ({"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [{"type": "url"}]}]},
     "items[0].content[0].annotations"),
    ("a string", "items[0]"),
    ({"type": ["message"]}, "items[0].type"),
    ({"role": {"x": 1}, "content": "x"}, "items[0].role"),
    ({"role": "user", "status": [], "content": "x"}, "items[0].status"),
    ({"role": "user", "content": [{"type": ["input_text"]}]}, "items[0].content[0].type"),
    ({"type": "reasoning", "summary": "a string"}, "items[0].summary.content"),
])
def test_what_cannot_be_kept_is_refused_naming_it(item: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        new_items([item], "items", ours=False)
    assert refused.value.param == param, refused.value.message


def test_ids_the_client_chose_are_kept_on_the_item_but_never_name_a_row() -> None:
    given = f"msg_{uuid.uuid4().hex}"
    [(item, new)] = new_items([{"id": given, "role": "user", "content": "x"}], "items", ours=False)
    assert item["id"] == given and new.item_id != uuid.UUID(hex=given[4:])
    [(_, mine)] = new_items([{"id": given, "role": "assistant", "content": "x"}], "output", ours=True)
    assert mine.item_id == uuid.UUID(hex=given[4:])


def test_calls_and_outputs_render_as_tool_calls_and_tool_messages() -> None:
    rows = [row({"role": "system", "content": "sys"}, 1), row({"role": "user", "content": "weather?"}, 2),
            row({"role": "assistant", "content": "let me look"}, 3),
            row({"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"}, 4),
            row({"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"}, 5),
            row({"type": "reasoning", "summary": [{"type": "summary_text", "text": "hidden"}]}, 6),
            row({"type": "function_call_output", "call_id": "a", "output": "1"}, 7),
            row({"type": "function_call_output", "call_id": "b", "output": "2"}, 8),
            row({"role": "developer", "content": "short answers"}, 9),
            row({"type": "function_call", "call_id": "c", "name": "h", "arguments": "{}"}, 10)]
    turns = visible_turns(rows)
    assert turns == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "system", "content": "short answers"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "h", "arguments": "{}"}}]}]


def test_history_is_cut_only_at_a_user_message() -> None:
    roles = ["user", "assistant", "tool", "assistant", "user", "assistant", "user", "user", "assistant", "user"]
    cuts = cut_points([{"role": role} for role in roles])
    assert cuts == [0, 4, 6, 7, 9]
    alternating = ["user", "assistant"] * 3 + ["user"]
    assert cut_points([{"role": role} for role in alternating]) == [0, 2, 4, 6]
