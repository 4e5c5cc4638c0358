#!/usr/bin/env python3
"""The official Python SDK 2.x client (PyPI `mcp` 2.x) connecting to an OAuth-protected catwalk endpoint
with the SDK's own OAuth implementation (`mcp.client.auth.OAuthClientProvider`): discovery from the 401,
dynamic registration, PKCE, `resource`, the RFC 9207 `iss` check, then tools. Prints one JSON summary and
exits non-zero on any failed step.

    .deps/venv-mcp2/bin/python tests/clients/py_oauth_client.py --url URL --approve-cmd JSON_ARGV

The "browser" is this script: the redirect handler fetches the authorization page, runs
JSON_ARGV + ["approve CODE"] (the test's `ssh` command line), reloads until the page redirects, and the
callback handler returns the code, state and iss of that redirect.
"""
import argparse
import asyncio
import json
import re
import subprocess
import sys
import urllib.parse

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT = "http://127.0.0.1:9/py-callback"


class Memory(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull):
        self.client = client_info


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--approve-cmd", required=True)
    args = p.parse_args()
    approve_cmd = json.loads(args.approve_cmd)
    summary = {"steps": []}
    callback: dict = {}

    async def redirect_handler(authorization_url: str) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorization_url).query))
        for name in ("client_id", "code_challenge", "resource", "state"):
            if not query.get(name):
                raise RuntimeError(f"the SDK's authorization URL has no {name}: {authorization_url}")
        if query.get("code_challenge_method") != "S256" or query["resource"] != args.url:
            raise RuntimeError(f"unexpected authorization URL {authorization_url}")
        summary["steps"].append({"authorization_url": {"client_id": query["client_id"], "resource": query["resource"]}})
        async with httpx2.AsyncClient(follow_redirects=False) as http:
            page = await http.get(authorization_url)
            if page.status_code != 200:
                raise RuntimeError(f"authorization page answered {page.status_code}: {page.text}")
            m = re.search(r" approve ([A-Z0-9]{4}-[A-Z0-9]{4})<", page.text)
            if not m:
                raise RuntimeError(f"no approve CODE on the page: {page.text}")
            subprocess.run([*approve_cmd, f"approve {m.group(1)}"], check=True, stdout=subprocess.PIPE)
            summary["steps"].append("approved")
            for _ in range(50):
                again = await http.get(authorization_url)
                if again.status_code in (302, 303):
                    location = again.headers["location"]
                    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
                    callback.update(q)
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError("the page never redirected after approval")

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=callback["code"], state=callback.get("state"), iss=callback.get("iss"))

    storage = Memory()
    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK 2.x test client",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    ok = True
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
            async with Client(streamable_http_client(args.url, http_client=http), mode="legacy") as client:
                tools = await client.list_tools()
                echo = await client.call_tool("echo", {"text": "python oauth"})
                text = echo.content[0].text
                if text != "python oauth":
                    raise RuntimeError(f"echo answered {echo}")
                summary["steps"].append({"called": {"tools": len(tools.tools), "echo": text}})
        if not (storage.tokens and storage.tokens.refresh_token):
            raise RuntimeError("no refresh token was stored")
        # An expired access token: the SDK refreshes it first (rotation) and carries on, with no new
        # authorization (the count of authorization URLs stays the same).
        before = storage.tokens.refresh_token
        provider.context.token_expiry_time = 1.0
        authorizations = sum(1 for s in summary["steps"] if isinstance(s, dict) and "authorization_url" in s)
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
            async with Client(streamable_http_client(args.url, http_client=http), mode="legacy") as client:
                await client.list_tools()
        if storage.tokens.refresh_token == before:
            raise RuntimeError("the refresh token was not rotated")
        if sum(1 for s in summary["steps"] if isinstance(s, dict) and "authorization_url" in s) != authorizations:
            raise RuntimeError("the SDK authorized again instead of refreshing")
        summary["steps"].append({"refreshed": {"rotated": True}})
    except BaseException as e:  # noqa: BLE001 - report everything, including exception groups
        ok = False
        summary["error"] = repr(e)
    summary["ok"] = ok
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
