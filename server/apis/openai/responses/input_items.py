"""The Responses API's input items, checked and converted to OpenAI chat messages as vllm serve converts them
(vllm/entrypoints/openai/responses/utils.py, construct_input_messages), so that the same request renders the same
prompt. Every refusal is an InvalidRequest naming the item's field."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from server.apis.openai.fields import TEXT_ONLY
from server.apis.openai.responses.state import Item
from server.exceptions import InvalidRequest

Message = dict[str, Any]


class ItemType(StrEnum):
    MESSAGE = "message"
    FUNCTION_CALL = "function_call"
    FUNCTION_CALL_OUTPUT = "function_call_output"
    REASONING = "reasoning"


ROLES = frozenset({"user", "system", "developer", "assistant"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# Statuses of an assistant message (or reasoning) that the model continues, as vllm serve continues it.
PARTIAL = frozenset({"in_progress", "incomplete"})
# Item types of OpenAI's API that this server does not take, and why.
UNSERVED_ITEMS = {
    "item_reference": "item references are not served; send the item itself",
    "custom_tool_call": "custom tools are not served",
    "custom_tool_call_output": "custom tools are not served",
    **{name: "built-in tools are not served" for name in (
        "web_search_call", "file_search_call", "computer_call", "computer_call_output", "image_generation_call",
        "code_interpreter_call", "local_shell_call", "local_shell_call_output", "mcp_call", "mcp_list_tools",
        "mcp_approval_request", "mcp_approval_response", "shell_call", "shell_call_output", "apply_patch_call",
        "apply_patch_call_output", "tool_search_call", "tool_search_output", "compaction")},
}
UNSERVED_PARTS = {"input_image": TEXT_ONLY, "input_file": TEXT_ONLY, "input_audio": TEXT_ONLY,
                  "refusal": "refusal parts are not taken as input"}


def name_of(value: Any) -> str | None:
    """A type, role or status as sent: a string, or None for anything else (a list is not a name)."""
    return value if isinstance(value, str) else None


def text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string", param=where)
    return value


def text_parts(content: list[Any], where: str) -> list[dict[str, str]]:
    """input_text / output_text parts as chat text parts (vLLM's chat parser reads all three alike)."""
    parts = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = name_of(part.get("type")) if isinstance(part, dict) else None
        if kind in UNSERVED_PARTS:
            raise InvalidRequest(f"{kind} parts are not supported: {UNSERVED_PARTS[kind]}", param=f"{at}.type")
        if kind not in TEXT_PARTS:
            raise InvalidRequest(f"unknown content part type {kind!r}; this server takes input_text and output_text",
                                 param=f"{at}.type")
        parts.append({"type": "text", "text": text_of(part.get("text"), f"{at}.text")})
    return parts


def check_message(item: Item, where: str) -> None:
    role = name_of(item.get("role"))
    if role not in ROLES:
        raise InvalidRequest(f"a message's role must be one of {', '.join(sorted(ROLES))}, not {role!r}",
                             param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, list):
        text_parts(content, f"{where}.content")
    elif not isinstance(content, str):
        raise InvalidRequest("a message's content must be a string or a list of parts", param=f"{where}.content")


def check_items(items: list[Item], where: str = "input") -> None:
    """Each item is one this server converts, with the fields its conversion reads."""
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("an input item must be an object", param=at)
        kind = name_of(item.get("type", ItemType.MESSAGE if "role" in item else None))
        if kind in UNSERVED_ITEMS:
            raise InvalidRequest(f"{kind} items are not supported: {UNSERVED_ITEMS[kind]}", param=f"{at}.type")
        if kind == ItemType.MESSAGE:
            check_message(item, at)
        elif kind == ItemType.FUNCTION_CALL:
            for name in ("call_id", "name", "arguments"):
                text_of(item.get(name), f"{at}.{name}")
            if item.get("namespace"):
                raise InvalidRequest("namespaced tools are not served", param=f"{at}.namespace")
        elif kind == ItemType.FUNCTION_CALL_OUTPUT:
            text_of(item.get("call_id"), f"{at}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                text_parts(output, f"{at}.output")
            else:
                text_of(output, f"{at}.output")
        elif kind == ItemType.REASONING:
            if item.get("encrypted_content"):
                raise InvalidRequest("encrypted reasoning content is not supported", param=f"{at}.encrypted_content")
            for name in ("content", "summary"):
                parts = item.get(name) or []
                if not isinstance(parts, list):
                    raise InvalidRequest(f"a reasoning item's {name} must be a list of parts", param=f"{at}.{name}")
                for position, part in enumerate(parts):
                    text_of(part.get("text") if isinstance(part, dict) else None, f"{at}.{name}[{position}].text")
        else:
            raise InvalidRequest(f"unknown input item type {kind!r}; this server takes message, function_call, "
                                 "function_call_output and reasoning items", param=f"{at}.type")


def chat_messages(items: list[Item]) -> list[Message]:
    """vllm serve's conversion of checked items: a function call or reasoning joins the assistant message before
    it; a function call output is a tool message; other messages keep their role."""
    messages: list[Message] = []
    for item in items:
        message = one_message(item, messages[-1] if messages and messages[-1].get("role") == "assistant" else None)
        if message is not None:
            messages.append(message)
    return messages


def one_message(item: Item, assistant: Message | None) -> Message | None:
    """A new message, or None when the item joined `assistant` (the previous message, if it is the assistant's)."""
    kind = item.get("type", ItemType.MESSAGE)
    if kind == ItemType.FUNCTION_CALL:
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        if assistant is not None:
            assistant.setdefault("tool_calls", []).append(call)
            return None
        return {"role": "assistant", "tool_calls": [call]}
    if kind == ItemType.REASONING:
        parts = item.get("content") or item.get("summary") or []
        reasoning = parts[0]["text"] if parts else ""
        if assistant is not None and assistant.get("reasoning") is None:
            assistant["reasoning"] = reasoning
            return None
        return {"role": "assistant", "reasoning": reasoning}
    if kind == ItemType.FUNCTION_CALL_OUTPUT:
        output = item["output"]
        return {"role": "tool", "tool_call_id": item["call_id"],
                "content": output if isinstance(output, str) else text_parts(output, "output")}
    content = item["content"]
    if item["role"] == "assistant":
        # vLLM reads an assistant message's first part only.
        text = content if isinstance(content, str) else (content[0]["text"] if content else None)
        if text is None:
            return None
        if assistant is not None and assistant.get("content") is None:
            assistant["content"] = text
            return None
        return {"role": "assistant", "content": text}
    return {"role": item["role"], "content": content if isinstance(content, str) else text_parts(content, "content")}


def continues_final_message(items: list[Item]) -> bool:
    """vllm serve continues a last assistant message (or reasoning) left in progress or incomplete."""
    if not items:
        return False
    last = items[-1]
    kind = name_of(last.get("type", ItemType.MESSAGE))
    return kind in (ItemType.MESSAGE, ItemType.REASONING) and name_of(last.get("status")) in PARTIAL
