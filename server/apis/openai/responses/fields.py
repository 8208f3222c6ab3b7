"""What CodeFace does with every field of OpenAI's Responses request, as vLLM's ResponsesRequest declares them, and
with the fields of OpenAI's API that vLLM's model lacks: honoured or refused with a 400 naming it (a test checks that
every field of vLLM's installed model is here, and docs/responses.md carries this table). Any other field is a 400
naming it too."""

from __future__ import annotations

from server.apis.openai.fields import TEXT_ONLY, Field, honoured, markdown_table, refused

RESPONSES_FIELDS: dict[str, Field] = {
    "model": honoured("the served model's name; any other is a 404"),
    "input": honoured("a string, or items: messages (user, system, developer, assistant; input_text and output_text "
                      "parts), function_call, function_call_output, reasoning; converted as vllm serve converts "
                      "them; images, files and built-in tool items are a 400"),
    "instructions": honoured("a system message first; not carried over by previous_response_id (as OpenAI)"),
    "max_output_tokens": honoured("vLLM's max_tokens; reaching it ends the response incomplete"),
    "temperature": honoured("default: the profile, else the model's generation_config"),
    "top_p": honoured(),
    "top_k": honoured("-1 or 0: off (vLLM's extension)"),
    "min_p": honoured("vLLM's extension"),
    "presence_penalty": honoured(),
    "frequency_penalty": honoured(),
    "repetition_penalty": honoured("vLLM's extension"),
    "seed": honoured("vLLM's extension"),
    "stop": honoured("vLLM's extension; at most 16 strings"),
    "stop_token_ids": honoured("vLLM's extension"),
    "ignore_eos": honoured("vLLM's extension"),
    "logit_bias": honoured("token id -> bias in [-100, 100]"),
    "skip_special_tokens": honoured("vLLM's extension"),
    "include_stop_str_in_output": honoured("vLLM's extension"),
    "tools": honoured("function tools; built-in tools (web_search, file_search, computer_use_preview, "
                      "code_interpreter, image_generation, mcp, local_shell, custom, ...) are a 400 naming them"),
    "tool_choice": honoured("none, auto (needs tool_call_parser in the profile), required, "
                            "{type: function, name}"),
    "parallel_tool_calls": honoured(),
    "max_tool_calls": refused("built-in tools are not served, and function calls are not counted"),
    "text": honoured("format text, json_object, json_schema (constrained output); verbosity medium only"),
    "structured_outputs": honoured("vLLM's extension; not with text.format"),
    "reasoning": honoured("effort: reasoning_effort for the chat template; summary accepted, no summary is "
                          "written (the reasoning parser's text is the reasoning item's content)"),
    "include_reasoning": honoured("false: no reasoning item (vLLM's extension)"),
    "include": honoured("message.output_text.logprobs returns logprobs; reasoning.encrypted_content is accepted "
                        "and answered without it (reasoning is returned as text); the others name outputs of "
                        "tools this server does not run"),
    "top_logprobs": honoured("0 to 20, with include message.output_text.logprobs"),
    "metadata": honoured("echoed; at most 16 keys"),
    "user": honoured("the end user's id: written to the access log"),
    "store": honoured("default true: the response is kept for previous_response_id (see the state below)"),
    "previous_response_id": honoured("the chain's input and output items come before this input"),
    "stream": honoured("OpenAI's semantic events with sequence_number; keep-alive comments while queued"),
    "background": honoured("needs store true; answers at once (queued), the generation runs in a task of its own "
                           "that outlives the connection: retrieve, resume the stream with starting_after on any "
                           "replica, cancel (see docs/responses.md)"),
    "truncation": honoured("disabled; auto keeps the prompt's last tokens so that max_output_tokens fits (needs "
                           "max_output_tokens)"),
    "prompt_cache_key": honoured("echoed; deploy/haproxy.cfg routes on it (prefix-cache affinity); not a cache salt; "
                                 "see below"),
    "service_tier": refused("one service tier is served", "auto", "default"),
    "prompt": refused("stored prompt templates are not served"),
    "priority": honoured("needs scheduling_policy: priority; with fairness on, acts within the caller's share"),
    "request_id": honoured("the generation's request id (logs, traces), as X-Request-ID; the response id is new"),
    "cache_salt": honoured("isolates the prefix cache (vLLM's extension)"),
    "chat_template_kwargs": honoured("passed to the chat template (vLLM's extension)"),
    "vllm_xargs": honoured("passed to vLLM as extra_args"),
    "enable_response_messages": refused("raw prompt and output messages are not returned", False),
    "previous_input_messages": refused("harmony-format history is not served; use previous_response_id or input"),
    "session_id": refused("streaming-input sessions are not served"),
    "watermarking": refused("no watermarking is configured", False),
    "media_io_kwargs": refused(TEXT_ONLY),
    "mm_processor_kwargs": refused(TEXT_ONLY),
    "mm_payload": refused(TEXT_ONLY, "tensors"),
    "return_mm_kwargs": refused(TEXT_ONLY),
    "kv_transfer_params": refused("no disaggregated prefill is configured"),
    "ec_transfer_params": refused("no disaggregated encoding is configured"),
}
# Fields of OpenAI's Responses API that vLLM's model lacks and that clients send: as the table says.
OPENAI_ONLY: dict[str, Field] = {
    "conversation": honoured("a conversation id (or {id}): its items come before this input, and this input and "
                             "output are appended to it"),
    "safety_identifier": honoured("the end user's id: written to the access log"),
    "stream_options": honoured("include_obfuscation: accepted; no obfuscation field is sent"),
    "prompt_cache_retention": refused("the prefix cache lives in the engine's memory", "in_memory"),
}
RESPONSES_FIELDS.update(OPENAI_ONLY)


if __name__ == "__main__":
    print(markdown_table(RESPONSES_FIELDS))
