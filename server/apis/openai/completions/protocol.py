"""The OpenAI completion request (/v1/completions), as vLLM extends it: one or more prompts (text or token ids), the
generation fields shared with chat, OpenAI's completions logprobs; and its conversion to what the engine takes."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from msgspec import Meta

from engine import CompletionInput
from server.apis.openai.chat_completions.protocol import StreamedGeneration
from server.apis.openai.fields import COMPLETION_FIELDS, Field
from server.apis.openai.sampling import MAX_LIST_ITEMS, MAX_TOP_LOGPROBS, TokenId, TokenIds
from server.exceptions import InvalidRequest

# vLLM's own bound (VLLM_MAX_COMPLETION_PROMPTS is 1024); lower here: every prompt is a generation of its own.
MAX_PROMPTS = 64
# A string, a list of strings, a list of token ids, or a list of lists of token ids (msgspec decodes one list type
# in a union, so the list's items are checked for one kind in __post_init__).
PromptItem = Annotated[str, Meta(min_length=1)] | TokenId | Annotated[TokenIds, Meta(min_length=1)]
Prompts = Annotated[str, Meta(min_length=1)] | Annotated[list[PromptItem], Meta(min_length=1,
                                                                         max_length=MAX_LIST_ITEMS)]
SERVER_ONLY = frozenset({"prompt", "model", "user", "request_id"})


class CompletionRequest(StreamedGeneration, frozen=True, kw_only=True, omit_defaults=True):
    FIELDS: ClassVar[dict[str, Field]] = COMPLETION_FIELDS

    prompt: Prompts
    logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = None
    # Refused (see server.apis.openai.fields): declared so that they are never silently ignored.
    suffix: Any = None
    prompt_embeds: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list):
            kinds = {type(item) for item in self.prompt}
            if len(kinds) != 1:
                raise InvalidRequest("prompt is a string, a list of strings, a list of token ids, or a list of lists "
                                     "of token ids: not a mix", param="prompt")
            if kinds != {int} and len(self.prompt) > MAX_PROMPTS:
                raise InvalidRequest(f"at most {MAX_PROMPTS} prompts in one request", param="prompt")
        super().__post_init__()

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        prompt: Any = self.prompt
        if isinstance(prompt, str) or isinstance(prompt[0], int):
            return [prompt]
        return list(prompt)

    def completion_inputs(self) -> list[CompletionInput]:
        fields = self.engine_fields(SERVER_ONLY)
        return [CompletionInput(prompt, fields) for prompt in self.prompts()]
