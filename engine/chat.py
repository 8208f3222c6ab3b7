"""Chat requests through vLLM's own machinery: its request schema and defaults (the model's generation_config), its
renderer (the chat template, with tools), its tool and reasoning parsers, and its sampling parameters. The one
module that knows vLLM's chat API; what leaves it is plain (engine.types)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from engine.errors import Stage, vllm_errors
from engine.output import OutputShaper, choice_parsers_factory
from engine.types import Adapter, ChatInput, InvalidRequestError, Prompt, PromptTooLongError, ToolChoice

logger = logging.getLogger(__name__)

RESPONSE_ROLE = "assistant"


@dataclasses.dataclass(frozen=True, slots=True)
class ChatFeatures:
    """What the profile enables for chat: vllm serve's --tool-call-parser, --enable-auto-tool-choice,
    --reasoning-parser and --chat-template, plus sampling defaults that override the model's generation_config."""

    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None
    chat_template: Path | None = None
    sampling_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Whether the engine orders its queue by priority (scheduling_policy: priority); under fcfs vLLM would ignore a
    # request's priority, so it is refused instead.
    priority_scheduling: bool = False


@dataclasses.dataclass(slots=True)
class PreparedRequest:
    """A request rendered and checked, ready to submit: the plain facts the server needs, and the vLLM objects
    (opaque outside engine/) the engine submits."""

    request_id: str
    prompt: Prompt
    n: int
    max_tokens: int
    logprobs: int | None
    priority: int
    echo: str | None
    tool_choice: ToolChoice
    engine_input: Any
    params: Any
    shaper: OutputShaper
    submit_kwargs: dict[str, Any]
    # The LoRA adapter the request's model names; None: the base model.
    adapter: Adapter | None = None

    @property
    def prompt_logprobs(self) -> int | None:
        value = getattr(self.params, "prompt_logprobs", None)
        return value if isinstance(value, int) else None


