"""Turns vLLM's RequestOutputs into plain StepOutputs: text, token counts, logprobs, and, when the request uses
tools or the model has a reasoning parser, what vLLM's parsers make of each delta (content, reasoning, tool calls)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from engine.types import ChoiceDelta, FinishReason, StepOutput, TokenLogprob, ToolCallDelta, ToolChoice

STOP: FinishReason = "stop"
TOOL_CALLS: FinishReason = "tool_calls"

ParserFactory = Callable[[int], Any]


def choice_parsers_factory(parser_cls: Any, tokenizer: Any, vreq: Any, model_config: Any) -> ParserFactory | None:
    """One parser per choice (vLLM's parsers keep stream state), made on demand; None when nothing needs parsing."""
    if parser_cls is None:
        return None

    def make(_index: int) -> Any:
        return parser_cls(tokenizer, vreq.tools, model_config=model_config,
                          chat_template_kwargs=vreq.chat_template_kwargs)

    return make


class OutputShaper:
    def __init__(self, n: int, top_logprobs: int | None, prompt_token_ids: list[int],
                 parsers: ParserFactory | None, tool_choice: ToolChoice, vreq: Any, *, tokens_as_ids: bool = False,
                 with_token_ids: bool = False) -> None:
        self.top_logprobs = top_logprobs
        self.prompt_token_ids = prompt_token_ids
        self.tool_choice = tool_choice
        self.vreq = vreq
        self.tokens_as_ids = tokens_as_ids
        self.with_token_ids = with_token_ids
        self.single_tool_call = vreq is not None and vreq.parallel_tool_calls is False
        self._parsers = [parsers(index) for index in range(n)] if parsers is not None else None
        self._tools_streamed = [False] * n
        self._first = True

    def shape(self, output: Any) -> StepOutput:
        step = StepOutput([self._choice(choice) for choice in output.outputs])
        if self._first:
            self._first = False
            step.cached_tokens = output.num_cached_tokens
            stats = output.metrics  # vLLM's RequestStateStats: engine-core monotonic timestamps
            if stats is not None and stats.scheduled_ts:
                step.queue_time_s = max(0.0, stats.scheduled_ts - stats.queued_ts)
            if output.prompt_logprobs is not None:
                step.prompt_logprobs = prompt_logprobs(output.prompt_logprobs)
        return step

    def _choice(self, choice: Any) -> ChoiceDelta:
        token_ids = choice.token_ids
        delta = ChoiceDelta(
            index=choice.index,
            text=choice.text,
            num_tokens=len(token_ids),
            finish_reason=choice.finish_reason,
            logprobs=(sampled_logprobs(token_ids, choice.logprobs, self.top_logprobs or 0, self.tokens_as_ids)
                      if self.top_logprobs is not None else None),
            token_ids=list(token_ids) if self.with_token_ids else None,
            stop_reason=choice.stop_reason,
        )
        if self._parsers is None:
            delta.content = choice.text
            return delta
        parsed = self._parsers[choice.index].parse_delta(choice.text, list(token_ids), self.vreq,
                                                         self.prompt_token_ids,
                                                         finished=choice.finish_reason is not None)
        if parsed is not None:
            delta.content = parsed.content
            delta.reasoning = parsed.reasoning
            delta.tool_calls = [
                ToolCallDelta(call.index, call.id, call.function.name if call.function else None,
                              call.function.arguments if call.function else None)
                for call in parsed.tool_calls or ()
                if not (self.single_tool_call and call.index > 0)
            ]
        if delta.tool_calls:
            self._tools_streamed[choice.index] = True
        delta.finish_reason = self._finish_reason(choice.index, choice.finish_reason)
        return delta

    def _finish_reason(self, index: int, engine_reason: FinishReason | None) -> FinishReason | None:
        # vllm serve's rule: a choice that streamed a tool call and stopped by itself ends with "tool_calls",
        # except under a named tool_choice, which ends with the engine's reason.
        if engine_reason == STOP and self._tools_streamed[index] and self.tool_choice != ToolChoice.NAMED:
            return TOOL_CALLS
        return engine_reason


def sampled_logprobs(token_ids: Sequence[int], positions: Any, top_n: int, tokens_as_ids: bool
                     ) -> list[TokenLogprob]:
    def name(token_id: int, decoded: str | None) -> str:
        return f"token_id:{token_id}" if tokens_as_ids else decoded or ""

    result: list[TokenLogprob] = []
    for token_id, candidates in zip(token_ids, positions or ()):
        chosen = candidates[token_id]
        ranked = sorted(candidates.items(), key=lambda item: item[1].rank if item[1].rank is not None else math.inf)
        result.append(TokenLogprob(
            token=name(token_id, chosen.decoded_token),
            logprob=chosen.logprob,
            top=[(name(tid, lp.decoded_token), lp.logprob) for tid, lp in ranked[:top_n]],
        ))
    return result


def prompt_logprobs(positions: Any) -> list[dict[str, Any] | None]:
    """vLLM's response shape: per prompt position, token id -> {logprob, rank, decoded_token} (None first)."""
    return [None if candidates is None else
            {str(token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
             for token_id, lp in candidates.items()}
            for candidates in positions]
