"""Stored responses: GET and DELETE /v1/responses/{response_id} and its input items, for the caller's own responses
until their retention ends (another user's id is a 404, as an unknown one)."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from starlette.requests import Request

from server.apis.endpoint import Endpoint, Method, Operation
from server.apis.openai.conversations.protocol import (
    LIST_PARAMS,
    RESPONSE_ID,
    ItemList,
    ResponseDeleted,
    StoredResponseBody,
    list_query,
)
from server.apis.params import json_response
from server.exceptions import InvalidRequest
from server.state import principal_of, services
from server.streaming import RouteResponse

RESPONSE = "/v1/responses/{response_id}"
INPUT_ITEMS = f"{RESPONSE}/input_items"
TAG = "openai-responses"
NOT_FOUND = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)
IDS = {"response_id": RESPONSE_ID}
# Query parameters OpenAI takes on retrieve that ask for more than the stored body: refused, never ignored.
NOT_ON_RETRIEVE = ("stream", "starting_after", "include", "include_obfuscation")


def owner(request: Request) -> uuid.UUID:
    return principal_of(request).user_id


@Operation(Method.GET, RESPONSE, "A stored response, as it was returned", TAG, response=StoredResponseBody,
           errors=NOT_FOUND, path_schemas=IDS)
async def get_response(request: Request) -> RouteResponse:
    for name in NOT_ON_RETRIEVE:
        if name in request.query_params:
            raise InvalidRequest(f"{name} is not supported when retrieving a stored response", param=name)
    body = await services(request).response_store.get(owner(request), request.path_params["response_id"])
    return json_response(body)


@Operation(Method.DELETE, RESPONSE, "Delete a stored response and its input items", TAG, response=ResponseDeleted,
           errors=NOT_FOUND, path_schemas=IDS)
async def delete_response(request: Request) -> RouteResponse:
    response_id = request.path_params["response_id"]
    await services(request).response_store.delete(owner(request), response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@Operation(Method.GET, INPUT_ITEMS, "A page of a stored response's input items (after, limit, order)", TAG,
           response=ItemList, errors=NOT_FOUND, parameters=LIST_PARAMS, path_schemas=IDS)
async def input_items(request: Request) -> RouteResponse:
    after, limit, descending = list_query(request)
    store = services(request).response_store
    return json_response(await store.input_items(owner(request), request.path_params["response_id"], after=after,
                                                 limit=limit, descending=descending))


endpoints: tuple[Endpoint, ...] = (get_response, delete_response, input_items)
