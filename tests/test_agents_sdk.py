"""The OpenAI Agents SDK (openai-agents) end to end with its default Responses model pointed at the real server (real
CPU engine): multi-turn runs (the history sent again, and previous_response_id), a forced function tool whose result
goes back to the model before the final output, and OpenAIConversationsSession over /v1/conversations. The 135M model
is weak: the tests check the mechanics (calls, their arguments against the schema, items, ends), not its answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem

# The SDK raises on a response that ends incomplete: room enough for the model to end its answer.
SETTINGS = ModelSettings(temperature=0, max_tokens=160)


@pytest.fixture
def client(server_url: str, admin_key: str) -> openai.AsyncOpenAI:
    """A client per test: an AsyncOpenAI belongs to the event loop of the test's asyncio.run."""
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)
    set_default_openai_client(client, use_for_tracing=False)
    set_tracing_disabled(True)
    return client


def an_agent(client: openai.AsyncOpenAI, model_name: str, **kwargs: Any) -> Agent[Any]:
    model = OpenAIResponsesModel(model=model_name, openai_client=client)
    return Agent(name="assistant", instructions="Answer in one short sentence.", model=model,
                 **{"model_settings": SETTINGS, **kwargs})


def test_multi_turn_runs(client: openai.AsyncOpenAI, model_name: str) -> None:
    agent = an_agent(client, model_name)

    async def turns() -> tuple[Any, Any, Any]:
        first = await Runner.run(agent, "My name is Ada. Say hello.")
        resent = await Runner.run(agent, [*first.to_input_list(), {"role": "user", "content": "What is my name?"}])
        chained = await Runner.run(agent, "What is my name?", previous_response_id=first.last_response_id)
        return first, resent, chained

    first, resent, chained = asyncio.run(turns())
    assert all(isinstance(run.final_output, str) and run.final_output for run in (first, resent, chained))
    first_usage = first.raw_responses[0].usage
    # Both second turns were prompted with the first turn: the history sent again, or read along the chain.
    for second in (resent, chained):
        assert second.raw_responses[0].usage.input_tokens > first_usage.input_tokens + first_usage.output_tokens
    assert chained.raw_responses[0].usage.input_tokens == resent.raw_responses[0].usage.input_tokens


@pytest.mark.parametrize("streamed", [False, True])
def test_a_forced_function_tool_and_its_result(client: openai.AsyncOpenAI, model_name: str, streamed: bool) -> None:
    """Run, and run_streamed (the function call's arguments assembled from the semantic events)."""
    calls: list[dict[str, Any]] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append({"city": city})
        return f"It is 21 C and sunny in {city}."

    agent = an_agent(client, model_name, tools=[get_weather],
                     model_settings=SETTINGS.resolve(ModelSettings(tool_choice="get_weather")))
    async def run() -> Any:
        if not streamed:
            return await Runner.run(agent, "What is the weather in Rome?", max_turns=4)
        running = Runner.run_streamed(agent, "What is the weather in Rome?", max_turns=4)
        async for _ in running.stream_events():
            pass
        return running

    result = asyncio.run(run())
    assert calls and isinstance(calls[0]["city"], str)  # the tool ran, the SDK parsed the arguments
    call = next(item for item in result.new_items if isinstance(item, ToolCallItem))
    jsonschema.validate(json.loads(call.raw_item.arguments), get_weather.params_json_schema)  # type: ignore
    output = next(item for item in result.new_items if isinstance(item, ToolCallOutputItem))
    assert "21 C" in output.output
    # The tool's result went back to the model, which then answered (tool_choice resets after the call).
    assert isinstance(result.new_items[-1], MessageOutputItem) and isinstance(result.final_output, str)
    assert result.final_output.strip() and len(result.raw_responses) >= 2
    assert result.raw_responses[-1].usage.input_tokens > result.raw_responses[0].usage.input_tokens


def test_a_conversations_session_shares_history(client: openai.AsyncOpenAI, model_name: str) -> None:
    agent = an_agent(client, model_name)

    async def two_runs() -> tuple[str, Any, Any, list[Any]]:
        session = OpenAIConversationsSession(openai_client=client)
        first = await Runner.run(agent, "My name is Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        conversation_id = session.session_id
        items = [item async for item in client.conversations.items.list(conversation_id, order="asc")]
        return conversation_id, first, second, items

    conversation_id, first, second, items = asyncio.run(two_runs())
    assert conversation_id.startswith("conv_")
    texts = [(item.role, item.content[0].text) for item in items]
    assert texts == [("user", "My name is Ada."), ("assistant", first.final_output),
                     ("user", "What is my name?"), ("assistant", second.final_output)]
    first_usage = first.raw_responses[0].usage
    assert second.raw_responses[0].usage.input_tokens > first_usage.input_tokens + first_usage.output_tokens
