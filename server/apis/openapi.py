"""The OpenAPI 3.1 document, generated from the request types the server decodes with and the response types it
answers with (msgspec emits their JSON Schema): every route, its auth, its error bodies. A test checks that every
mounted route is documented here; the API fuzzing test checks the server against it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from server.apis.anthropic.protocol import CountTokensRequest, MessagesRequest
from server.apis.anthropic.schemas import AnthropicErrorEnvelope, MessageResponse, TokenCount
from server.apis.codeface.conversations.protocol import NewConversation, NewMessage, Rename, SeedChat
from server.apis.codeface.identity.protocol import NewKey, NewUser
from server.apis.decode import INT32_MAX
from server.apis.openai.chat_completions.protocol import ChatCompletionRequest
from server.apis.openai.completions.protocol import CompletionRequest
from server.apis.openai.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from server.apis.schemas import (
    AccessToken,
    ChatCompletion,
    Completion,
    ConversationPage,
    ConversationView,
    ConversationWithMessages,
    DetokenizeResponse,
    ErrorEnvelope,
    KeyCreated,
    KeyList,
    MessageView,
    ModelList,
    PasswordGrant,
    Ready,
    ReplyResult,
    SeedErrorEnvelope,
    Status,
    TokenizeResponse,
    UserView,
    Version,
)
from server.errors import ANTHROPIC_OVERLOADED, Dialect, dialect_of

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
FORM = "application/x-www-form-urlencoded"
REF = "#/components/schemas/{name}"
STREAM_OK = 200

# Errors any authenticated route may answer: no or bad credentials, a spent request budget, a limiter that is down
# under fail-closed, and the body size limit.
AUTH_ERRORS = (401, 413, 429, 503)
# Errors any route may answer: a Host the server does not answer to (400), a browser page of an origin not allowed
# (403); and any POST, PATCH or DELETE, a Content-Type other than the route's (415: JSON; the login, a form).
GUARD_ERRORS = (400, 403)
BODY_METHODS = frozenset({"post", "put", "patch", "delete"})
GENERATION_ERRORS = (400, 404, 409, 413, 429, 500, 503)


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    ok: int = 200
    response: type | None = None
    request: type | None = None
    form: type | None = None
    streams: bool = False  # the success answer is text/event-stream (always, or when the body says stream: true)
    always_streams: bool = False
    public: bool = False
    errors: tuple[int, ...] = (400,)
    parameters: tuple[Query, ...] = field(default_factory=tuple)
    body_optional: bool = False
    links: tuple[Link, ...] = ()  # where the success answer leads (OpenAPI links: the stateful fuzzing follows them)


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a success answer to the operation `method path`, its parameters and body taken from
    the request or the answer by runtime expressions ($response.body#/id, $request.path.conversation_id, ...)."""

    name: str
    method: str
    path: str
    parameters: dict[str, str] = field(default_factory=dict)
    request_body: dict[str, str] | None = None

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"operationId": operation_id(self.method, self.path), "parameters": self.parameters}
        if self.request_body is not None:
            body["requestBody"] = self.request_body
        return body


def operation_id(method: str, path: str) -> str:
    return f"{method}_{re.sub(r'[^a-z0-9]+', '_', path)}"


