"""The one set of generation fields (sampling, constraints, output options), with their bounds and cross-field
checks, shared by /v1/chat/completions, /v1/completions and the conversation routes. Fields keep vLLM's names, so
`engine_fields` hands them to the engine as they are; `null` means "not set" for every one of them."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from server.apis.decode import INT32_MAX, Count, PositiveInt, Seed
from server.apis.openai.fields import CHAT_FIELDS, Field, refusal
from server.exceptions import InvalidRequest

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenId = Annotated[int, Meta(ge=0, le=INT32_MAX)]

MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
MAX_LIST_ITEMS = 4096
# vLLM's top_k: -1 (or 0) means "no top-k".
TOP_K_DISABLED = -1
TokenIds = Annotated[list[TokenId], Meta(max_length=MAX_LIST_ITEMS)]


class JsonSchemaFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    # structural_tag's own fields (format, or the legacy structures/triggers): checked by vLLM.
    format: Any = None
    structures: Any = None
    triggers: Any = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequest("response_format of type json_schema needs a json_schema object",
                                 param="response_format.json_schema")


class StructuredOutputs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: Annotated[list[str], Meta(min_length=1, max_length=MAX_LIST_ITEMS)] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequest("structured_outputs takes exactly one of json, regex, choice, grammar, json_object "
                                 "and structural_tag", param="structured_outputs")


class GenerationFields(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every field here is passed to the engine under its own name when set (see engine.ChatInput)."""

    # Which table says what a field's support is: subclasses for other endpoints replace it.
    FIELDS: ClassVar[dict[str, Field]] = CHAT_FIELDS

    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=TOP_K_DISABLED, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    seed: Seed | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=2.0)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    stop_token_ids: TokenIds | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    min_tokens: Count | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]],
                          Meta(max_length=MAX_LIST_ITEMS)] | None = None
    allowed_token_ids: TokenIds | None = None
    bad_words: Annotated[list[str], Meta(max_length=MAX_LIST_ITEMS)] | None = None
    prompt_logprobs: Annotated[int, Meta(ge=-1, le=MAX_TOP_LOGPROBS)] | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    add_special_tokens: bool | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    priority: Annotated[int, Meta(ge=-INT32_MAX, le=INT32_MAX)] | None = None
    cache_salt: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    thinking_token_budget: Count | None = None
    vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None = None
    repetition_detection: dict[str, Any] | None = None
    stream_interval: PositiveInt | None = None
    # Refused unless they ask for nothing (see server.apis.openai.fields): declared so that they are never ignored.
    use_beam_search: Any = None
    length_penalty: Any = None
    watermarking: Any = None
    mm_payload: Any = None
    return_mm_kwargs: Any = None
    kv_transfer_params: Any = None
    ec_transfer_params: Any = None
    session_id: Any = None
    routed_experts_prompt_start: Any = None
    return_token_offsets: Any = None
    logprob_token_ids: Any = None

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            reason = refusal(self.FIELDS, name, getattr(self, name))
            if reason is not None:
                raise InvalidRequest(reason, param=name)
        if any(not sequence for sequence in self.stop_sequences):
            raise InvalidRequest("stop sequences must not be empty strings", param="stop")

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def engine_fields(self, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The set fields, under vLLM's names, as plain JSON values (engine.ChatInput.fields)."""
        values: dict[str, Any] = msgspec.to_builtins(self)
        return {name: value for name, value in values.items() if name not in exclude}
