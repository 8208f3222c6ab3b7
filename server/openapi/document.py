"""The OpenAPI 3.1 document, generated from the routes' own declarations (server.apis.endpoint): the request types
the server decodes with, the response types it answers with (msgspec emits their JSON Schema), every parameter with
the limits its route parses by, its auth and its error bodies. A test checks that every mounted route is documented;
the API fuzzing test checks the server against the document."""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import msgspec

from server.apis.anthropic.schemas import AnthropicErrorEnvelope
from server.apis.endpoint import Endpoint, Method, Operation, Streams
from server.errors import Dialect, dialect_of
from server.openapi.schemas import ErrorEnvelope, SeedErrorEnvelope

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
FORM = "application/x-www-form-urlencoded"
TEXT = "text/plain"
REF = "#/components/schemas/{name}"
# A streamed answer is 200 even where the JSON one is another status (a message posted with stream: true is 201).
STREAM_OK = HTTPStatus.OK

# Errors any authenticated route may answer: no or bad credentials, a spent request budget, a limiter that is down
# under fail-closed, and the body size limit.
AUTH_ERRORS = (HTTPStatus.UNAUTHORIZED, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.TOO_MANY_REQUESTS,
               HTTPStatus.SERVICE_UNAVAILABLE)
# Errors any route may answer: a Host the server does not answer to (400), a browser page of an origin not allowed
# (403); and any POST, PATCH or DELETE, a Content-Type other than the route's (415: JSON; the login, a form).
GUARD_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.FORBIDDEN)
BODY_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
BODY_METHODS = frozenset({Method.POST, Method.PATCH, Method.DELETE})
# Each dialect's error body (server.errors writes them).
ERROR_ENVELOPES: dict[Dialect, type] = {Dialect.OPENAI: ErrorEnvelope, Dialect.SEED: SeedErrorEnvelope,
                                        Dialect.ANTHROPIC: AnthropicErrorEnvelope}
UUID_PATH = {"type": "string", "format": "uuid"}

# One server-sent event, as a client parses it: JSON text in `data` ([DONE] ends OpenAI streams), an optional
# event name and id (conversation replies; Last-Event-ID resumes after it).
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                              "id": {"type": "string"}}}


def status_key(status: int) -> str:
    return str(int(status))


def _content(schema: dict[str, Any], streams: bool, always_streams: bool) -> dict[str, Any]:
    stream = {EVENT_STREAM: {"schema": SSE_EVENT}}
    if always_streams:
        return stream
    return {JSON: {"schema": schema}, **(stream if streams else {})}


def _successes(op: Operation, schemas: dict[type, dict[str, Any]]) -> dict[str, Any]:
    ok = status_key(op.ok)
    if op.text:
        return {ok: {"description": op.text, "content": {TEXT: {"schema": {"type": "string"}}}}}
    always_streams = op.streams is Streams.ALWAYS
    if op.response is None and not always_streams:
        return {ok: {"description": "Done"}}
    schema = schemas[op.response] if op.response is not None else {}
    on_request = op.streams is Streams.ON_REQUEST
    streams_apart = on_request and op.ok != STREAM_OK
    responses = {ok: {"description": "OK", "content": _content(schema, on_request and not streams_apart,
                                                               always_streams)}}
    if streams_apart:
        responses[status_key(STREAM_OK)] = {"description": "The events (stream: true)",
                                            "content": _content(schema, True, True)}
    if op.links:
        for answer in responses.values():
            answer["links"] = {link.name: link.document() for link in op.links}
    return responses


def _operation(op: Operation, schemas: dict[type, dict[str, Any]]) -> dict[str, Any]:
    error_schema = schemas[ERROR_ENVELOPES[dialect_of(op.path)]]
    errors = set(op.errors) | set(GUARD_ERRORS) | (set() if op.public else set(AUTH_ERRORS))
    if op.request is not None or op.form is not None:
        errors |= set(BODY_ERRORS)
    if op.method in BODY_METHODS:
        errors.add(HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    responses = _successes(op, schemas)
    for status in sorted(errors):
        responses[status_key(status)] = {"description": "Error", "content": {JSON: {"schema": error_schema}}}
    body: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag], "operationId": op.operation_id,
        "responses": responses, "security": [] if op.public else [{"bearer": []}],
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": op.path_schemas.get(name, UUID_PATH)}
                  for name in re.findall(r"{(\w+)}", op.path)]
    parameters += [parameter.document() for parameter in op.parameters]
    if parameters:
        body["parameters"] = parameters
    if op.request is not None:
        body["requestBody"] = {"required": not op.body_optional, "content": {JSON: {"schema": schemas[op.request]}}}
    elif op.form is not None:
        body["requestBody"] = {"required": True, "content": {FORM: {"schema": schemas[op.form]}}}
    return body


def check_links(operations: list[Operation]) -> None:
    """A link names an operation by its method and path: one that names none is a mistake, caught here."""
    declared = {op.operation_id for op in operations}
    for op in operations:
        for link in op.links:
            if link.document()["operationId"] not in declared:
                raise ValueError(f"{op.operation_id}: link {link.name} leads to no route ({link.method} {link.path})")


def openapi_document(version: str, endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    operations = [endpoint.operation for endpoint in endpoints]
    check_links(operations)
    types = sorted({t for op in operations for t in (op.request, op.form, op.response) if t is not None}
                   | set(ERROR_ENVELOPES.values()), key=lambda t: t.__name__)
    schema_list, components = msgspec.json.schema_components(types, ref_template=REF)
    schemas = dict(zip(types, schema_list))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.value] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "CodeFace", "version": version,
                 "description": "OpenAI- and vLLM-compatible inference API, with conversations, keys and limits."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key (cf_...) or a JWT"}}},
    }
