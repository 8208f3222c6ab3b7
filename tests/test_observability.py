"""A streamed chat leaves metric samples, a span tree and one JSON access line with its ids."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from server.telemetry.logs import ContextFilter, json_formatter

CHAT = "/v1/chat/completions"
STREAM = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "ignore_eos": True,
          "stream": True}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def scrape(server_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server_url}/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def stream_chat(server_url: str, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=60, headers=headers) as http, \
            http.stream("POST", f"{server_url}{CHAT}", json=STREAM) as response:
        body = b"".join(response.iter_bytes())
    assert response.status_code == 200 and body.endswith(b"data: [DONE]\n\n")
    return response


def test_streamed_chat_moves_the_metrics(server_url: str, auth_headers: dict[str, str]) -> None:
    before = scrape(server_url)
    stream_chat(server_url, auth_headers)
    assert httpx.get(f"{server_url}/readyz").is_success  # pings the database
    time.sleep(0.5)  # vLLM records its iteration stats right after the last output
    after = scrape(server_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": CHAT, "method": "POST"}
    assert delta("codeface_http_requests_total", **route, status="200") == 1
    assert delta("codeface_http_request_duration_seconds_count", **route) == 1
    assert value(after, "codeface_sse_streams_active") == 0
    # vLLM's own metrics, re-exported under their usual names:
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:generation_tokens_total") == 12
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:inter_token_latency_seconds_count") == 11
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert delta("vllm:request_queue_time_seconds_count") == 1
    assert delta("vllm:prompt_tokens_total") > 0
    assert ("vllm:kv_cache_usage_perc" in {name for name, _ in after})
    assert delta("codeface_db_operation_seconds_count", operation="SELECT") >= 1


def test_client_disconnect_counts_as_aborted(server_url: str, auth_headers: dict[str, str]) -> None:
    before = scrape(server_url)
    with httpx.Client(timeout=60, headers=auth_headers) as http, \
            http.stream("POST", f"{server_url}{CHAT}", json={**STREAM, "max_tokens": 1000}) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = scrape(server_url)
        counted = value(after, "codeface_requests_aborted_total", reason="client_disconnect")
        if counted > value(before, "codeface_requests_aborted_total", reason="client_disconnect"):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the abort was not counted")
    assert value(after, "codeface_sse_streams_active") == 0


def spans_of(exporter: InMemorySpanExporter, trace_id: str, root: str) -> list:
    """The trace's finished spans, once its root has ended (it ends just after the last byte reaches the client)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
        if any(s.name == root for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_span_tree_of_a_streamed_chat(server_url: str, auth_headers: dict[str, str],
                                     span_exporter: InMemorySpanExporter) -> None:
    stream_chat(server_url, {**auth_headers, "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    spans = {s.name: s for s in spans_of(span_exporter, TRACE_ID, f"POST {CHAT}")}
    assert f"POST {CHAT}" in spans, sorted(spans)
    root = spans[f"POST {CHAT}"]
    assert format(root.parent.span_id, "016x") == PARENT_SPAN_ID  # the client's traceparent was honoured
    for child in ("prompt.build", "llm.queue_prefill", "llm.decode"):
        assert spans[child].parent.span_id == root.context.span_id, child
    assert spans["llm.queue_prefill"].end_time <= spans["llm.decode"].start_time
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.usage.output_tokens"] == 12
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("length",)
    assert attributes["http.route"] == CHAT and attributes["http.response.status_code"] == 200


def test_database_spans_join_the_request_trace(server_url: str, span_exporter: InMemorySpanExporter) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert httpx.get(f"{server_url}/readyz", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}).is_success
    spans = spans_of(span_exporter, trace_id, "GET /readyz")
    root = next(s for s in spans if s.name == "GET /readyz")
    database = [s for s in spans if s.name.startswith("db ")]
    assert database and all(s.parent.span_id == root.context.span_id for s in database)


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The access logger's output through the production formatter and filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter())
    access = logging.getLogger("codeface.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    yield stream
    access.removeHandler(handler)


def test_one_json_access_line_with_the_ids(server_url: str, auth_headers: dict[str, str],
                                           access_lines: io.StringIO) -> None:
    response = stream_chat(server_url, {**auth_headers, "X-Request-ID": "client-chosen-id-42",
                                        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    assert response.headers["x-request-id"] == "client-chosen-id-42"
    deadline = time.monotonic() + 5  # the line is written once the last byte has gone out
    while not access_lines.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "client-chosen-id-42" and line["trace_id"] == TRACE_ID
    assert (line["route"], line["method"], line["status"]) == (CHAT, "POST", 200)
    assert line["completion_tokens"] == 12 and line["prompt_tokens"] > 0 and line["duration_ms"] > 0
    assert line["user_id"]  # the authenticated caller
    assert "Say hello" not in access_lines.getvalue()  # no message text in logs
    assert auth_headers["Authorization"].split()[1] not in access_lines.getvalue()  # no secrets either


def test_request_id_is_made_when_absent_or_unsafe(server_url: str) -> None:
    made = httpx.get(f"{server_url}/healthz").headers["x-request-id"]
    assert len(made) == 32
    unsafe = httpx.get(f"{server_url}/healthz", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert unsafe != "x" * 500
