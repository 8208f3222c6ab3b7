"""A conversation's pinned model: set when the conversation is created or changed (one the caller may use), and the
model each reply is generated with: the message's, else the pin. A message naming another model than the pin is
refused."""

from __future__ import annotations

import uuid

from server.adapters.catalog import ModelCatalog, ServedModel
from server.conversations.store import ConversationChange, ConversationLimits, ConversationStore
from server.exceptions import Conflict
from server.security.auth import Principal
from storage import Database
from storage.models import Conversation


class PinningStore(ConversationStore):
    """Conversations that may pin a model. A pin the caller may not use answers as the model routes do: 404, as if
    the model did not exist."""

    def __init__(self, database: Database, limits: ConversationLimits, models: ModelCatalog) -> None:
        super().__init__(database, limits)
        self.models = models

    async def open(self, principal: Principal, title: str, model: str | None) -> Conversation:
        """A new conversation, pinned to `model` when one is given."""
        if model is not None:
            self.models.resolve(principal, model)
        return await self.create(principal.user_id, title, model)

    async def change(self, principal: Principal, conversation_id: uuid.UUID, change: ConversationChange
                     ) -> Conversation:
        """Rename a conversation, pin it to a model, or unpin it (model None)."""
        if isinstance(change.model, str):
            self.models.resolve(principal, change.model)
        return await self.update(principal.user_id, conversation_id, change)

    def reply_model(self, principal: Principal, conversation: Conversation, requested: str | None) -> ServedModel:
        """The model a reply is generated with: the one the message names, else the conversation's pin, else the
        base model. A pin the caller may no longer use (the adapter unloaded, access taken away) is the 404 a
        message naming it would get."""
        pinned = conversation.model
        if pinned is not None and requested is not None and requested != pinned:
            # 409, not 400: the message is valid on its own and would be served in an unpinned conversation; it
            # clashes with the conversation's state, which PATCH changes.
            raise Conflict(f"this conversation is pinned to the model {pinned!r}: leave model out, name that model, "
                           "or change the conversation's model (PATCH)", param="model")
        return self.models.resolve(principal, requested if requested is not None else pinned)
