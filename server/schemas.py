"""Request schemas for the OpenAI-compatible API, validated by msgspec (types and ranges in one pass)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from server.errors import APIError

T = TypeVar("T")
_PATH_IN_ERROR = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")

Role = Literal["system", "developer", "user", "assistant"]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
# Bounds that the engine's wire format (int64 seeds) and the database (32-bit integers) can hold: anything
# larger is a 400 here instead of an error deep in vLLM or the database.
INT32_MAX = 2**31 - 1
PositiveInt = Annotated[int, Meta(ge=1, le=INT32_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]

MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, frozen=True):
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Seed | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES)] = 1
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extensions, which load generators (vllm bench serve among them) send.
    ignore_eos: bool = False
    top_k: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    min_tokens: Count = 0
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=2.0)] | None = None


def decode_body(body: bytes, schema: type[T], *, empty_means: bytes | None = b"{}") -> T:
    """Decode and validate a JSON body; every failure is a 400 naming the offending field as `param`.

    `empty_means`: what an empty body stands for (an object of defaults), or None to refuse it.
    """
    if not body.strip():
        if empty_means is None:
            raise APIError(400, "the request body is empty; send a JSON object")
        body = empty_means
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_IN_ERROR.search(message)
        raise APIError(400, message, param=match.group("path") if match else None) from None
    except msgspec.DecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    return decode_body(body, ChatCompletionRequest, empty_means=None)