UUID_PATH = {"type": "string", "format": "uuid"}
CONVERSATION = "/api/v1/conversations/{conversation_id}"
MESSAGES = f"{CONVERSATION}/messages"
NEW_CONVERSATION = {"conversation_id": "$response.body#/id"}
SAME_CONVERSATION = {"conversation_id": "$request.path.conversation_id"}
# A reply's id is in a header: the answer is JSON or, with stream: true, an event stream.
NEW_REPLY = {**SAME_CONVERSATION, "message_id": "$response.header.X-Message-ID"}
LAST_EVENT_ID = Query("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,10}$"},
                      "resume after this event id", where="header")

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/chat/completions", "Create a chat completion (OpenAI's API, as vllm serve extends it)",
              "openai", response=ChatCompletion, request=ChatCompletionRequest, streams=True,
              errors=GENERATION_ERRORS),
    Operation("post", "/v1/completions", "Create a completion (OpenAI's API, as vllm serve extends it)", "openai",
              response=Completion, request=CompletionRequest, streams=True, errors=GENERATION_ERRORS),
    Operation("post", "/v1/messages", "Create a message (Anthropic's Messages API, as vllm serve serves it)",
              "anthropic", response=MessageResponse, request=MessagesRequest, streams=True,
              errors=(*GENERATION_ERRORS, ANTHROPIC_OVERLOADED)),
    Operation("post", "/v1/messages/count_tokens", "Count a message's prompt tokens (Anthropic's API)", "anthropic",
              response=TokenCount, request=CountTokensRequest, errors=(400, 404)),
    Operation("get", "/v1/models", "List the served model", "openai", response=ModelList, errors=()),
    Operation("post", "/tokenize", "Tokenize a prompt or a chat (vLLM's shapes)", "vllm", response=TokenizeResponse,
              request=TokenizeRequest, errors=(400, 404)),
    Operation("post", "/detokenize", "Turn token ids back into text (vLLM's shapes)", "vllm",
              response=DetokenizeResponse, request=DetokenizeRequest, errors=(400, 404)),
    Operation("post", "/api/v1/conversations", "Create a conversation", "conversations", ok=201,
              response=ConversationView, request=NewConversation, body_optional=True, links=(
                  Link("Read", "get", CONVERSATION, NEW_CONVERSATION),
                  Link("Rename", "patch", CONVERSATION, NEW_CONVERSATION),
                  Link("Post", "post", MESSAGES, NEW_CONVERSATION),
                  Link("Follow", "get", f"{CONVERSATION}/stream", NEW_CONVERSATION),
                  Link("Delete", "delete", CONVERSATION, NEW_CONVERSATION))),
    Operation("get", "/api/v1/conversations", "List the caller's conversations, newest first", "conversations",
              response=ConversationPage, parameters=(
                  Query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                  Query("cursor", {"type": "string"}, "next_cursor of the previous page"))),
    Operation("get", "/api/v1/conversations/{conversation_id}", "A conversation with its messages",
              "conversations", response=ConversationWithMessages, errors=(400, 404), parameters=(
                  Query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                  Query("after_seq", {"type": "integer", "minimum": 0, "maximum": INT32_MAX}))),
    Operation("patch", "/api/v1/conversations/{conversation_id}", "Rename a conversation", "conversations",
              response=ConversationView, request=Rename, errors=(400, 404)),
    Operation("delete", "/api/v1/conversations/{conversation_id}", "Delete a conversation and its messages",
              "conversations", ok=204, errors=(404,)),
    Operation("post", "/api/v1/conversations/{conversation_id}/messages",
              "Post a message; the reply is generated, stored and streamed (stream: true) or returned",
              "conversations", ok=201, response=ReplyResult, request=NewMessage, streams=True,
              errors=GENERATION_ERRORS, links=(
                  Link("Resume", "get", f"{CONVERSATION}/stream", NEW_REPLY),
                  Link("Cancel", "post", f"{MESSAGES}/{{message_id}}/cancel", NEW_REPLY),
                  Link("PostAgain", "post", MESSAGES, SAME_CONVERSATION),
                  Link("Read", "get", CONVERSATION, SAME_CONVERSATION),
                  Link("Delete", "delete", CONVERSATION, SAME_CONVERSATION))),
    Operation("get", "/api/v1/conversations/{conversation_id}/stream",
              "Re-attach to a reply's events after Last-Event-ID", "conversations", always_streams=True,
              errors=(400, 404, 409), parameters=(Query("message_id", {"type": "string"}),
                                                  Query("last_event_id", {"type": "string"}), LAST_EVENT_ID)),
    Operation("post", "/api/v1/conversations/{conversation_id}/messages/{message_id}/cancel",
              "Stop a reply that is being generated", "conversations", response=MessageView, errors=(404, 409)),
    Operation("post", "/api/v1/chat", "The seed's chat: start or continue a conversation with one message",
              "seed", response=ReplyResult, request=SeedChat, streams=True, body_optional=True,
              errors=GENERATION_ERRORS, parameters=(
                  Query("message", {"type": "string", "minLength": 1}),
                  Query("conversation_id", {"type": "string"}),
                  Query("stream", {"type": "string", "enum": ["true", "false"]}))),
    Operation("get", "/api/v1/stream/{conversation_id}",
              "The seed's stream: the reply in progress, the latest, or the next (EventSource.onmessage)", "seed",
              always_streams=True, errors=(400, 404), parameters=(Query("last_event_id", {"type": "string"}),
                                                                  LAST_EVENT_ID)),
    Operation("post", "/api/v1/auth/token", "OAuth2 password grant: a JWT for a user", "identity",
              response=AccessToken, form=PasswordGrant, public=True, errors=(400, 401, 403, 413, 429, 503)),
    Operation("post", "/api/v1/keys", "Create an API key (shown once)", "identity", ok=201, response=KeyCreated,
              request=NewKey, body_optional=True, errors=(400, 403, 409), links=(
                  Link("List", "get", "/api/v1/keys"),
                  Link("Revoke", "delete", "/api/v1/keys/{key_id}", {"key_id": "$response.body#/id"}))),
    Operation("get", "/api/v1/keys", "List the caller's API keys", "identity", response=KeyList, errors=(403,)),
    Operation("delete", "/api/v1/keys/{key_id}", "Revoke an API key", "identity", ok=204, errors=(403, 404)),
    Operation("post", "/api/v1/users", "Create a user (admin)", "identity", ok=201, response=UserView,
              request=NewUser, errors=(400, 403, 409), links=(
                  Link("SignIn", "post", "/api/v1/auth/token", request_body={
                      "username": "$response.body#/username", "password": "$request.body#/password"}),)),
    Operation("get", "/health", "Liveness, as vLLM's: 503 once the engine has died", "system", response=Status,
              public=True, errors=(503,)),
    Operation("get", "/healthz", "The process answers", "system", response=Status, public=True, errors=()),
    Operation("get", "/readyz", "Engine and database answer: route traffic here", "system", response=Ready,
              public=True, errors=(503,)),
    Operation("get", "/version", "CodeFace's and vLLM's versions", "system", response=Version, public=True,
              errors=()),
    Operation("get", "/metrics", "Prometheus metrics (CodeFace's and vLLM's)", "system", public=True, errors=()),
)

