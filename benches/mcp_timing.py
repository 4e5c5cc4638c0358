#!/usr/bin/env python3
"""Small MCP timers for scripts/bench (QUALITY.md P5 and P7), standard library only.

Raw HTTP/1.1 (http.client) and raw stdio keep the timer's own overhead small and identical on both sides of
a comparison. Every subcommand prints one JSON line on stdout; errors go to stderr with a non-zero exit.

  mcp_timing.py wake --url URL --token T --runs N -- CMD ARGS...
      P7: alternately (a) spawn CMD and time `initialize` over its stdio (the server's own start-up) and
      (b) POST `initialize` to URL, whose app has no running process, and time the answer (wake from zero),
      then DELETE that session so the next run starts from zero again.
  mcp_timing.py start --runs N -- CMD ARGS...
      The server's own start-up: spawn CMD, time `initialize` over its stdio; N runs, median.
  mcp_timing.py new-session --url URL [--token T] --runs N [--pause S]
      P12: N times, open a new session and time its first answer (`initialize`), then time `tools/list` on
      that now established session; DELETE it and pause S seconds (a new conversation's pace) before the next.
  mcp_timing.py push-to-live --repo DIR --remote URL --url MCP_URL --token T [--tool NAME --args JSON]
      P5: commit a change in DIR, then time from the start of `git push` to the first successful
      `tools/call` through MCP_URL; prints the push time, the total and the push output.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

PROTOCOL = "2025-06-18"
INIT_PARAMS = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "catwalk-bench", "version": "1"}}


class McpHttp:
    """One keep-alive connection to a Streamable HTTP endpoint, JSON or SSE answers."""

    def __init__(self, url, token):
        u = urllib.parse.urlsplit(url)
        self.path = u.path or "/"
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        self.token = token
        self.session = None
        self.next_id = 1

    def _headers(self):
        h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if self.token:
            h["authorization"] = "Bearer " + self.token
        if self.session:
            h["mcp-session-id"] = self.session
            h["mcp-protocol-version"] = PROTOCOL
        return h

    def _exchange(self, method, body):
        self.conn.request(method, self.path, body=body, headers=self._headers())
        res = self.conn.getresponse()
        data = res.read()
        return res, data

    def request(self, method, params):
        rid = self.next_id
        self.next_id += 1
        res, data = self._exchange("POST", json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        if res.status != 200:
            raise RuntimeError(f"{method}: HTTP {res.status}: {data[:200]!r}")
        sid = res.getheader("mcp-session-id")
        if sid:
            self.session = sid
        if (res.getheader("content-type") or "").startswith("text/event-stream"):
            messages = []
            for event in data.decode().split("\n\n"):
                lines = [ln[5:].lstrip(" ") for ln in event.splitlines() if ln.startswith("data:")]
                if lines:
                    try:
                        messages.append(json.loads("\n".join(lines)))
                    except ValueError:
                        pass
        else:
            messages = [json.loads(data)]
        for m in messages:
            if isinstance(m, dict) and m.get("id") == rid and "method" not in m:
                if "error" in m:
                    raise RuntimeError(f"{method}: error {m['error']}")
                return m["result"]
        raise RuntimeError(f"{method}: no answer with id {rid}")

    def notify(self, method):
        res, data = self._exchange("POST", json.dumps({"jsonrpc": "2.0", "method": method}))
        if res.status not in (200, 202):
            raise RuntimeError(f"{method}: HTTP {res.status}: {data[:200]!r}")

    def delete(self):
        if self.session:
            self._exchange("DELETE", None)
            self.session = None

    def close(self):
        self.conn.close()


# The environment a directly spawned server gets: close to what catwalk gives its children (which inherit
# nothing), so that variables of the caller (PYTHONDONTWRITEBYTECODE, NODE_OPTIONS, ...) do not make the
# baseline slower or faster than the server under catwalk.
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp"}


def stdio_start(cmd):
    """Seconds from spawning CMD to its answer to `initialize` over stdio."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=CLEAN_ENV)
    try:
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}) + "\n").encode())
        p.stdin.flush()
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd[0]} closed stdout before answering initialize")
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict) and m.get("id") == 1 and "method" not in m:
                if "result" not in m:
                    raise RuntimeError(f"initialize failed: {m}")
                return time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()


