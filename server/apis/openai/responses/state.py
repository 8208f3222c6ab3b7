"""What the Responses API keeps between requests, as the generation side sees it: stored responses and the items
before a new one (a previous_response_id chain or a conversation's items), scoped by owner."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

# Wire prefixes: a CodeFace conversation is an OpenAI conversation, its UUID in hex after the prefix.
RESPONSE_ID_PREFIX = "resp_"
CONVERSATION_ID_PREFIX = "conv_"

# OpenAI's item JSON (message with input_text/output_text parts, function_call, function_call_output, reasoning),
# as the Responses API takes and returns it.
Item = dict[str, Any]


class ResponseState(Protocol):
    """Implemented over the database (server/apis/openai/responses/store.py); the POST route's service calls it."""

    async def context(self, owner_id: uuid.UUID, *, previous_response_id: str | None,
                      conversation_id: str | None) -> list[Item]:
        """The items that come before a new response's input, oldest first: for previous_response_id each response
        of the chain's input items then its output items; for conversation_id the conversation's items. NotFound
        (server.exceptions) for an unknown, expired, deleted or another owner's id; InvalidRequest when both are
        given."""
        ...

    async def save(self, owner_id: uuid.UUID, response: dict[str, Any], input_items: list[Item], *, store: bool,
                   conversation_id: str | None) -> None:
        """After a response ends: keep it (store true: retrievable by id, its input_items listable, chainable by
        previous_response_id) and append its input and output items to the conversation, if any. Input items
        without an id get one here."""
        ...
