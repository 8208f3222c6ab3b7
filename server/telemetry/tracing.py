"""OpenTelemetry tracing: provider, sampler and exporter from settings; off (no-op tracer) unless configured."""

from __future__ import annotations

import time
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

TraceExporter = Literal["none", "console", "otlp-grpc", "otlp-http"]

tracer = trace.get_tracer("codeface")


def make_exporter(kind: TraceExporter, endpoint: str | None) -> SpanExporter | None:
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint) if endpoint else GrpcExporter()
    if kind == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=endpoint) if endpoint else HttpExporter()
    raise ValueError(f"unknown trace exporter {kind!r}")


def setup_tracing(kind: TraceExporter, *, endpoint: str | None = None, sample_ratio: float = 1.0,
                  exporter: SpanExporter | None = None, service_name: str = "codeface") -> TracerProvider | None:
    """Install a TracerProvider when an exporter is configured (or given, as tests do); else leave the no-op one.

    Returns the provider so that the caller can shut it down (flushing spans) at exit.
    """
    # Spans handed to a given exporter (tests) or the console are written at once; real exporters batch.
    write_at_once = exporter is not None or kind == "console"
    exporter = exporter or make_exporter(kind, endpoint)
    if exporter is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    processor = SimpleSpanProcessor(exporter) if write_at_once else BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


# The LoRA adapter a generation ran with (absent: the base model).
LORA_ADAPTER_ATTRIBUTE = "codeface.lora_adapter"

class GenerationSpans:
    """The queue-and-prefill and decode phases of one generation, as child spans of the request's span, plus the
    GenAI semantic-convention attributes on the request span itself."""

    def __init__(self, model: str, response_id: str, max_tokens: int | None, *, adapter: str | None = None) -> None:
        """`model`: what the request named (a LoRA adapter's name, or the base model's); `adapter`: the adapter."""
        self.request_span = trace.get_current_span()
        self.recording = self.request_span.is_recording()
        self.submitted_ns = time.time_ns()
        self.first_token_ns: int | None = None
        if self.recording:
            self.request_span.set_attributes({
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.response.id": response_id,
                **({"gen_ai.request.max_tokens": max_tokens} if max_tokens is not None else {}),
                **({LORA_ADAPTER_ATTRIBUTE: adapter} if adapter is not None else {}),
            })

    def first_token(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.time_ns()
            if self.recording:
                tracer.start_span("llm.queue_prefill", start_time=self.submitted_ns).end(end_time=self.first_token_ns)

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reasons: list[str]) -> None:
        if not self.recording:
            return
        if self.first_token_ns is not None:
            tracer.start_span("llm.decode", start_time=self.first_token_ns).end()
        self.request_span.set_attributes({
            "gen_ai.usage.input_tokens": prompt_tokens,
            "gen_ai.usage.output_tokens": completion_tokens,
            "gen_ai.response.finish_reasons": finish_reasons,
        })
