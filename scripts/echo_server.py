#!/usr/bin/env python3
"""Minimal, fast stdio MCP server with one tool, `echo` (no dependencies beyond the standard library).

The benchmark's reference child (QUALITY.md P1/P2): it answers initialize, ping, tools/list and
tools/call echo, ignores notifications, and answers anything else with -32601. One JSON-RPC message per line
on stdin/stdout; each answer is written and flushed immediately. Batches (JSON arrays) are answered as arrays.
"""

import json
import sys

SUPPORTED = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
TOOLS = {
    "tools": [
        {
            "name": "echo",
            "description": "Echoes back the input string",
            "inputSchema": {
                "type": "object",
                "properties": {"message": {"type": "string", "description": "Message to echo"}},
                "required": ["message"],
            },
        }
    ]
}


def handle(msg):
    """The response to one message, or None for notifications and responses."""
    if not isinstance(msg, dict) or "method" not in msg:
        return None
    mid = msg.get("id")
    if mid is None:
        return None
    method = msg["method"]
    params = msg.get("params") or {}
    if method == "tools/call":
        if params.get("name") != "echo":
            return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": f"Unknown tool: {params.get('name')}"}}
        text = str((params.get("arguments") or {}).get("message", ""))
        return {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "Echo: " + text}]}}
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED else SUPPORTED[0]
        return {
            "jsonrpc": "2.0",
            "id": mid,
            "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "catwalk-echo", "version": "1.0.0"},
            },
        }
    if method == "ping":
        return {"jsonrpc": "2.0", "id": mid, "result": {}}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": mid, "result": TOOLS}
    return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"Method not found: {method}"}}


def main():
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
        else:
            if isinstance(msg, list):
                replies = [r for r in map(handle, msg) if r is not None]
                reply = replies or None
            else:
                reply = handle(msg)
        if reply is not None:
            out.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            out.flush()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