ERROR_ENVELOPES = {Dialect.OPENAI: ErrorEnvelope, Dialect.SEED: SeedErrorEnvelope,
                   Dialect.ANTHROPIC: AnthropicErrorEnvelope}
RESPONSE_TYPES = (ErrorEnvelope, SeedErrorEnvelope, AnthropicErrorEnvelope)


# One server-sent event, as a client parses it: JSON text in `data` ([DONE] ends OpenAI streams), an optional
# event name and id (conversation replies; Last-Event-ID resumes after it).
SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                              "id": {"type": "string"}}}


def _content(schema: dict[str, Any], streams: bool, always_streams: bool) -> dict[str, Any]:
    stream = {EVENT_STREAM: {"schema": SSE_EVENT}}
    if always_streams:
        return stream
    return {JSON: {"schema": schema}, **(stream if streams else {})}


def _operation(op: Operation, schemas: dict[type, dict[str, Any]]) -> dict[str, Any]:
    error_schema = schemas[ERROR_ENVELOPES[dialect_of(op.path)]]
    errors = set(op.errors) | set(GUARD_ERRORS) | (set() if op.public else set(AUTH_ERRORS))
    if op.request is not None or op.form is not None:
        errors |= {400, 413}
    if op.method in BODY_METHODS:
        errors.add(415)
    responses: dict[str, Any] = {}
    if op.response is not None or op.always_streams:
        schema = schemas[op.response] if op.response is not None else {}
        # A streamed answer is 200 even where the JSON one is 201 (a message posted with stream: true).
        streams_apart = op.streams and op.ok != STREAM_OK
        responses[str(op.ok)] = {"description": "OK",
                                 "content": _content(schema, op.streams and not streams_apart, op.always_streams)}
        if streams_apart:
            responses[str(STREAM_OK)] = {"description": "The events (stream: true)",
                                         "content": _content(schema, True, True)}
        if op.links:
            for answer in {str(op.ok), str(STREAM_OK) if streams_apart else str(op.ok)}:
                responses[answer]["links"] = {link.name: link.document() for link in op.links}
    elif op.path == "/metrics":
        responses[str(op.ok)] = {"description": "Prometheus text", "content": {"text/plain": {"schema": {
            "type": "string"}}}}
    else:
        responses[str(op.ok)] = {"description": "Done"}
    for status in sorted(errors):
        responses[str(status)] = {"description": "Error", "content": {JSON: {"schema": error_schema}}}
    body: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag], "operationId": operation_id(op.method, op.path),
        "responses": responses, "security": [] if op.public else [{"bearer": []}],
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": UUID_PATH}
                  for name in re.findall(r"{(\w+)}", op.path)]
    parameters += [{"name": q.name, "in": q.where, "required": False, "schema": q.schema,
                    **({"description": q.description} if q.description else {})} for q in op.parameters]
    if parameters:
        body["parameters"] = parameters
    if op.request is not None:
        body["requestBody"] = {"required": not op.body_optional, "content": {JSON: {"schema": schemas[op.request]}}}
    elif op.form is not None:
        body["requestBody"] = {"required": True, "content": {FORM: {"schema": schemas[op.form]}}}
    return body


def openapi_document(version: str) -> dict[str, Any]:
    types = sorted({t for op in OPERATIONS for t in (op.request, op.form, op.response) if t is not None}
                   | set(RESPONSE_TYPES), key=lambda t: t.__name__)
    schema_list, components = msgspec.json.schema_components(types, ref_template=REF)
    schemas = dict(zip(types, schema_list))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "CodeFace", "version": version,
                 "description": "OpenAI- and vLLM-compatible inference API, with conversations, keys and limits."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key (cf_...) or a JWT"}}},
    }
