"""Every request field of vllm serve's chat and completion schemas is classified here (served, refused or ignored on
purpose) and declared on ours: a field a new vLLM adds fails these until it is classified."""

from __future__ import annotations

from server.apis.openai.fields import CHAT_FIELDS, CHAT_OPENAI_ONLY, COMPLETION_FIELDS


def test_every_field_of_vllms_chat_schema_is_classified() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmChatRequest

    from server.apis.openai.chat_completions.protocol import ChatCompletionRequest

    assert set(VllmChatRequest.model_fields) == set(CHAT_FIELDS) - set(CHAT_OPENAI_ONLY)
    assert set(CHAT_FIELDS) <= set(ChatCompletionRequest.__struct_fields__), "a field not declared is ignored"


def test_every_field_of_vllms_completion_schema_is_classified() -> None:
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VllmCompletionRequest

    from server.apis.openai.completions.protocol import CompletionRequest

    assert set(VllmCompletionRequest.model_fields) == set(COMPLETION_FIELDS)
    assert set(COMPLETION_FIELDS) <= set(CompletionRequest.__struct_fields__)
