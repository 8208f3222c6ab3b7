"""The pre-encoded frame of a content-only step is byte for byte what the general framer makes of it, and every step
it does not cover (finish, logprobs, token ids, parsed parts, several choices, usage on every chunk) falls back."""

from __future__ import annotations

import json

import pytest

from engine import ChoiceDelta, TokenLogprob, ToolCallDelta
from server.apis.openai.chunks import ChunkWriter

AWKWARD = ['plain', ' "quoted" \\ back', "line\nbreak\ttab", "ünïcødé 漢字 🙂", "\u2028\u2029", "%d %s %%", "\x00\x1f"]


def writer(include_usage: bool, continuous_usage: bool = False) -> ChunkWriter:
    return ChunkWriter('chatcmpl-"odd"%d', 'model "x" %s', "fp_0123456789", include_usage=include_usage,
                       continuous_usage=continuous_usage)


def general(framer: ChunkWriter, choices: list[ChoiceDelta]) -> bytes:
    return framer.chunk(framer.deltas(choices))


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("index", [0, 3, 12])
@pytest.mark.parametrize("content", AWKWARD)
def test_a_content_step_is_framed_as_the_general_framer_frames_it(include_usage: bool, index: int,
                                                                   content: str) -> None:
    framer = writer(include_usage)
    choices = [ChoiceDelta(index=index, text=content, num_tokens=1, content=content)]
    fast = framer.content_only(choices)
    assert fast == general(framer, choices)
    assert fast is not None and fast.startswith(b"data: ") and fast.endswith(b"\n\n")
    body = json.loads(fast[len(b"data: "):])
    assert body["choices"] == [{"index": index, "delta": {"content": content}, "logprobs": None,
                                "finish_reason": None}]
    assert ("usage" in body) is include_usage


@pytest.mark.parametrize("choices", [
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", finish_reason="stop")],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", finish_reason="abort")],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", logprobs=[TokenLogprob("a", -0.1, [])])],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", token_ids=[7])],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", reasoning="hm")],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a", tool_calls=[ToolCallDelta(0, "id", "f", "{}")])],
    [ChoiceDelta(index=0, text="", num_tokens=1, content="")],
    [ChoiceDelta(index=0, text="", num_tokens=1, content=None)],
    [ChoiceDelta(index=0, text="a", num_tokens=1, content="a"), ChoiceDelta(index=1, text="b", num_tokens=1,
                                                                             content="b")],
])
def test_any_other_step_is_left_to_the_general_framer(choices: list[ChoiceDelta]) -> None:
    assert writer(include_usage=True).content_only(choices) is None


def test_usage_on_every_chunk_is_left_to_the_general_framer() -> None:
    choices = [ChoiceDelta(index=0, text="a", num_tokens=1, content="a")]
    assert writer(include_usage=True, continuous_usage=True).content_only(choices) is None
