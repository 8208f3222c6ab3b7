"""Completion requests (/v1/completions) through vLLM's own machinery: its CompletionRequest schema and sampling
conversion, and its renderer for text or token-id prompts. One prompt per prepared request."""

from __future__ import annotations

from typing import Any

from engine.chat import ChatPreparer, PreparedRequest
from engine.errors import Stage, vllm_errors
from engine.output import OutputShaper
from engine.types import CompletionInput, Prompt, ToolChoice


class CompletionPreparer:
    def __init__(self, llm: Any, chat: ChatPreparer) -> None:
        self.llm = llm
        self.chat = chat  # shares the model config, renderer, defaults and the output budget

    async def prepare(self, completion: CompletionInput, request_id: str) -> PreparedRequest:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        chat = self.chat
        with vllm_errors(Stage.COMPLETION_SCHEMA):
            vreq = CompletionRequest.model_validate({"prompt": completion.prompt, **completion.fields})
        chat.check_priority(vreq.priority)
        with vllm_errors(Stage.PARAMS):  # e.g. truncate_prompt_tokens past the context
            tok_params = vreq.build_tok_params(chat.model_config)
        extras = {"cache_salt": vreq.cache_salt} if vreq.cache_salt else None
        with vllm_errors(Stage.PROMPT):
            (engine_input,) = await chat.renderer.render_cmpl_async(
                [parse_model_prompt(chat.model_config, completion.prompt)], tok_params, prompt_extras=extras)
        prompt = Prompt(list(engine_input["prompt_token_ids"]), engine_input.get("prompt"))
        max_tokens = chat.output_budget(prompt, completion.fields.get("max_tokens", vreq.max_tokens))
        with vllm_errors(Stage.PARAMS):
            params = vreq.to_sampling_params(max_tokens, chat.default_sampling)
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.DELTA
        echo = None
        if vreq.echo:
            echo = prompt.text if prompt.text is not None else chat.tokenizer.decode(prompt.token_ids)
        shaper = OutputShaper(params.n, params.logprobs, prompt.token_ids, None, ToolChoice.NONE, None,
                              tokens_as_ids=bool(vreq.return_tokens_as_token_ids),
                              with_token_ids=bool(vreq.return_token_ids))
        return PreparedRequest(request_id, prompt, params.n, max_tokens, params.logprobs, vreq.priority, echo,
                               ToolChoice.NONE, engine_input, params, shaper, {"priority": vreq.priority})
