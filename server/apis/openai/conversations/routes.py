"""OpenAI's Conversations API under /v1/conversations: a conversation is a CodeFace conversation (the chat page lists
it), its items are its messages; ids on the wire are conv_ and msg_/fc_/fco_/rs_ and the row's UUID in hex."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from starlette.requests import Request

from server.apis.decode import decode_body
from server.apis.endpoint import Endpoint, Link, Method, Operation
from server.apis.openai.conversations.protocol import (
    CONVERSATION_ID,
    ITEM_ID,
    LIST_PARAMS,
    ConversationDeleted,
    ConversationObject,
    ConversationUpdate,
    ItemList,
    ItemObject,
    NewConversation,
    NewItems,
    list_query,
    refuse_include,
)
from server.apis.params import json_response
from server.state import principal_of, services
from server.streaming import RouteResponse

API = "/v1/conversations"
CONVERSATION = f"{API}/{{conversation_id}}"
ITEMS = f"{CONVERSATION}/items"
ITEM = f"{ITEMS}/{{item_id}}"
TAG = "openai-conversations"
NOT_FOUND = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)
IDS = {"conversation_id": CONVERSATION_ID, "item_id": ITEM_ID}
NEW = {"conversation_id": "$response.body#/id"}
SAME = {"conversation_id": "$request.path.conversation_id"}


def owner(request: Request) -> uuid.UUID:
    return principal_of(request).user_id


@Operation(Method.POST, API, "Create a conversation, with up to 20 items and metadata (OpenAI's API)", TAG,
           response=ConversationObject, request=NewConversation, body_optional=True, path_schemas=IDS, links=(
               Link("Read", Method.GET, CONVERSATION, NEW), Link("Update", Method.POST, CONVERSATION, NEW),
               Link("Items", Method.GET, ITEMS, NEW), Link("AddItems", Method.POST, ITEMS, NEW),
               Link("Delete", Method.DELETE, CONVERSATION, NEW)))
async def create_conversation(request: Request) -> RouteResponse:
    spec = decode_body(await request.body(), NewConversation)
    made = await services(request).openai_conversations.create(owner(request), spec.items or [], spec.metadata)
    return json_response(made)


@Operation(Method.GET, CONVERSATION, "A conversation", TAG, response=ConversationObject, errors=NOT_FOUND,
           path_schemas=IDS)
async def get_conversation(request: Request) -> RouteResponse:
    conversations = services(request).openai_conversations
    return json_response(await conversations.get(owner(request), request.path_params["conversation_id"]))


@Operation(Method.POST, CONVERSATION, "Replace a conversation's metadata", TAG, response=ConversationObject,
           request=ConversationUpdate, errors=NOT_FOUND, path_schemas=IDS)
async def update_conversation(request: Request) -> RouteResponse:
    spec = decode_body(await request.body(), ConversationUpdate, empty_means=None)
    conversations = services(request).openai_conversations
    return json_response(await conversations.update(owner(request), request.path_params["conversation_id"],
                                                     spec.metadata))


@Operation(Method.DELETE, CONVERSATION, "Delete a conversation and its items", TAG, response=ConversationDeleted,
           errors=NOT_FOUND, path_schemas=IDS)
async def delete_conversation(request: Request) -> RouteResponse:
    conversations = services(request).openai_conversations
    return json_response(await conversations.delete(owner(request), request.path_params["conversation_id"]))


@Operation(Method.GET, ITEMS, "A page of a conversation's items (after, limit, order)", TAG, response=ItemList,
           errors=NOT_FOUND, parameters=LIST_PARAMS, path_schemas=IDS)
async def list_items(request: Request) -> RouteResponse:
    after, limit, descending = list_query(request)
    conversations = services(request).openai_conversations
    return json_response(await conversations.list_items(owner(request), request.path_params["conversation_id"],
                                                        after=after, limit=limit, descending=descending))


@Operation(Method.POST, ITEMS, "Append up to 20 items to a conversation", TAG, response=ItemList, request=NewItems,
           errors=(*NOT_FOUND, HTTPStatus.CONFLICT), path_schemas=IDS,
           links=(Link("Items", Method.GET, ITEMS, SAME),))
async def add_items(request: Request) -> RouteResponse:
    refuse_include(request)
    spec = decode_body(await request.body(), NewItems, empty_means=None)
    conversations = services(request).openai_conversations
    return json_response(await conversations.add_items(owner(request), request.path_params["conversation_id"],
                                                       spec.items))


@Operation(Method.GET, ITEM, "One item of a conversation", TAG, response=ItemObject, errors=NOT_FOUND, path_schemas=IDS)
async def get_item(request: Request) -> RouteResponse:
    refuse_include(request)
    conversations = services(request).openai_conversations
    return json_response(await conversations.get_item(owner(request), request.path_params["conversation_id"],
                                                      request.path_params["item_id"]))


@Operation(Method.DELETE, ITEM, "Delete an item from a conversation; answers with the conversation", TAG,
           response=ConversationObject, errors=(*NOT_FOUND, HTTPStatus.CONFLICT), path_schemas=IDS)
async def delete_item(request: Request) -> RouteResponse:
    conversations = services(request).openai_conversations
    return json_response(await conversations.delete_item(owner(request), request.path_params["conversation_id"],
                                                         request.path_params["item_id"]))


endpoints: tuple[Endpoint, ...] = (create_conversation, get_conversation, update_conversation, delete_conversation,
                                   list_items, add_items, get_item, delete_item)
