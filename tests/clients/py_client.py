#!/usr/bin/env python3
"""Official Python SDK client (`mcp<2`: streamablehttp_client + ClientSession) driving an MCP server over
Streamable HTTP through a set of scenarios. Prints one JSON summary on stdout and exits 0 only when every
requested scenario passed.

    .deps/venv/bin/python tests/clients/py_client.py --url URL [--token T] [--scenario all|NAME[,NAME...]]

Scenarios (the tool used for each is picked from tools/list, so they work against server-everything and
tests/fixtures/conformance_server.mjs):
  basic        initialize, tools/list contains echo, tools/call echo
  progress     call_tool(progress_callback=...) sees >= 2 increasing progress notifications
  logging      logging/setLevel debug, then logging_callback receives a notifications/message
  sampling     sampling_callback answers the server's sampling/createMessage; the answer comes back
  elicitation  elicitation_callback accepts the server's elicitation/create; the result reflects it
  subscribe    resources/subscribe, then notifications/resources/updated arrives (message_handler)
  terminate    leaving the client context sends DELETE; a request with the old Mcp-Session-Id gets 404
  isolation    two sessions get different ids and isolated state (server-everything only)
  time         mcp-server-time: get_current_time(timezone=UTC) answers with a UTC datetime
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import warnings
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

warnings.simplefilter("ignore", DeprecationWarning)

import httpx  # noqa: E402
import mcp.types as types  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402
from pydantic import AnyUrl  # noqa: E402

DEFAULT = ["basic", "progress", "logging", "sampling", "elicitation", "subscribe", "terminate", "isolation"]
KNOWN = DEFAULT + ["time"]
SAMPLING_ANSWER = "catwalk sampling answer 42"


class Seen:
    """What the server sent this client, filled by the session callbacks."""

    def __init__(self) -> None:
        self.logs: list[Any] = []
        self.updates: list[str] = []
        self.sampling = 0
        self.elicitation = 0


def fill_form(schema: dict[str, Any]) -> dict[str, Any]:
    """An answer to an elicitation form that validates against its requested schema."""
    out: dict[str, Any] = {}
    formats = {"email": "test@example.com", "uri": "https://example.com", "date": "2000-01-01", "date-time": "2000-01-01T00:00:00Z"}
    for key, p in (schema.get("properties") or {}).items():
        if "default" in p:
            out[key] = p["default"]
        elif "enum" in p:
            out[key] = p["enum"][0]
        elif "oneOf" in p:
            out[key] = p["oneOf"][0]["const"]
        elif p.get("type") == "string":
            out[key] = formats.get(p.get("format", ""), "catwalk-test" if key in ("name", "username") else "catwalk")
        elif p.get("type") in ("integer", "number"):
            out[key] = p.get("minimum", 1)
        elif p.get("type") == "boolean":
            out[key] = True
        elif p.get("type") == "array":
            items = p.get("items") or {}
            out[key] = [(items.get("enum") or [None])[0] or ((items.get("anyOf") or [{}])[0].get("const")) or "catwalk"]
    return out


class Client:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    @asynccontextmanager
    async def connect(self, name: str = "catwalk-py-client"):
        seen = Seen()

        async def sampling_cb(_ctx, _params: types.CreateMessageRequestParams):
            seen.sampling += 1
            return types.CreateMessageResult(
                role="assistant",
                model="catwalk-test-model",
                stopReason="endTurn",
                content=types.TextContent(type="text", text=SAMPLING_ANSWER),
            )

        async def elicitation_cb(_ctx, params):
            seen.elicitation += 1
            schema = getattr(params, "requestedSchema", None) or {}
            return types.ElicitResult(action="accept", content=fill_form(schema))

        async def logging_cb(params: types.LoggingMessageNotificationParams):
            seen.logs.append(params.model_dump(mode="json"))

        async def message_handler(message):
            if isinstance(message, types.ServerNotification) and isinstance(message.root, types.ResourceUpdatedNotification):
                seen.updates.append(str(message.root.params.uri))

        async with streamablehttp_client(self.url, headers=self.headers, timeout=self.timeout) as (read, write, get_sid):
            async with ClientSession(
                read,
                write,
                read_timeout_seconds=timedelta(seconds=self.timeout),
                sampling_callback=sampling_cb,
                elicitation_callback=elicitation_cb,
                logging_callback=logging_cb,
                message_handler=message_handler,
                client_info=types.Implementation(name=name, version="1.0.0"),
            ) as session:
                init = await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                yield session, seen, tools, get_sid, init


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def need(tools: list[str], names: list[str], what: str) -> str:
    for n in names:
        if n in tools:
            return n
    raise RuntimeError(f"server has no {what} tool (looked for {', '.join(names)}; it has {', '.join(tools)})")


async def wait_for(cond, secs: float, what: str) -> None:
    end = time.monotonic() + secs
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {secs:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


class Scenarios:
    def __init__(self, c: Client) -> None:
        self.c = c

    async def basic(self):
        async with self.c.connect() as (s, _seen, tools, get_sid, init):
            if not get_sid():
                raise RuntimeError("no Mcp-Session-Id after initialize")
            if "echo" not in tools:
                raise RuntimeError(f"tools/list lacks echo: {tools}")
            r = await s.call_tool("echo", {"message": "hello from python"})
            if "hello from python" not in text_of(r):
                raise RuntimeError(f"echo answered {r.model_dump_json()}")
            return {"server": init.serverInfo.name, "protocolVersion": init.protocolVersion, "tools": len(tools), "echo": text_of(r)}

    async def progress(self):
        async with self.c.connect() as (s, _seen, tools, _g, _i):
            tool = need(tools, ["test_tool_with_progress", "trigger-long-running-operation"], "progress")
            args = {"duration": 1, "steps": 3} if tool == "trigger-long-running-operation" else {}
            got: list[float] = []

            async def on_progress(progress: float, _total: float | None, _msg: str | None) -> None:
                got.append(progress)

            await s.call_tool(tool, args, progress_callback=on_progress)
            if len(got) < 2:
                raise RuntimeError(f"expected >= 2 progress notifications, got {got}")
            if any(b < a for a, b in zip(got, got[1:])):
                raise RuntimeError(f"progress not increasing: {got}")
            return {"tool": tool, "progress": got}

    async def logging(self):
        async with self.c.connect() as (s, seen, tools, _g, _i):
            await s.set_logging_level("debug")
            tool = need(tools, ["test_tool_with_logging", "toggle-simulated-logging"], "logging")
            await s.call_tool(tool, {})
            await wait_for(lambda: len(seen.logs) > 0, self.c.timeout, "a notifications/message")
            if tool == "toggle-simulated-logging":
                await s.call_tool(tool, {})
            return {"tool": tool, "messages": len(seen.logs), "first": seen.logs[0]}

    async def sampling(self):
        async with self.c.connect() as (s, seen, tools, _g, _i):
            tool = need(tools, ["test_sampling", "trigger-sampling-request"], "sampling")
            r = await s.call_tool(tool, {"prompt": "say something"})
            if seen.sampling != 1:
                raise RuntimeError(f"sampling callback called {seen.sampling} times")
            if SAMPLING_ANSWER not in text_of(r):
                raise RuntimeError(f"tool result lacks the sampling answer: {text_of(r)[:300]}")
            return {"tool": tool, "result": text_of(r)[:200]}

    async def elicitation(self):
        async with self.c.connect() as (s, seen, tools, _g, _i):
            tool = need(tools, ["test_elicitation", "trigger-elicitation-request"], "elicitation")
            r = await s.call_tool(tool, {"message": "Please provide your information"})
            if seen.elicitation != 1:
                raise RuntimeError(f"elicitation callback called {seen.elicitation} times")
            t = text_of(r)
            if "accept" not in t and "provided the requested" not in t:
                raise RuntimeError(f"tool result does not reflect the accepted elicitation: {t[:300]}")
            return {"tool": tool, "result": t[:200]}

    async def subscribe(self):
        async with self.c.connect() as (s, seen, tools, _g, _i):
            everything = "toggle-subscriber-updates" in tools
            uri = "demo://resource/dynamic/text/1" if everything else "test://watched-resource"
            # The update travels on the standalone GET stream; retry in case it was not open yet.
            for attempt in range(1, 4):
                await s.subscribe_resource(AnyUrl(uri))
                if everything:
                    await s.call_tool("toggle-subscriber-updates", {})
                try:
                    await wait_for(lambda: uri in seen.updates, self.c.timeout / 3, f"notifications/resources/updated for {uri}")
                except RuntimeError:
                    if attempt == 3:
                        raise
                if everything:
                    await s.call_tool("toggle-subscriber-updates", {})
                await s.unsubscribe_resource(AnyUrl(uri))
                if uri in seen.updates:
                    break
            return {"uri": uri, "updates": len(seen.updates)}

    async def terminate(self):
        async with self.c.connect() as (_s, _seen, _tools, get_sid, init):
            sid = get_sid()
            version = init.protocolVersion
        if not sid:
            raise RuntimeError("no Mcp-Session-Id after initialize")
        # Leaving streamablehttp_client (terminate_on_close=True) sent DELETE for `sid`.
        async with httpx.AsyncClient(timeout=self.c.timeout) as http:
            res = await http.post(
                self.c.url,
                headers={
                    **self.c.headers,
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": sid,
                    "mcp-protocol-version": str(version),
                },
                content=json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {}}),
            )
        if res.status_code != 404:
            raise RuntimeError(f"request on terminated session got HTTP {res.status_code}, want 404")
        return {"terminatedSession": sid, "statusAfter": res.status_code}

    async def isolation(self):
        async with self.c.connect("catwalk-py-a") as (a, _sa, tools, sid_a, _i):
            async with self.c.connect("catwalk-py-b") as (b, _sb, _t, sid_b, _j):
                if not sid_a() or sid_a() == sid_b():
                    raise RuntimeError(f"session ids not distinct: {sid_a()} / {sid_b()}")
                tool = need(tools, ["toggle-simulated-logging"], "per-session state (toggle-simulated-logging)")
                ra = text_of(await a.call_tool(tool, {}))
                rb = text_of(await b.call_tool(tool, {}))
                ra2 = text_of(await a.call_tool(tool, {}))
                rb2 = text_of(await b.call_tool(tool, {}))
                if not (ra.startswith("Started") and rb.startswith("Started")):
                    raise RuntimeError(f'state shared between sessions: A="{ra[:60]}" B="{rb[:60]}"')
                if not (ra2.startswith("Stopped") and rb2.startswith("Stopped")):
                    raise RuntimeError(f'second toggle did not stop: A="{ra2[:60]}" B="{rb2[:60]}"')
                return {"sessions": [sid_a(), sid_b()]}

    async def time(self):
        async with self.c.connect() as (s, _seen, tools, _g, _i):
            need(tools, ["get_current_time"], "mcp-server-time")
            r = await s.call_tool("get_current_time", {"timezone": "UTC"})
            if r.isError:
                raise RuntimeError(f"get_current_time failed: {text_of(r)}")
            data = json.loads(text_of(r))
            if data.get("timezone") != "UTC" or "datetime" not in data:
                raise RuntimeError(f"unexpected get_current_time answer: {data}")
            return {"answer": data}


def leaf_errors(e: BaseException) -> list[BaseException]:
    """The innermost exceptions of (nested) exception groups, which carry the useful message."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in leaf_errors(sub)]
    return [e]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token")
    ap.add_argument("--scenario", default="all", help=f"all (= {','.join(DEFAULT)}) or a comma list of {','.join(KNOWN)}")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    names = DEFAULT if args.scenario == "all" else args.scenario.split(",")
    for n in names:
        if n not in KNOWN:
            ap.error(f"unknown scenario {n} (known: {', '.join(KNOWN)})")

    scenarios = Scenarios(Client(args.url, args.token, args.timeout))
    summary: dict[str, Any] = {"client": "python-sdk", "url": args.url, "ok": True, "scenarios": {}}
    for n in names:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(getattr(scenarios, n)(), timeout=args.timeout * 2)
            summary["scenarios"][n] = {"ok": True, "ms": int((time.monotonic() - started) * 1000), "detail": detail}
        except BaseException as e:  # noqa: BLE001 - every failure becomes a reported scenario failure
            if isinstance(e, KeyboardInterrupt):
                raise
            summary["ok"] = False
            msg = "; ".join(f"{type(x).__name__}: {x}" for x in leaf_errors(e))
            summary["scenarios"][n] = {"ok": False, "ms": int((time.monotonic() - started) * 1000), "error": msg}
    print(json.dumps(summary, indent=2, default=str))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
