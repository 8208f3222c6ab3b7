"""FakeEngine: a named test double (a fake) for the fast tier. It implements the server's EngineClient protocol, as
ChatEngine does over vLLM, without vLLM (it does not subclass ChatEngine: nothing of the real engine runs), so that
the HTTP layer (routes, schemas, errors, SSE framing, history trimming, the reply registry) can be tested in
seconds. Its "model": a chat template that tags each message with its role, one token per character of the
prompt, and a reply of numbered words, one word per token. It reads the fields a request hands the engine
(max_tokens, n, stop, ignore_eos, logprobs) and records every request it prepared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from engine import (
    Adapter,
    AdapterLoadError,
    ChatInput,
    CompletionInput,
    EngineClient,
    GenerationFailedError,
    PreparedRequest,
    Prompt,
    PromptTooLongError,
    StepOutput,
    ToolChoice,
)
from engine.output import OutputShaper
from engine.types import (
    ChatTemplateError,
    ChoiceDelta,
    EngineStats,
    FinishReason,
    InvalidRequestError,
    TokenLogprob,
)

FAKE_MODEL = "fake-model"
FAKE_MODEL_PATH = "/fake"
# One token per character: its code point, below this.
FAKE_VOCABULARY = 0x110000
# A message with this content makes the fake template refuse the chat, as strict templates refuse some orders.
TEMPLATE_REFUSES = "<refuse>"
# A prompt that ends with this makes the fake engine fail after one token, as a failing engine does.
ENGINE_FAILS = "<fail>"
# Without ignore_eos the fake model "ends its sentence" after this many words.
SENTENCE_WORDS = 12
# An adapter folder whose name starts with this fails to load, as a folder without an adapter does.
FAKE_BAD_ADAPTER = "bad"


class FakeEngine:
    """A fake EngineClient (see the module's docstring): records what it prepared and what it was asked to abort."""

    def __init__(self, max_model_len: int = 2048, token_delay_s: float = 0.0) -> None:
        self.max_model_len = max_model_len
        self.reasoning_parser: str | None = None
        self.token_delay_s = token_delay_s
        self.in_flight = 0
        self.prepared: list[tuple[Prompt, dict[str, Any]]] = []
        self.aborted: list[str] = []
        self.lora_enabled = True
        self.adapters: dict[str, Adapter] = {}

    @property
    def model_name(self) -> str:
        return FAKE_MODEL

    @property
    def model_path(self) -> str:
        return FAKE_MODEL_PATH

    @property
    def is_running(self) -> bool:
        return True

    @property
    def fingerprint(self) -> str:
        return "fp_fake"

    @property
    def vllm_version(self) -> str:
        return "fake"

    def load_backend(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def check_health(self) -> bool:
        return True

    @property
    def requests_in_flight(self) -> int:
        return self.in_flight

    def stats(self) -> EngineStats:
        return EngineStats(requests_in_flight=self.in_flight, running=self.in_flight, waiting=0)

    def on_decode_step(self, observer: Callable[[int, float, bool], None]) -> None:
        self.decode_observer = observer  # never called: the fake's steps feed the estimator at each finish only

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return [ord(c) for c in text]

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [chr(t) for t in token_ids]

    async def detokenize(self, token_ids: list[int]) -> str:
        if any(not 0 <= t < FAKE_VOCABULARY for t in token_ids):
            raise InvalidRequestError(f"token ids must be below the vocabulary size {FAKE_VOCABULARY}", "tokens")
        return "".join(chr(t) for t in token_ids)

    async def abort(self, request_id: str) -> None:
        """Recorded only: the fake's streams are short, and a consumer that stops reading closes them."""
        self.aborted.append(request_id)

    async def add_adapter(self, adapter: Adapter) -> None:
        """Any folder whose name does not start with FAKE_BAD_ADAPTER "loads" (the fake reads nothing)."""
        if not self.lora_enabled:
            raise AdapterLoadError("LoRA adapters need enable_lora: true in the server's profile")
        if adapter.path.rstrip("/").rsplit("/", 1)[-1].startswith(FAKE_BAD_ADAPTER):
            raise AdapterLoadError(f"No adapter found for {adapter.path}")
        self.adapters[adapter.name] = adapter

    async def remove_adapter(self, adapter: Adapter) -> None:
        self.adapters.pop(adapter.name, None)

    async def render(self, chat: ChatInput) -> Prompt:
        if any(m.get("content") == TEMPLATE_REFUSES for m in chat.messages):
            raise ChatTemplateError("the model's chat template rejected these messages: refused", "messages")
        # Strict, as Mistral's and Gemma's templates are: roles must alternate.
        if any(a["role"] == b["role"] == "user" for a, b in zip(chat.messages, chat.messages[1:])):
            raise ChatTemplateError("the model's chat template rejected these messages: two user turns", "messages")
        text = "".join(f"<{m['role']}>{m.get('content') or ''}\n" for m in chat.messages) + "<assistant>"
        return Prompt(token_ids=[ord(c) for c in text], text=text)

    async def prepare_chat(self, chat: ChatInput, request_id: str) -> PreparedRequest:
        return self._prepare(await self.render(chat), chat.fields, request_id)

    async def prepare_completion(self, completion: CompletionInput, request_id: str) -> PreparedRequest:
        prompt = completion.prompt
        text = prompt if isinstance(prompt, str) else "".join(chr(t) for t in prompt)
        return self._prepare(Prompt([ord(c) for c in text], text), {"max_tokens": 16, **completion.fields},
                             request_id)

    def _prepare(self, prompt: Prompt, fields: dict[str, Any], request_id: str) -> PreparedRequest:
        room = self.max_model_len - prompt.num_tokens
        requested = fields.get("max_completion_tokens") or fields.get("max_tokens")
        if room <= 0 or (requested is not None and requested > room):
            raise PromptTooLongError(f"the prompt ({prompt.num_tokens} tokens) does not fit this model's context "
                                     f"of {self.max_model_len} tokens")
        self.prepared.append((prompt, fields))
        logprobs = fields.get("top_logprobs", 0) if fields.get("logprobs") else None
        if isinstance(fields.get("logprobs"), int) and not isinstance(fields.get("logprobs"), bool):
            logprobs = fields["logprobs"]
        n = fields.get("n", 1)
        # The fake's "params" are the fields themselves; its shaper is never used (it makes StepOutputs directly).
        shaper = OutputShaper(n, logprobs, prompt.token_ids, None, ToolChoice.NONE, None)
        return PreparedRequest(request_id, prompt, n, requested or room, logprobs, fields.get("priority", 0), None,
                               ToolChoice.NONE, None, fields, shaper, {})

    async def submit(self, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        return self._stream(prepared)

    async def _stream(self, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        fields: dict[str, Any] = prepared.params
        stop = fields.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        # An adapter's "model" says its name before each word: a test sees which model answered.
        adapter = f"{prepared.adapter.name}:" if prepared.adapter is not None else ""
        self.in_flight += 1
        try:
            texts = ["" for _ in range(prepared.n)]
            length = prepared.max_tokens if fields.get("ignore_eos") else min(prepared.max_tokens, SENTENCE_WORDS)
            fails = prepared.prompt.text is not None and ENGINE_FAILS in prepared.prompt.text.rsplit("<user>", 1)[-1]
            for position in range(length):
                await asyncio.sleep(self.token_delay_s)
                if fails and position == 1:
                    raise GenerationFailedError("generation failed: injected")
                choices = []
                for index in range(prepared.n):
                    word = adapter + f"w{position}" + (f"c{index}" if index else "") + " "
                    texts[index] += word
                    hit = next((s for s in stop if s in texts[index]), None)
                    last = position == length - 1
                    finish: FinishReason | None = ("stop" if hit or (last and length < prepared.max_tokens)
                                                   else ("length" if last else None))
                    if hit:
                        word = word[:word.index(hit)] if hit in word else ""
                    logprobs = ([TokenLogprob(word, -0.5, [(word, -0.5)] * (prepared.logprobs or 0))]
                                if prepared.logprobs is not None else None)
                    choices.append(ChoiceDelta(index, word, 1, finish, logprobs, content=word))
                yield StepOutput(choices, cached_tokens=0 if position == 0 else None)
                if any(c.finish_reason == "stop" for c in choices) and prepared.n == 1:
                    return
        finally:
            self.in_flight -= 1


if TYPE_CHECKING:
    _implements: type[EngineClient] = FakeEngine  # mypy proves the fake is an EngineClient
