"""Stored responses: GET and DELETE /v1/responses/{response_id} and its input items, for the caller's own responses
until their retention ends (another user's id is a 404, as an unknown one); a background response's stream resumed
(GET with stream=true and starting_after) and its cancel."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from starlette.requests import Request

from server.apis.decode import INT32_MAX
from server.apis.endpoint import Endpoint, Method, Operation, Streams
from server.apis.openai.conversations.protocol import (
    LIST_PARAMS,
    RESPONSE_ID,
    ItemList,
    ResponseDeleted,
    StoredResponseBody,
    list_query,
)
from server.apis.params import Param, bool_query, json_response, whole_number
from server.exceptions import InvalidRequest
from server.state import principal_of, services
from server.streaming import EventStreamResponse, RouteResponse

RESPONSE = "/v1/responses/{response_id}"
INPUT_ITEMS = f"{RESPONSE}/input_items"
TAG = "openai-responses"
NOT_FOUND = (HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND)
IDS = {"response_id": RESPONSE_ID}
CANCEL = f"{RESPONSE}/cancel"
# Query parameters OpenAI takes on retrieve that ask for what is not served: refused, never ignored.
NOT_ON_RETRIEVE = ("include", "include_obfuscation")
RETRIEVE_PARAMS = (Param("stream", {"type": "boolean"}, "stream a background response's events"),
                   Param("starting_after", {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                         "resume after this sequence_number (with stream=true)"))


def owner(request: Request) -> uuid.UUID:
    return principal_of(request).user_id


@Operation(Method.GET, RESPONSE, "A stored response, as it was returned (a background one as it is so far); with "
           "stream=true, a background response's events after starting_after, then the live rest", TAG,
           response=StoredResponseBody, errors=(*NOT_FOUND, HTTPStatus.CONFLICT), path_schemas=IDS,
           streams=Streams.ON_REQUEST, parameters=RETRIEVE_PARAMS)
async def get_response(request: Request) -> RouteResponse:
    for name in NOT_ON_RETRIEVE:
        if name in request.query_params:
            raise InvalidRequest(f"{name} is not supported when retrieving a stored response", param=name)
    response_id = request.path_params["response_id"]
    stream = bool_query(request, "stream")
    starting_after = request.query_params.get("starting_after")
    if starting_after is not None and not stream:
        raise InvalidRequest("starting_after needs stream=true", param="starting_after")
    if stream:
        after = whole_number(starting_after) if starting_after is not None else None
        if starting_after is not None and (after is None or after > INT32_MAX):
            raise InvalidRequest("starting_after must be a sequence number (a whole number)", param="starting_after")
        following = await services(request).background_responses.resume(principal_of(request), response_id, after)
        return EventStreamResponse(following.events, finalize=following.close)
    body = await services(request).response_store.get(owner(request), response_id)
    return json_response(body)


@Operation(Method.POST, CANCEL, "Cancel a background response (from any replica); answers it as stored", TAG,
           response=StoredResponseBody, errors=(*NOT_FOUND, HTTPStatus.CONFLICT), path_schemas=IDS)
async def cancel_response(request: Request) -> RouteResponse:
    body = await services(request).background_responses.cancel(owner(request), request.path_params["response_id"])
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


endpoints: tuple[Endpoint, ...] = (get_response, delete_response, input_items, cancel_response)
