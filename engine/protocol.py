"""EngineClient: what the server needs of an engine, as a protocol (as vLLM's serving layer is coded against its
own EngineClient). ChatEngine implements it over vLLM; the fast tests' FakeEngine implements it without vLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from engine.chat import PreparedRequest
from engine.types import Adapter, ChatInput, CompletionInput, EngineStats, Prompt, StepOutput


class EngineClient(Protocol):
    """Lifecycle, identity, tokenizing, and the two steps of a generation: prepare (every refusal happens there:
    InvalidRequestError, ChatTemplateError, PromptTooLongError), then submit and stream the steps."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_path(self) -> str:
        """The model's folder (the /v1/models card's root)."""
        ...

    @property
    def reasoning_parser(self) -> str | None:
        """vLLM's reasoning parser of the profile, if any (a dialect's thinking options need one)."""
        ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def vllm_version(self) -> str: ...

    @property
    def requests_in_flight(self) -> int: ...

    def load_backend(self) -> None: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def check_health(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def on_decode_step(self, observer: Callable[[int, float, bool], None]) -> None:
        """`observer(sequences, seconds per output token, prefilled)` after each engine step that decoded
        (engine.stats)."""
        ...

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]: ...

    def token_strings(self, token_ids: list[int]) -> list[str]: ...

    async def detokenize(self, token_ids: list[int]) -> str: ...

    async def render(self, chat: ChatInput) -> Prompt: ...

    async def prepare_chat(self, chat: ChatInput, request_id: str) -> PreparedRequest: ...

    async def prepare_completion(self, completion: CompletionInput, request_id: str) -> PreparedRequest: ...

    async def submit(self, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        """The request's steps; closing the stream early aborts the request in the engine."""
        ...

    async def abort(self, request_id: str) -> None: ...

    @property
    def lora_enabled(self) -> bool: ...

    async def add_adapter(self, adapter: Adapter) -> None:
        """Load a LoRA adapter; AdapterLoadError says why the engine refused it."""
        ...

    async def remove_adapter(self, adapter: Adapter) -> None: ...
