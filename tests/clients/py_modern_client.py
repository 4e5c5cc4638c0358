#!/usr/bin/env python3
"""The official Python SDK 2.x client (`mcp.Client`) in each of its version-negotiation modes against an MCP
endpoint. Prints one JSON summary; exits non-zero when any scenario failed.

    venv-mcp2/bin/python tests/clients/py_modern_client.py --url URL --mode legacy|auto|2026-07-28 [--token T]

Modes (`Client.mode`): `legacy` (the initialize handshake), `auto` (probes server/discover and must settle on
2026-07-28 when the server offers it), `2026-07-28` (pinned, no probe). Scenarios, tools picked from tools/list
so server-everything and mcp-server-time both work:
    era      the negotiated version is the one the mode must reach
    basic    tools/list, then a tools/call (echo, get_current_time or shout) whose text is checked
    parallel five tools/call at once, each answer matched to its own question
    elicitation  server-everything's trigger-elicitation-request: the server asks this client for input
             (2026-07-28: an input_required result the SDK fulfils and retries) and shows the answer
    sampling the same with trigger-sampling-request and a sampling answer
    rounds   one call that asks for input twice: the handshake-era fixture's sample_twice (two sampling
             requests, one after the other) or the 2026-07-28 fixture's greet (two input_required rounds
             of elicitation); both answers must reach the result
"""

import argparse
import asyncio
import json
import sys

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

MODERN = "2026-07-28"
ELICITED = "Ada Lovelace"
SAMPLED = "catwalk sampling answer 42"


GREETING = "Hello"


async def on_elicit(context, params):
    # Fills what the form asks for: a name, or (the second round of greet) a greeting word.
    wanted = (getattr(params, "requested_schema", None) or {}).get("properties", {})
    content = {"word": GREETING} if "word" in wanted else {"name": ELICITED}
    return types.ElicitResult(action="accept", content=content)


async def on_sample(context, params):
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLED),
        model="catwalk-test-model",
        stop_reason="endTurn",
    )


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call_something(client, tools, tag):
    if "echo" in tools:
        r = await client.call_tool("echo", {"message": f"hello {tag}"})
        if f"hello {tag}" not in text(r):
            raise AssertionError(f"echo answered {r!r}")
        return text(r)
    if "get_current_time" in tools:
        r = await client.call_tool("get_current_time", {"timezone": "UTC"})
        if "UTC" not in text(r):
            raise AssertionError(f"get_current_time answered {r!r}")
        return text(r)
    if "shout" in tools:
        r = await client.call_tool("shout", {"text": f"hello {tag}"})
        if f"HELLO {tag.upper()}" not in text(r):
            raise AssertionError(f"shout answered {r!r}")
        return text(r)
    raise AssertionError(f"no known tool among {tools}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", default="auto", choices=["legacy", "auto", MODERN])
    ap.add_argument("--token")
    ap.add_argument("--scenario", default="era,basic,parallel")
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    summary = {"ok": True, "mode": a.mode, "scenarios": {}}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        transport = streamable_http_client(a.url, http_client=http)
        async with Client(
            transport, mode=a.mode, elicitation_callback=on_elicit, sampling_callback=on_sample
        ) as client:
            session = client.session
            negotiated = getattr(session, "_negotiated_version", None)
            summary["negotiated"] = negotiated

            async def tool_names():
                return [t.name for t in (await client.list_tools()).tools]

            async def era():
                want_modern = a.mode != "legacy"
                if want_modern and negotiated != MODERN:
                    raise AssertionError(f"negotiated {negotiated}, expected {MODERN}")
                if not want_modern and negotiated == MODERN:
                    raise AssertionError(f"legacy mode negotiated {negotiated}")
                return {"version": negotiated}

            async def basic():
                tools = await tool_names()
                return {"tools": len(tools), "answer": await call_something(client, tools, "basic")}

            async def parallel():
                tools = await tool_names()
                answers = await asyncio.gather(*(call_something(client, tools, f"p{i}") for i in range(5)))
                return {"answers": len(answers)}

            async def elicitation():
                r = await client.call_tool("trigger-elicitation-request", {})
                if ELICITED not in text(r):
                    raise AssertionError(f"the elicited name is not in {r!r}")
                return {"answer": text(r)[:80]}

            async def sampling():
                r = await client.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
                if SAMPLED not in text(r):
                    raise AssertionError(f"the sampled text is not in {r!r}")
                return {"answer": "sampled"}

            async def rounds():
                tools = await tool_names()
                if "sample_twice" in tools:
                    r = await client.call_tool("sample_twice", {})
                    want = f"sampled twice: {SAMPLED}, {SAMPLED}"
                elif "greet" in tools:
                    r = await client.call_tool("greet", {})
                    want = f"{GREETING}, {ELICITED}"
                else:
                    raise AssertionError(f"no tool that asks twice among {tools}")
                if want not in text(r):
                    raise AssertionError(f"expected {want!r} in {r!r}")
                return {"answer": text(r)[:80]}

            run = {
                "era": era,
                "basic": basic,
                "parallel": parallel,
                "elicitation": elicitation,
                "sampling": sampling,
                "rounds": rounds,
            }
            for name in a.scenario.split(","):
                try:
                    summary["scenarios"][name] = {"ok": True, **(await run[name]())}
                except Exception as e:  # noqa: BLE001 - every failure is reported in the summary
                    summary["ok"] = False
                    summary["scenarios"][name] = {"ok": False, "error": repr(e)}
    print(json.dumps(summary, indent=2))
    sys.exit(0 if summary["ok"] else 1)


asyncio.run(main())
