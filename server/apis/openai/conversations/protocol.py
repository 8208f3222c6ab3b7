"""OpenAI's Conversations API on the wire: the request bodies (decoded and bounded here), the shapes answered (for
/openapi.json), and the query parameters of item lists."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request

from server.apis.params import IntQuery, Param
from server.exceptions import InvalidRequest

MAX_ITEMS_PER_CALL = 20
MAX_METADATA_PAIRS = 16
MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=MAX_METADATA_PAIRS)]
# Items are validated where they are converted (server/apis/openai/responses/items.py), each fault named by path.
Items = Annotated[list[dict[str, Any]], Meta(max_length=MAX_ITEMS_PER_CALL)]


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/conversations. safety_identifier is refused as unknown: nothing here would use it."""

    items: Items | None = None
    metadata: Metadata | None = None


class ConversationUpdate(msgspec.Struct, forbid_unknown_fields=True):
    metadata: Metadata | None


class NewItems(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_ITEMS_PER_CALL)]


class ConversationObject(msgspec.Struct):
    id: str
    object: str
    created_at: int
    metadata: dict[str, str]


class ItemObject(msgspec.Struct):
    """One item (its other fields by type: message, function_call, function_call_output, reasoning)."""

    id: str
    type: str


class ConversationDeleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool


class ItemList(msgspec.Struct):
    object: str
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


ITEMS_LIMIT = IntQuery("limit", 20, 1, 100)
AFTER = Param("after", {"type": "string"}, "list the items after this item id (in the list's order)")
ORDER = Param("order", {"type": "string", "enum": [o.value for o in Order]}, "desc (the default) or asc")
LIST_PARAMS = (ITEMS_LIMIT, AFTER, ORDER)
CONVERSATION_ID = {"type": "string", "pattern": "^conv_[0-9a-f]{32}$"}
ITEM_ID = {"type": "string", "pattern": "^[a-z]+_[0-9a-f]{32}$"}
RESPONSE_ID = {"type": "string", "pattern": "^resp_[0-9a-f]{32}$"}
# `include` asks for logprobs, image URLs or search results along with items: none of them is stored here.
INCLUDE = "include"


def refuse_include(request: Request) -> None:
    if request.query_params.getlist(INCLUDE):
        raise InvalidRequest("include is not supported: items are stored without logprobs, images or tool results",
                             param=INCLUDE)


def list_query(request: Request) -> tuple[str | None, int, bool]:
    """after, limit and whether the order is descending (OpenAI's default)."""
    refuse_include(request)
    raw = request.query_params.get("order", Order.DESC)
    if raw not in Order.__members__.values():
        raise InvalidRequest("order must be asc or desc", param="order")
    return request.query_params.get("after"), ITEMS_LIMIT.parse(request), raw == Order.DESC


class StoredResponseBody(msgspec.Struct):
    """A stored Response object, as POST /v1/responses returned it (its other fields as OpenAI's)."""

    id: str
    object: str
    status: str
    output: list[dict[str, Any]]


class ResponseDeleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool
