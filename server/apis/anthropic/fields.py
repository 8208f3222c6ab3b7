"""What CodeFace does with every field of Anthropic's Messages request, as vLLM's AnthropicMessagesRequest declares
them: honoured or refused with a 400 naming it (a test checks that every field of vLLM's installed model is here,
and docs/anthropic.md carries this table). A field in neither is a 400 naming it too."""

from __future__ import annotations

from server.apis.openai.fields import TEXT_ONLY, Field, honoured, markdown_table, refused

MESSAGES_FIELDS: dict[str, Field] = {
    "model": honoured("required; the served model's name, any other is a 404"),
    "messages": honoured("roles user and assistant (and system, as vllm serve takes it); blocks text, tool_use, "
                         "tool_result, thinking and redacted_thinking; image and document blocks are a 400"),
    "max_tokens": honoured("required, at least 1"),
    "system": honoured("a string or text blocks"),
    "metadata": honoured("user_id: the end user's id, written to the access log"),
    "stop_sequences": honoured("at most 16; the matched one is returned as stop_sequence"),
    "stream": honoured("Anthropic's events, with ping while the request waits in the queue"),
    "temperature": honoured("0 to 2 (vLLM's range); default: the profile, else the model's generation_config"),
    "top_p": honoured(),
    "top_k": honoured("-1 or 0: off"),
    "tools": honoured("client tools: name, description, input_schema, strict; defer_loading is a 400"),
    "tool_choice": honoured("auto (needs tool_call_parser in the profile), any, tool, none; "
                            "disable_parallel_tool_use"),
    "thinking": honoured("needs a reasoning_parser in the profile, else a 400; enabled: thinking_token_budget = "
                         "budget_tokens; disabled: reasoning_effort none; adaptive: nothing pinned"),
    "output_config": honoured("format json_schema (constrained output); effort: reasoning_effort for the template"),
    "cache_salt": honoured("isolates the prefix cache (vLLM's extension)"),
    "chat_template_kwargs": honoured("passed to the chat template (vLLM's extension)"),
    "vllm_xargs": honoured("passed to vLLM as extra_args"),
    "mm_payload": refused(TEXT_ONLY, "tensors"),
    "return_mm_kwargs": refused(TEXT_ONLY),
    "watermarking": refused("no watermarking is configured", False),
    "kv_transfer_params": refused("no disaggregated prefill is configured"),
    "ec_transfer_params": refused("no disaggregated encoding is configured"),
}
# Fields of Anthropic's API that vLLM's model lacks and that clients send unasked: accepted, as the table says.
ANTHROPIC_ONLY: dict[str, Field] = {
    "cache_control": honoured("accepted, no effect: vLLM's prefix cache is automatic"),
}
MESSAGES_FIELDS.update(ANTHROPIC_ONLY)


if __name__ == "__main__":
    print(markdown_table(MESSAGES_FIELDS))
