"""What CodeFace does with every field of vLLM's request schemas: honoured (with vLLM's semantics) or refused with a
400 that names it. The schemas refuse from this table, docs/api.md's table is this table, and a test checks that
every field of vLLM's own ChatCompletionRequest and CompletionRequest is in it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Support(StrEnum):
    HONOURED = "honoured"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Field:
    support: Support
    note: str = ""
    # For a refused field: the values that ask for nothing (vLLM's defaults), accepted as if absent.
    harmless: tuple[Any, ...] = ()


def honoured(note: str = "") -> Field:
    return Field(Support.HONOURED, note)


def refused(why: str, *harmless: Any) -> Field:
    return Field(Support.REFUSED, why, harmless)


TEXT_ONLY = "this server's models read text only"

# Fields of /v1/chat/completions; vLLM's ChatCompletionRequest names every one.
CHAT_FIELDS: dict[str, Field] = {
    "messages": honoured("roles system, developer, user, assistant (with tool_calls), tool, function; text parts"),
    "model": honoured("the served model's name; any other is a 404"),
    "frequency_penalty": honoured(),
    "presence_penalty": honoured(),
    "repetition_penalty": honoured(),
    "temperature": honoured("default: the profile, else the model's generation_config.json, else 1.0"),
    "top_p": honoured("default as temperature"),
    "top_k": honoured("-1 or 0: off"),
    "min_p": honoured(),
    "seed": honoured(),
    "n": honoured("at most 16"),
    "max_tokens": honoured("default: the room left in the context"),
    "max_completion_tokens": honoured("wins over max_tokens"),
    "min_tokens": honoured(),
    "stop": honoured("at most 16 strings"),
    "stop_token_ids": honoured(),
    "include_stop_str_in_output": honoured(),
    "ignore_eos": honoured(),
    "logit_bias": honoured("token id -> bias in [-100, 100]; unknown ids are a 400"),
    "allowed_token_ids": honoured(),
    "bad_words": honoured(),
    "logprobs": honoured(),
    "top_logprobs": honoured("at most 20"),
    "prompt_logprobs": honoured("non-stream only (as vllm serve)"),
    "skip_special_tokens": honoured(),
    "spaces_between_special_tokens": honoured(),
    "truncate_prompt_tokens": honoured("keeps the last N prompt tokens"),
    "truncation_side": honoured(),
    "response_format": honoured("text, json_object, json_schema (strict), structural_tag"),
    "structured_outputs": honoured("json, regex, choice, grammar, json_object, structural_tag"),
    "tools": honoured("functions"),
    "tool_choice": honoured("none, auto (needs tool_call_parser in the profile), required, a named function"),
    "parallel_tool_calls": honoured(),
    "stream": honoured(),
    "stream_options": honoured("include_usage, continuous_usage_stats"),
    "echo": honoured("prepends the last message when the reply continues it"),
    "add_generation_prompt": honoured(),
    "continue_final_message": honoured("needs add_generation_prompt false"),
    "add_special_tokens": honoured(),
    "documents": honoured("passed to the chat template"),
    "chat_template_kwargs": honoured("passed to the chat template"),
    "reasoning_effort": honoured("passed to the chat template, as vllm serve does"),
    "include_reasoning": honoured("with a reasoning_parser in the profile"),
    "thinking_token_budget": honoured("needs a reasoning_parser; else a 400"),
    "priority": honoured("needs scheduling_policy: priority; with fairness on, acts within the caller's share"),
    "request_id": honoured("becomes the completion id, as X-Request-ID does"),
    "cache_salt": honoured("isolates the prefix cache"),
    "user": honoured("the end user's id: written to the access log"),
    "return_token_ids": honoured(),
    "return_tokens_as_token_ids": honoured(),
    "vllm_xargs": honoured("passed to vLLM as extra_args"),
    "repetition_detection": honoured(),
    "stream_interval": honoured(),
    "use_beam_search": refused("beam search is not served; use n with sampling", False),
    "length_penalty": refused("applies to beam search only, which is not served", 1.0),
    "watermarking": refused("no watermarking is configured", False),
    "chat_template": refused("a client's chat template is refused (arbitrary Jinja); set chat_template in the profile"),
    "media_io_kwargs": refused(TEXT_ONLY),
    "mm_processor_kwargs": refused(TEXT_ONLY),
    "mm_payload": refused(TEXT_ONLY, "tensors"),
    "return_mm_kwargs": refused(TEXT_ONLY),
    "kv_transfer_params": refused("no disaggregated prefill is configured"),
    "ec_transfer_params": refused("no disaggregated encoding is configured"),
    "session_id": refused("streaming-input sessions are not served"),
    "routed_experts_prompt_start": refused("expert-routing capture is not served", 0),
    "return_token_offsets": refused("token offsets are returned by render endpoints only", False),
    "return_prompt_text": refused("not served; POST /tokenize returns the rendered prompt's tokens", False),
    "logprob_token_ids": refused("logprobs of chosen token ids are not served; use logprobs/top_logprobs"),
}
# Fields of OpenAI's chat API that vLLM's model lacks and that clients send: accepted, as the table says.
CHAT_OPENAI_ONLY: dict[str, Field] = {
    "prompt_cache_key": honoured("accepted, no effect in the server (the tenant's prefix cache is shared); "
                                 "deploy/haproxy.cfg routes on it, for prefix-cache affinity across replicas"),
}
CHAT_FIELDS.update(CHAT_OPENAI_ONLY)

# Fields of /v1/completions beyond the chat ones they share (vLLM's CompletionRequest).
COMPLETION_FIELDS: dict[str, Field] = {
    **{name: field for name, field in CHAT_FIELDS.items() if name not in {
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
        "add_generation_prompt", "continue_final_message", "documents", "chat_template", "chat_template_kwargs",
        "reasoning_effort", "include_reasoning", "media_io_kwargs", "mm_processor_kwargs", "return_prompt_text",
        *CHAT_OPENAI_ONLY}},
    "prompt": honoured("a string, a list of strings, token ids, or lists of token ids"),
    "logprobs": honoured("an integer: top logprobs per token, OpenAI's completions format"),
    "echo": honoured("the prompt before the completion"),
    "max_tokens": honoured("default 16, as OpenAI and vLLM"),
    "suffix": refused("no fill-in-the-middle rendering is configured for this model"),
    "prompt_embeds": refused("prompt embeddings are not served"),
}


def refusal(fields: dict[str, Field], name: str, value: Any) -> str | None:
    """The reason `value` for `name` is refused, or None when it is honoured (or asks for nothing)."""
    field = fields.get(name)
    if field is None or field.support != Support.REFUSED or value is None or value in field.harmless:
        return None
    return f"{name} is not supported: {field.note}"


def markdown_table(fields: dict[str, Field]) -> str:
    """docs/api.md's table (a test keeps the page equal to it): `python -m server.apis.openai.fields` prints it."""
    rows = ["| field | support | notes |", "|---|---|---|"]
    rows += [f"| `{name}` | {field.support} | {field.note} |" for name, field in sorted(fields.items())]
    return "\n".join(rows)


if __name__ == "__main__":
    print("### /v1/chat/completions\n")
    print(markdown_table(CHAT_FIELDS))
    print("\n### /v1/completions (fields it does not share with chat)\n")
    print(markdown_table({name: field for name, field in COMPLETION_FIELDS.items()
                          if CHAT_FIELDS.get(name) != field}))
