"""FakeEngine: a named test double for the fast tier. It stands in for vLLM behind ChatEngine's interface so that
the HTTP layer (routes, schemas, errors, SSE framing, history trimming, the reply registry) can be tested in
seconds. Its "model": a chat template that tags each message with its role, one token per character of the
prompt, and a reply of numbered words, one word per token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from engine import ChatEngine, EngineConfig, Prompt, SamplingOptions, StepOutput
from engine.types import ChatTemplateError, ChoiceDelta, EngineStats, TokenLogprob

FAKE_MODEL = "fake-model"
# A message with this content makes the fake template refuse the chat, as strict templates refuse some orders.
TEMPLATE_REFUSES = "<refuse>"


class FakeEngine(ChatEngine):
    def __init__(self, max_model_len: int = 2048, token_delay_s: float = 0.0) -> None:
        super().__init__(EngineConfig(model="/fake", served_model_name=FAKE_MODEL, max_model_len=max_model_len))
        self.token_delay_s = token_delay_s
        self.in_flight = 0
        self.requests: list[tuple[Prompt, SamplingOptions]] = []

    @property
    def is_running(self) -> bool:
        return True

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

    async def render(self, messages: Sequence[dict[str, str]]) -> Prompt:
        if any(m["content"] == TEMPLATE_REFUSES for m in messages):
            raise ChatTemplateError("the model's chat template rejected these messages: refused")
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return Prompt(token_ids=[ord(c) for c in text], text=text)

    def generate(self, prompt: Prompt, options: SamplingOptions, request_id: str) -> AsyncIterator[StepOutput]:
        budget = self.output_budget(prompt, options.max_tokens)
        self.requests.append((prompt, options))
        return self._stream(budget, options)

    async def _stream(self, budget: int, options: SamplingOptions) -> AsyncIterator[StepOutput]:
        self.in_flight += 1
        try:
            texts = ["" for _ in range(options.n)]
            # Without ignore_eos the fake model "ends its sentence" after 12 words.
            length = budget if options.ignore_eos else min(budget, 12)
            for position in range(length):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                else:
                    await asyncio.sleep(0)
                choices = []
                for index in range(options.n):
                    word = f"w{position}" + (f"c{index}" if index else "") + " "
                    texts[index] += word
                    stop = next((s for s in options.stop if s in texts[index]), None)
                    last = position == length - 1
                    finish = "stop" if stop or (last and length < budget) else ("length" if last else None)
                    if stop:
                        word = word[:word.index(stop)] if stop in word else ""
                    logprobs = ([TokenLogprob(word, -0.5, [(word, -0.5)] * (options.logprobs or 0))]
                                if options.logprobs is not None else None)
                    choices.append(ChoiceDelta(index, word, 1, finish, logprobs))
                yield StepOutput(choices)
                if any(c.finish_reason == "stop" for c in choices) and options.n == 1:
                    return
        finally:
            self.in_flight -= 1
