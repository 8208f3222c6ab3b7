"""OpenAI's Responses request (the fields of vLLM's ResponsesRequest and OpenAI's own, bounded and checked), and its
translation to what the engine takes: chat messages (server.apis.openai.responses.input_items) and vLLM's chat
fields, as vllm serve's /v1/responses translates them. Every refusal is an InvalidRequest naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine import ChatInput
from server.apis.decode import INT32_MAX, PositiveInt, Seed, error_param
from server.apis.openai.chat_completions.protocol import MAX_MESSAGES, MAX_TOOLS
from server.apis.openai.fields import refusal
from server.apis.openai.responses.fields import RESPONSES_FIELDS
from server.apis.openai.responses.input_items import chat_messages, check_items, continues_final_message
from server.apis.openai.responses.state import Item
from server.apis.openai.sampling import (
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    TOP_K_DISABLED,
    Penalty,
    StructuredOutputs,
    Temperature,
    TokenIds,
    TopP,
)
from server.exceptions import InvalidRequest

LOGPROBS = "message.output_text.logprobs"
INCLUDES = frozenset({LOGPROBS, "reasoning.encrypted_content", "code_interpreter_call.outputs",
                      "computer_call_output.output.image_url", "file_search_call.results",
                      "message.input_image.image_url", "web_search_call.action.sources", "web_search_call.results"})
MAX_METADATA_KEYS = 16
FUNCTION = "function"
Id = Annotated[str, Meta(min_length=1, max_length=256)]


class FunctionTool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["function"]
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_tool(self) -> dict[str, Any]:
        """vLLM's chat tool, as vllm serve converts a Responses function tool."""
        spec = {"name": self.name, "description": self.description, "parameters": self.parameters,
                "strict": self.strict}
        return {"type": FUNCTION, "function": {key: value for key, value in spec.items() if value is not None}}

    def echoed(self) -> dict[str, Any]:
        return {"type": FUNCTION, "name": self.name, "description": self.description, "parameters": self.parameters,
                "strict": self.strict}


class TextFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


