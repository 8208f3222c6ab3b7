"""Tokenizing and detokenizing for clients that count tokens: prompts with the tokenizer, chats with the chat
template, exactly as the generation routes render them."""

from __future__ import annotations

from typing import Any

from engine import EngineClient, InvalidRequestError, PromptTooLongError
from server.adapters.catalog import ModelCatalog
from server.apis.openai.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from server.generation.refusals import engine_refusal, served_model
from server.security.auth import Principal


class Tokenization:
    def __init__(self, engine: EngineClient, models: ModelCatalog) -> None:
        self.engine = engine
        self.models = models

    async def tokenize(self, request: TokenizeRequest, principal: Principal | None) -> dict[str, Any]:
        served_model(self.models, principal, request.model)
        try:
            if request.prompt is not None:
                add_special = True if request.add_special_tokens is None else request.add_special_tokens
                tokens = await self.engine.tokenize(request.prompt, add_special)
            else:
                tokens = (await self.engine.render(request.chat_input())).token_ids
        except (PromptTooLongError, InvalidRequestError) as exc:
            raise engine_refusal(exc, "messages" if request.messages is not None else "prompt") from None
        return {"count": len(tokens), "max_model_len": self.engine.max_model_len, "tokens": tokens,
                "token_strs": self.engine.token_strings(tokens) if request.return_token_strs else None}

    async def detokenize(self, request: DetokenizeRequest, principal: Principal | None) -> dict[str, Any]:
        served_model(self.models, principal, request.model)
        try:
            return {"prompt": await self.engine.detokenize(request.tokens)}
        except InvalidRequestError as exc:
            raise engine_refusal(exc, "tokens") from None