class ChatPreparer:
    """Built once the engine is up: the model's config, renderer, tokenizer, defaults and parser classes."""

    def __init__(self, llm: Any, features: ChatFeatures, max_model_len: int) -> None:
        from vllm.parser import ParserManager

        self.model_config = llm.model_config
        self.renderer = llm.renderer
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.default_sampling = default_sampling(self.model_config, features.sampling_defaults)
        self.priority_scheduling = features.priority_scheduling
        self.chat_template = features.chat_template.read_text() if features.chat_template else None
        self.auto_tools = features.enable_auto_tool_choice and features.tool_call_parser is not None
        self.parser_cls = ParserManager.get_parser(
            tool_parser_name=features.tool_call_parser, reasoning_parser_name=features.reasoning_parser,
            enable_auto_tools=self.auto_tools, model_name=self.model_config.model, tokenizer=self.tokenizer)
        self.json_tools_parser_cls = _json_tools_parser_cls()
        self.has_reasoning_parser = features.reasoning_parser is not None

    def warmup(self) -> None:
        """What vllm serve does at start (OnlineRenderer.warmup): the template resolved and compiled, the processor
        looked up once. Unwarmed, every request of the first wave did it at once in the renderer's threads (the
        result is cached only once one finishes), on the CPU the first tokens need."""
        from vllm.renderers import ChatParams

        self.renderer.warmup(ChatParams(chat_template=self.chat_template, chat_template_content_format="auto"))

    def request(self, chat: ChatInput) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        with vllm_errors(Stage.CHAT_SCHEMA):
            vreq = ChatCompletionRequest.model_validate({"messages": chat.messages, **chat.fields})
        return vreq

    async def prepare(self, chat: ChatInput, request_id: str) -> PreparedRequest:
        """Raises InvalidRequestError, ChatTemplateError or PromptTooLongError; nothing reaches the engine here."""
        vreq = self.request(chat)
        self.check_priority(vreq.priority)
        tool_choice = _tool_choice(vreq)
        parser_cls = self._parser_for(vreq, tool_choice)
        prompt, engine_input = await self._render(vreq)
        if parser_cls is not None:
            adjuster = parser_cls(self.tokenizer, vreq.tools, model_config=self.model_config,
                                  chat_template_kwargs=vreq.chat_template_kwargs)
            vreq = adjuster.adjust_request(vreq)
        # Read from the fields: vLLM's request warns on every read of the deprecated max_tokens.
        requested = chat.fields.get("max_completion_tokens") or chat.fields.get("max_tokens")
        max_tokens = self.output_budget(prompt, requested)
        params = self._sampling_params(vreq, max_tokens)
        parsers = choice_parsers_factory(parser_cls, self.tokenizer, vreq, self.model_config)
        submit_kwargs: dict[str, Any] = {"priority": vreq.priority}
        if parsers is not None and self.has_reasoning_parser:
            submit_kwargs["reasoning_ended"] = vreq.resolve_reasoning_ended(parsers(0), prompt.token_ids)
            submit_kwargs["reasoning_parser_kwargs"] = {"chat_template_kwargs": vreq.chat_template_kwargs}
        shaper = OutputShaper(params.n, params.logprobs, prompt.token_ids, parsers, tool_choice, vreq,
                              tokens_as_ids=bool(vreq.return_tokens_as_token_ids),
                              with_token_ids=bool(vreq.return_token_ids))
        return PreparedRequest(request_id, prompt, params.n, max_tokens, params.logprobs, vreq.priority,
                               _echo(vreq), tool_choice, engine_input, params, shaper, submit_kwargs)

    def check_priority(self, priority: int) -> None:
        if priority and not self.priority_scheduling:
            raise InvalidRequestError("priority needs scheduling_policy: priority in the server's profile (this "
                                      "engine serves first come, first served)", "priority")

    def output_budget(self, prompt: Prompt, requested: int | None) -> int:
        """The tokens the reply may have: what was asked, or the model's default, or the room left in the context;
        PromptTooLongError when the context cannot hold what was asked."""
        room = self.max_model_len - prompt.num_tokens
        if room <= 0:
            raise PromptTooLongError(
                f"the prompt has {prompt.num_tokens} tokens; this model's context is {self.max_model_len} tokens")
        if requested is None:
            default = self.default_sampling.get("max_tokens")
            return min(room, default) if default else room
        if requested > room:
            raise PromptTooLongError(
                f"the prompt ({prompt.num_tokens} tokens) plus max_tokens ({requested}) exceeds this model's "
                f"context of {self.max_model_len} tokens; ask for at most {room} tokens")
        return requested

    async def render(self, chat: ChatInput) -> Prompt:
        """The prompt alone (history trimming counts its tokens)."""
        prompt, _ = await self._render(self.request(chat))
        return prompt

    async def _render(self, vreq: Any) -> tuple[Prompt, Any]:
        tool_dicts = [tool.model_dump() for tool in vreq.tools] if vreq.tools else None
        # The output length is checked by output_budget, with CodeFace's message; vLLM checks the prompt alone.
        unbounded = vreq.model_copy(update={"max_tokens": None, "max_completion_tokens": None})
        with vllm_errors(Stage.PARAMS):  # e.g. truncate_prompt_tokens past the context
            chat_params = vreq.build_chat_params(self.chat_template, "auto").with_defaults({"tools": tool_dicts})
            tok_params = unbounded.build_tok_params(self.model_config)
        extras = {"cache_salt": vreq.cache_salt} if vreq.cache_salt else None
        with vllm_errors(Stage.CHAT_TEMPLATE):
            _, (engine_input,) = await self.renderer.render_chat_async([vreq.messages], chat_params, tok_params,
                                                                       prompt_extras=extras)
        return Prompt(list(engine_input["prompt_token_ids"]), engine_input.get("prompt")), engine_input

    def _parser_for(self, vreq: Any, tool_choice: ToolChoice) -> Any:
        if vreq.tools and tool_choice != ToolChoice.NONE:
            if self.auto_tools:
                return self.parser_cls
            if tool_choice == ToolChoice.AUTO:
                raise InvalidRequestError(
                    "tool_choice 'auto' needs a tool call parser for this model: set tool_call_parser and "
                    "enable_auto_tool_choice in the server's profile, or send tool_choice 'required' or a named "
                    "function (those work with any model)", "tool_choice")
            return self.json_tools_parser_cls
        return self.parser_cls if self.has_reasoning_parser else None

    def _sampling_params(self, vreq: Any, max_tokens: int) -> Any:
        from vllm.sampling_params import RequestOutputKind

        with vllm_errors(Stage.PARAMS):
            params = vreq.to_sampling_params(max_tokens, self.default_sampling)
        # Streamed internally either way: a non-stream client that leaves still stops the engine at once.
        params.output_kind = RequestOutputKind.DELTA
        return params


def default_sampling(model_config: Any, profile_defaults: dict[str, Any]) -> dict[str, Any]:
    """Sampling defaults as vllm serve resolves them: the model's generation_config.json (vLLM reads it), overridden
    by the profile's; a request's own values override both, and OpenAI's defaults fill the rest."""
    return {**model_config.get_diff_sampling_param(), **profile_defaults}


def _tool_choice(vreq: Any) -> ToolChoice:
    choice = vreq.tool_choice
    if choice is None or choice == ToolChoice.NONE or not vreq.tools:
        return ToolChoice.AUTO if choice is None and vreq.tools else ToolChoice.NONE
    if isinstance(choice, str):
        return ToolChoice(choice)
    return ToolChoice.NAMED


def _echo(vreq: Any) -> str | None:
    """vllm serve's echo: the last message's content, when it has the role the reply continues."""
    if not vreq.echo or not vreq.messages:
        return None
    last = vreq.messages[-1]
    role = RESPONSE_ROLE if vreq.add_generation_prompt else last.get("role")
    if last.get("role") != role:
        return None
    content = last.get("content")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _json_tools_parser_cls() -> Any:
    """A parser for tool_choice 'required' or a named function with no tool parser configured: vLLM constrains the
    output to the tools' JSON schema (its base ToolParser) and parses that JSON, whatever the model."""
    from vllm.parser.abstract_parser import DelegatingParser
    from vllm.tool_parsers import ToolParser

    class JsonToolsParser(DelegatingParser):  # type: ignore[misc]
        tool_parser_cls = ToolParser

    return JsonToolsParser