def wake(args):
    direct, woken = [], []
    for _ in range(args.runs):
        direct.append(stdio_start(args.cmd) * 1000)
        time.sleep(0.2)  # the previous session's process has been stopped: the app is at zero again
        c = McpHttp(args.url, args.token)
        t0 = time.perf_counter()
        c.request("initialize", INIT_PARAMS)
        woken.append((time.perf_counter() - t0) * 1000)
        c.notify("notifications/initialized")
        c.delete()
        c.close()
        time.sleep(0.2)
    print(json.dumps({"direct_ms": direct, "wake_ms": woken,
                      "direct_median_ms": statistics.median(direct), "wake_median_ms": statistics.median(woken)}))


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def new_session(args):
    first, established = [], []
    for _ in range(args.runs):
        c = McpHttp(args.url, args.token)
        t0 = time.perf_counter()
        c.request("initialize", INIT_PARAMS)
        first.append((time.perf_counter() - t0) * 1000)
        c.notify("notifications/initialized")
        c.request("tools/list", {})  # the session's first request may warm caches; time the next one
        t0 = time.perf_counter()
        c.request("tools/list", {})
        established.append((time.perf_counter() - t0) * 1000)
        c.delete()
        c.close()
        time.sleep(args.pause)
    print(json.dumps({"first_p50_ms": pct(first, 0.5), "first_p99_ms": pct(first, 0.99),
                      "established_p50_ms": pct(established, 0.5), "established_p99_ms": pct(established, 0.99),
                      "runs": args.runs}))


def start(args):
    runs = [stdio_start(args.cmd) * 1000 for _ in range(args.runs)]
    print(json.dumps({"median_ms": statistics.median(runs), "runs_ms": runs}))


def push_to_live(args):
    stamp = os.path.join(args.repo, "bench-stamp.txt")
    with open(stamp, "w") as f:
        f.write(f"{time.time_ns()}\n")
    git = ["git", "-C", args.repo]
    subprocess.run(git + ["add", "bench-stamp.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "bench: new commit"], check=True)
    t0 = time.perf_counter()
    push = subprocess.run(git + ["push", args.remote, "HEAD:main"], capture_output=True, text=True)
    t_push = time.perf_counter() - t0
    if push.returncode != 0:
        raise RuntimeError(f"git push failed ({push.returncode}): {push.stderr[-800:]}")
    tool_args = json.loads(args.args)
    deadline = time.monotonic() + 60
    attempts, last = 0, None
    while time.monotonic() < deadline:
        attempts += 1
        c = McpHttp(args.url, args.token)
        try:
            c.request("initialize", INIT_PARAMS)
            c.notify("notifications/initialized")
            result = c.request("tools/call", {"name": args.tool, "arguments": tool_args})
            if result.get("isError"):
                raise RuntimeError(f"tools/call {args.tool}: {result}")
            t_total = time.perf_counter() - t0
            c.delete()
            break
        except (OSError, RuntimeError, ValueError) as e:
            last = e
            time.sleep(0.01)
        finally:
            c.close()
    else:
        raise RuntimeError(f"no successful tools/call within 60 s after the push; last error: {last}")
    print(json.dumps({"push_ms": t_push * 1000, "total_ms": t_total * 1000, "attempts": attempts,
                      "output": [ln for ln in push.stderr.splitlines() if "----->" in ln]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    w = sub.add_parser("wake")
    w.add_argument("--url", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--runs", type=int, default=10)
    w.add_argument("cmd", nargs="+")
    n = sub.add_parser("new-session")
    n.add_argument("--url", required=True)
    n.add_argument("--token", default=None)
    n.add_argument("--runs", type=int, default=20)
    n.add_argument("--pause", type=float, default=1.5)
    s = sub.add_parser("start")
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("cmd", nargs="+")
    p = sub.add_parser("push-to-live")
    p.add_argument("--repo", required=True)
    p.add_argument("--remote", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--tool", default="get_current_time")
    p.add_argument("--args", default='{"timezone": "UTC"}')
    args = ap.parse_args()
    try:
        {"wake": wake, "start": start, "new-session": new_session, "push-to-live": push_to_live}[args.cmd_name](args)
    except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError) as e:
        print(f"mcp_timing: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
