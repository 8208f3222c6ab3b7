"""The JSON bodies the server answers with, as msgspec types: what /openapi.json describes, and what the API fuzzing
test checks every response against."""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: int
    param: str | None
    path: str


class ErrorEnvelope(msgspec.Struct):
    """Every error on the OpenAI routes: what the openai SDK reads."""

    error: ErrorDetail


class SeedErrorEnvelope(msgspec.Struct):
    """Every error under /api/v1/: the seed's fields at the top level, beside the OpenAI envelope."""

    code: int
    message: str
    path: str
    type: str
    param: str | None
    error: ErrorDetail


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob]


class FunctionCallOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str | None
    type: str
    function: FunctionCallOut


class AssistantMessage(msgspec.Struct):
    role: str
    content: str | None
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str
    token_ids: list[int] | None = None


class ChatCompletion(msgspec.Struct):
    """A non-streamed chat completion. Streamed (stream: true), the answer is text/event-stream:
    chat.completion.chunk events, then `data: [DONE]`."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[dict[str, Any] | None] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionLogprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str


class Completion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelPermission(msgspec.Struct):
    id: str
    object: str
    created: int
    allow_create_engine: bool
    allow_sampling: bool
    allow_logprobs: bool
    allow_search_indices: bool
    allow_view: bool
    allow_fine_tuning: bool
    organization: str
    group: str | None
    is_blocking: bool


class ModelCard(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int
    permission: list[ModelPermission]


class ModelList(msgspec.Struct):
    object: str
    data: list[ModelCard]


class TokenizeResponse(msgspec.Struct):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(msgspec.Struct):
    prompt: str


class Status(msgspec.Struct):
    status: str


class EngineStatsOut(msgspec.Struct):
    requests_in_flight: int
    running: int | None
    waiting: int | None
    kv_cache_usage: float | None
    prefix_cache_hit_rate: float | None


class Ready(msgspec.Struct):
    status: str
    model: str
    engine: EngineStatsOut


class Version(msgspec.Struct):
    version: str
    vllm_version: str


class ConversationView(msgspec.Struct):
    id: str
    title: str
    model: str | None
    created_at: str
    updated_at: str


class ConversationPage(msgspec.Struct):
    object: str
    data: list[ConversationView]
    next_cursor: str | None


class MessageView(msgspec.Struct):
    id: str
    seq: int
    role: str
    content: str
    status: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    created_at: str


class ConversationWithMessages(msgspec.Struct):
    id: str
    title: str
    model: str | None
    created_at: str
    updated_at: str
    messages: list[MessageView]
    next_after_seq: int | None


class ReplyResult(msgspec.Struct):
    """A non-streamed reply, stored: with stream: true the answer is text/event-stream instead."""

    conversation_id: str
    user_message: MessageView
    message: MessageView
    reply: str
    dropped_turns: int


class KeyView(msgspec.Struct):
    id: str
    name: str
    prefix: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_streams: int | None
    weight: int | None
    models: list[str] | None


class KeyCreated(KeyView):
    key: str


class KeyList(msgspec.Struct):
    object: str
    data: list[KeyView]


class UserView(msgspec.Struct):
    id: str
    username: str
    is_admin: bool
    models: list[str] | None


class AdapterView(msgspec.Struct):
    """A LoRA adapter served under its own model name; `source`: profile (declared there) or runtime (loaded
    through the API, recorded in the database)."""

    name: str
    path: str
    parent: str
    source: str


class AdapterList(msgspec.Struct):
    object: str
    data: list[AdapterView]


class AccessToken(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int


class PasswordGrant(msgspec.Struct):
    """The token route's form (application/x-www-form-urlencoded)."""

    username: str
    password: str
    grant_type: str = "password"