class Reasoning(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ConversationRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Id


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    include_obfuscation: bool | None = None


class Prompt(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a create request and an input_tokens request share: what renders the prompt."""

    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    input: str | Annotated[list[Item], Meta(max_length=MAX_MESSAGES)]
    instructions: str | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    previous_response_id: Id | None = None
    conversation: Id | ConversationRef | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.input, list):
            check_items(self.input)
        self.function_tools()
        self.chat_tool_choice()
        if self.previous_response_id is not None and self.conversation is not None:
            raise InvalidRequest("previous_response_id and conversation cannot be used together",
                                 param="previous_response_id")

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation

    def input_items(self) -> list[Item]:
        """The input as items (a string is one user message), as the state keeps them."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for index, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != FUNCTION:
                raise InvalidRequest(f"tools of type {kind!r} are not supported: this server runs no built-in "
                                     "tools; declare function tools", param=f"tools[{index}].type")
            try:
                tools.append(msgspec.convert(tool, FunctionTool))
            except msgspec.ValidationError as exc:
                raise InvalidRequest(str(exc), param=f"tools[{index}].{error_param(str(exc)) or ''}".rstrip(".")
                                     ) from None
        return tools

    def chat_tool_choice(self) -> str | dict[str, Any]:
        """vLLM's chat tool_choice: with no tools, auto and none are none (as vllm serve)."""
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        names = {tool["name"] for tool in self.tools or []}
        if isinstance(choice, dict):
            if choice.get("type") != FUNCTION:
                raise InvalidRequest(f"tool_choice of type {choice.get('type')!r} is not supported; send none, auto, "
                                     "required or {type: function, name}", param="tool_choice.type")
            if set(choice) - {"type", "name"} or not isinstance(choice.get("name"), str):
                raise InvalidRequest("a function tool_choice takes type and name", param="tool_choice")
            if choice["name"] not in names:
                raise InvalidRequest(f"tool_choice names {choice['name']!r}, which is not in tools",
                                     param="tool_choice.name")
            return {"type": FUNCTION, "function": {"name": choice["name"]}}
        if not names:
            if choice == "required":
                raise InvalidRequest("tool_choice required needs tools", param="tool_choice")
            return "none"
        return choice

    def chat_messages(self, context: list[Item]) -> list[dict[str, Any]]:
        """The instructions, then the context (without its system messages, as vllm serve drops them from history),
        then the input."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages += [m for m in chat_messages(context) if m.get("role") != "system"]
        return messages + chat_messages(self.input_items())

    def prompt_fields(self, continued: bool) -> dict[str, Any]:
        """The fields that shape the prompt (tools, template arguments), under vLLM's chat names."""
        fields: dict[str, Any] = {}
        tools = self.function_tools()
        if tools:
            fields["tools"] = [tool.chat_tool() for tool in tools]
            fields["tool_choice"] = self.chat_tool_choice()
        kwargs = dict(self.chat_template_kwargs or {})
        effort = self.reasoning.effort if self.reasoning is not None else None
        if effort is not None:
            fields["reasoning_effort"] = effort
            kwargs.setdefault("enable_thinking", effort != "none")
        if kwargs:
            fields["chat_template_kwargs"] = kwargs
        if continued:
            fields.update(add_generation_prompt=False, continue_final_message=True)
        return fields

    def chat_input(self, context: list[Item]) -> ChatInput:
        return ChatInput(self.chat_messages(context), self.prompt_fields(continues_final_message(self.input_items())))


class InputTokensRequest(Prompt, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/responses/input_tokens: the prompt alone."""


class ResponsesRequest(Prompt, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=TOP_K_DISABLED, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=2.0)] | None = None
    seed: Seed | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    structured_outputs: StructuredOutputs | None = None
    include_reasoning: bool | None = None
    include: Annotated[list[str], Meta(max_length=len(INCLUDES))] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=MAX_METADATA_KEYS)] | None \
        = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    safety_identifier: Annotated[str, Meta(max_length=256)] | None = None
    store: bool = True
    stream: bool | None = None
    background: bool | None = None
    stream_options: StreamOptions | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=256)] | None = None
    priority: Annotated[int, Meta(ge=-INT32_MAX, le=INT32_MAX)] | None = None
    request_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    cache_salt: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None = None
    # Refused unless they ask for nothing (see server.apis.openai.responses.fields): declared so that they are never
    # ignored.
    max_tool_calls: Any = None
    service_tier: Any = None
    prompt: Any = None
    prompt_cache_retention: Any = None
    enable_response_messages: Any = None
    previous_input_messages: Any = None
    session_id: Any = None
    watermarking: Any = None
    media_io_kwargs: Any = None
    mm_processor_kwargs: Any = None
    mm_payload: Any = None
    return_mm_kwargs: Any = None
    kv_transfer_params: Any = None
    ec_transfer_params: Any = None

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            reason = refusal(RESPONSES_FIELDS, name, getattr(self, name))
            if reason is not None:
                raise InvalidRequest(reason, param=name)
        for index, value in enumerate(self.include or []):
            if value not in INCLUDES:
                raise InvalidRequest(f"unknown include value {value!r}", param=f"include[{index}]")
        if self.background and not self.store:
            raise InvalidRequest("background requires store to be true: a background response is retrieved by id",
                                 param="background")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options requires stream to be true", param="stream_options")
        if self.structured_outputs is not None and self.text is not None and self.text.format is not None:
            raise InvalidRequest("structured_outputs and text.format cannot be used together",
                                 param="structured_outputs")
        if self.text is not None and self.text.format is not None and self.text.format.type == "json_schema" and (
                self.text.format.schema is None or self.text.format.name is None):
            raise InvalidRequest("text.format of type json_schema needs name and schema", param="text.format")
        if self.truncation == "auto" and self.max_output_tokens is None:
            raise InvalidRequest("truncation auto needs max_output_tokens: the prompt keeps its last tokens so that "
                                 "max_output_tokens fits the context", param="truncation")
        if any(not sequence for sequence in ([self.stop] if isinstance(self.stop, str) else self.stop or [])):
            raise InvalidRequest("stop sequences must not be empty strings", param="stop")
        super().__post_init__()

    @property
    def end_user(self) -> str | None:
        return self.safety_identifier or self.user

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS in (self.include or [])

    def chat_input(self, context: list[Item], max_model_len: int | None = None) -> ChatInput:
        """The engine's request; `max_model_len` bounds what truncation auto keeps of the prompt."""
        chat = super().chat_input(context)
        fields = chat.fields
        same = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                "repetition_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "logit_bias",
                "skip_special_tokens", "include_stop_str_in_output", "include_reasoning", "priority", "cache_salt",
                "vllm_xargs", "parallel_tool_calls")
        fields.update({name: getattr(self, name) for name in same if getattr(self, name) is not None})
        if self.max_output_tokens is not None:
            fields["max_tokens"] = self.max_output_tokens
        if self.structured_outputs is not None:
            fields["structured_outputs"] = msgspec.to_builtins(self.structured_outputs)
        text_format = self.text.format if self.text is not None else None
        if text_format is not None and text_format.type == "json_object":
            fields["structured_outputs"] = {"json_object": True}
        elif text_format is not None and text_format.type == "json_schema":
            fields["structured_outputs"] = {"json": text_format.schema}
        if self.wants_logprobs:
            fields.update(logprobs=True, top_logprobs=self.top_logprobs or 0)
        if self.truncation == "auto" and max_model_len is not None and self.max_output_tokens is not None:
            fields.update(truncate_prompt_tokens=max(max_model_len - self.max_output_tokens, 1),
                          truncation_side="left")
        return chat
