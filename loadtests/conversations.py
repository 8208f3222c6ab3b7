"""`python -m loadtests conversations`: many concurrent multi-turn conversations through CodeFace's conversation
routes, then a count of what was stored: every message there, statuses and token counts consistent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from loadtests.client import stream_sse_reply

API = "/api/v1/conversations"


async def one_conversation(http: httpx.AsyncClient, turns: int, max_tokens: int, index: int) -> dict[str, Any]:
    created = await http.post(API, json={"title": f"load {index}"})
    created.raise_for_status()
    conversation_id = created.json()["id"]
    ttfts = []
    for turn in range(turns):
        body = {"content": f"Conversation {index}, turn {turn}: tell me something new.", "stream": True,
                "max_tokens": max_tokens, "ignore_eos": True}
        ttft, final = await stream_sse_reply(http, f"{API}/{conversation_id}/messages", body)
        ttfts.append(ttft)
        if final.get("status") not in ("completed", "length"):
            return {"id": conversation_id, "ttfts": ttfts, "error": f"turn {turn}: {final}"}
    return {"id": conversation_id, "ttfts": ttfts, "error": None}


def audit(messages: list[dict[str, Any]], turns: int, max_tokens: int) -> list[str]:
    problems = []
    if len(messages) != 2 * turns:
        problems.append(f"{len(messages)} messages stored, expected {2 * turns}")
    for position, message in enumerate(messages):
        expected_role = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected_role or message["seq"] != position + 1:
            problems.append(f"message {position + 1} is {message['role']} #{message['seq']}")
        if message["role"] == "assistant":
            if message["status"] not in ("completed", "length"):
                problems.append(f"reply {message['seq']} has status {message['status']}")
            if message["completion_tokens"] != max_tokens or not message["content"]:
                problems.append(f"reply {message['seq']} has {message['completion_tokens']} tokens")
        if not message["prompt_tokens"]:
            problems.append(f"message {message['seq']} has no prompt token count")
    return problems


async def run(base_url: str, api_key: str | None, conversations: int, turns: int, max_tokens: int
              ) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=conversations + 8)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_conversation(http, turns, max_tokens, i)
                                         for i in range(conversations)))
        duration = time.perf_counter() - started
        problems: dict[str, list[str]] = {}
        stored = 0
        for result in results:
            page = await http.get(f"{API}/{result['id']}", params={"limit": 500})
            messages = page.json()["messages"]
            stored += len(messages)
            found = ([result["error"]] if result["error"] else []) + audit(messages, turns, max_tokens)
            if found:
                problems[result["id"]] = found
    per_turn = [sorted(r["ttfts"][t] for r in results if len(r["ttfts"]) > t) for t in range(turns)]
    return {
        "conversations": conversations, "turns": turns, "duration_s": round(duration, 1),
        "messages_expected": 2 * turns * conversations, "messages_stored": stored,
        "conversations_with_problems": len(problems), "problems": dict(list(problems.items())[:5]),
        "median_ttft_ms_by_turn": [round(1000 * t[len(t) // 2], 1) if t else None for t in per_turn],
    }
