"""The wire ids of stored responses ("resp_" and 32 hex digits) and conversations ("conv_" and the CodeFace
conversation's UUID in hex): anything else names nothing, the same 404 as another user's id."""

from __future__ import annotations

import re
import uuid

from server.apis.openai.responses.state import CONVERSATION_ID_PREFIX, RESPONSE_ID_PREFIX
from server.exceptions import NotFound

HEX_ID = r"[0-9a-f]{32}"
RESPONSE_ID = re.compile(rf"^{RESPONSE_ID_PREFIX}{HEX_ID}$")
CONVERSATION_ID = re.compile(rf"^{CONVERSATION_ID_PREFIX}(?P<hex>{HEX_ID})$")


def conversation_wire_id(conversation_id: uuid.UUID) -> str:
    return f"{CONVERSATION_ID_PREFIX}{conversation_id.hex}"


def conversation_uuid(wire_id: str, param: str = "conversation_id") -> uuid.UUID:
    found = CONVERSATION_ID.match(wire_id)
    if found is None:
        raise NotFound(f"conversation {wire_id!r} not found", param=param)
    return uuid.UUID(hex=found["hex"])


def response_id(wire_id: str, param: str = "response_id") -> str:
    if RESPONSE_ID.match(wire_id) is None:
        raise NotFound(f"response {wire_id!r} not found", param=param)
    return wire_id
