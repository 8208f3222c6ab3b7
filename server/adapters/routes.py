"""Admin routes for LoRA adapters, as vLLM names them (POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter,
bodies with lora_name and lora_path), plus GET /v1/lora_adapters to list them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec
from starlette.requests import Request

from server.adapters.service import AdapterEntry
from server.apis.decode import decode_body
from server.apis.endpoint import Endpoint, Method, Operation
from server.apis.params import json_response
from server.openapi.schemas import AdapterList, AdapterView
from server.state import principal_of, services
from server.streaming import RouteResponse

TAG = "adapters"
LOAD_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.FORBIDDEN, HTTPStatus.CONFLICT)


class LoadAdapter(msgspec.Struct, forbid_unknown_fields=True):
    """vLLM's LoadLoRAAdapterRequest (load_inplace and is_3d_lora_weight are not taken: a changed adapter is
    loaded under a new name, so no cached prefix computed with old weights is reused)."""

    lora_name: str
    lora_path: str


class UnloadAdapter(msgspec.Struct, forbid_unknown_fields=True):
    """vLLM's UnloadLoRAAdapterRequest; its lora_int_id is accepted and ignored (ids are the server's)."""

    lora_name: str
    lora_int_id: int | None = None


def adapter_view(entry: AdapterEntry, parent: str) -> dict[str, Any]:
    return {"name": entry.adapter.name, "path": entry.adapter.path, "parent": parent, "source": entry.source}


@Operation(Method.POST, "/v1/load_lora_adapter", "Load a LoRA adapter and serve it under its name (admin)", TAG,
           response=AdapterView, request=LoadAdapter, errors=LOAD_ERRORS)
async def load_adapter(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), LoadAdapter)
    held = services(request)
    entry = await held.adapters.load(principal_of(request), body.lora_name, body.lora_path)
    return json_response(adapter_view(entry, held.models.base_name))


@Operation(Method.POST, "/v1/unload_lora_adapter", "Stop serving a LoRA adapter (admin)", TAG, response=AdapterView,
           request=UnloadAdapter, errors=(HTTPStatus.BAD_REQUEST, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND))
async def unload_adapter(request: Request) -> RouteResponse:
    body = decode_body(await request.body(), UnloadAdapter)
    held = services(request)
    entry = await held.adapters.unload(principal_of(request), body.lora_name)
    return json_response(adapter_view(entry, held.models.base_name))


@Operation(Method.GET, "/v1/lora_adapters", "List the LoRA adapters served (admin)", TAG, response=AdapterList,
           errors=(HTTPStatus.FORBIDDEN,))
async def list_adapters(request: Request) -> RouteResponse:
    held = services(request)
    entries = held.adapters.entries(principal_of(request))
    return json_response({"object": "list", "data": [adapter_view(e, held.models.base_name) for e in entries]})


endpoints: tuple[Endpoint, ...] = (load_adapter, unload_adapter, list_adapters)
