#!/usr/bin/env node
// Official TypeScript SDK client (@modelcontextprotocol/sdk Client + StreamableHTTPClientTransport) driving
// an MCP server over Streamable HTTP through a set of scenarios. Prints one JSON summary on stdout and exits
// 0 only when every requested scenario passed.
//
//   node22 tests/clients/ts_client.mjs --url URL [--token T] [--scenario all|NAME[,NAME...]] [--timeout SECS]
//
// Scenarios (work against server-everything and tests/fixtures/conformance_server.mjs; the tool used for
// each is picked from tools/list):
//   basic        initialize, tools/list contains echo, tools/call echo
//   progress     tools/call with a progress token; onprogress sees >= 2 increasing notifications
//   logging      logging/setLevel debug, then a notifications/message arrives
//   sampling     the server's sampling/createMessage is answered by this client and the answer comes back
//   elicitation  the server's elicitation/create is answered (accept) and the tool result reflects it
//   subscribe    resources/subscribe, then notifications/resources/updated arrives (standalone GET stream)
//   terminate    DELETE ends the session; a request with the old Mcp-Session-Id then gets 404
//   isolation    two clients get different session ids and isolated state (server-everything only:
//                toggle-simulated-logging must report "Started" in both sessions)
//   greet        (not in "all"; tests/fixtures/modern_stdio_server.py) the `greet` tool asks for input twice
//                (a name, then a greeting word); both elicitations are answered and the greeting comes back
// The SDK is loaded from $CATWALK_NODE_MODULES, $CATWALK_TEST_DEPS/node/node_modules or <repo>/.deps/node/node_modules.

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

function nodeModulesDir() {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    process.env.CATWALK_NODE_MODULES,
    process.env.CATWALK_TEST_DEPS && join(process.env.CATWALK_TEST_DEPS, "node", "node_modules"),
    resolve(here, "..", "..", ".deps", "node", "node_modules"),
  ].filter(Boolean);
  for (const dir of candidates) {
    if (existsSync(join(dir, "@modelcontextprotocol", "sdk", "package.json"))) return dir;
  }
  console.error(`ts_client: @modelcontextprotocol/sdk not found in ${candidates.join(", ")}; run ./scripts/test-deps first`);
  process.exit(2);
}
const NM = nodeModulesDir();
const sdk = (p) => import(pathToFileURL(join(NM, "@modelcontextprotocol", "sdk", "dist", "esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const T = await sdk("types.js");

const ALL = ["basic", "progress", "logging", "sampling", "elicitation", "subscribe", "terminate", "isolation"];
// Scenarios for particular servers, run only when named.
const KNOWN = [...ALL, "greet"];
const SAMPLING_ANSWER = "catwalk sampling answer 42";

function parseArgs(argv) {
  const o = { url: "", token: "", scenarios: ALL, timeout: 30 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--url") o.url = v();
    else if (a === "--token") o.token = v();
    else if (a === "--scenario") {
      const s = v();
      o.scenarios = s === "all" ? ALL : s.split(",");
    } else if (a === "--timeout") o.timeout = Number(v());
    else usage(`unknown argument ${a}`);
  }
  if (!o.url) usage("--url is required");
  for (const s of o.scenarios) if (!KNOWN.includes(s)) usage(`unknown scenario ${s} (known: ${KNOWN.join(", ")})`);
  return o;
}
function usage(msg) {
  console.error(`ts_client: ${msg}\nusage: ts_client.mjs --url URL [--token T] [--scenario all|${ALL.join("|")}[,...]] [--timeout SECS]`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const authHeaders = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};

/** Resolves when `cond()` is true, polling; rejects after `ms` with `what` in the message. */
async function waitFor(cond, ms, what) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Fills an elicitation form from its requested JSON schema so the answer validates. */
function fillForm(schema) {
  const out = {};
  for (const [k, p] of Object.entries(schema?.properties ?? {})) {
    if (p.default !== undefined) out[k] = p.default;
    else if (p.enum) out[k] = p.enum[0];
    else if (p.oneOf) out[k] = p.oneOf[0].const;
    else if (p.type === "string") {
      out[k] = { email: "test@example.com", uri: "https://example.com", date: "2000-01-01", "date-time": "2000-01-01T00:00:00Z" }[p.format] ?? (k === "name" || k === "username" ? "catwalk-test" : "catwalk");
    } else if (p.type === "integer" || p.type === "number") out[k] = p.minimum ?? 1;
    else if (p.type === "boolean") out[k] = true;
    else if (p.type === "array") out[k] = [p.items?.enum?.[0] ?? p.items?.anyOf?.[0]?.const ?? "catwalk"];
  }
  return out;
}

/** A connected client that records what the server sent it. */
async function connect(name = "catwalk-ts-client") {
  const seen = { logs: [], updates: [], sampling: 0, elicitation: 0, elicitationRequests: [] };
  const client = new Client({ name, version: "1.0.0" }, { capabilities: { sampling: {}, elicitation: {} } });
  client.setNotificationHandler(T.LoggingMessageNotificationSchema, (n) => seen.logs.push(n.params));
  client.setNotificationHandler(T.ResourceUpdatedNotificationSchema, (n) => seen.updates.push(n.params.uri));
  client.setRequestHandler(T.CreateMessageRequestSchema, async () => {
    seen.sampling++;
    return { model: "catwalk-test-model", role: "assistant", stopReason: "endTurn", content: { type: "text", text: SAMPLING_ANSWER } };
  });
  client.setRequestHandler(T.ElicitRequestSchema, async (req) => {
    seen.elicitation++;
    seen.elicitationRequests.push(req.params);
    return { action: "accept", content: fillForm(req.params.requestedSchema) };
  });
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers: authHeaders } });
  await client.connect(transport);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const pick = (...names) => names.find((n) => tools.includes(n));
  return { client, transport, seen, tools, pick };
}

const textOf = (res) => (res.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
function need(c, names, what) {
  const t = c.pick(...names);
  if (!t) throw new Error(`server has no ${what} tool (looked for ${names.join(", ")}; it has ${c.tools.join(", ")})`);
  return t;
}

const scenarios = {
  async basic() {
    const c = await connect();
    try {
      if (!c.transport.sessionId) throw new Error("no Mcp-Session-Id after initialize");
      const server = c.client.getServerVersion();
      if (!c.tools.includes("echo")) throw new Error(`tools/list lacks echo: ${c.tools.join(", ")}`);
      const r = await c.client.callTool({ name: "echo", arguments: { message: "hello from ts" } });
      if (!textOf(r).includes("hello from ts")) throw new Error(`echo answered ${JSON.stringify(r)}`);
      return { server: server?.name, protocolVersion: c.transport.protocolVersion, tools: c.tools.length, echo: textOf(r) };
    } finally {
      await c.client.close();
    }
  },
  async progress() {
    const c = await connect();
    try {
      const tool = need(c, ["test_tool_with_progress", "trigger-long-running-operation"], "progress");
      const args = tool === "trigger-long-running-operation" ? { duration: 1, steps: 3 } : {};
      const seen = [];
      await c.client.callTool({ name: tool, arguments: args }, T.CallToolResultSchema, { onprogress: (p) => seen.push(p.progress), timeout: opts.timeout * 1000 });
      if (seen.length < 2) throw new Error(`expected >= 2 progress notifications, got ${JSON.stringify(seen)}`);
      if (seen.some((p, i) => i > 0 && p < seen[i - 1])) throw new Error(`progress not increasing: ${seen}`);
      return { tool, progress: seen };
    } finally {
      await c.client.close();
    }
  },
  async logging() {
    const c = await connect();
    try {
      await c.client.setLoggingLevel("debug");
      const tool = need(c, ["test_tool_with_logging", "toggle-simulated-logging"], "logging");
      await c.client.callTool({ name: tool, arguments: {} });
      await waitFor(() => c.seen.logs.length > 0, opts.timeout * 1000, "a notifications/message");
      if (tool === "toggle-simulated-logging") await c.client.callTool({ name: tool, arguments: {} });
      return { tool, messages: c.seen.logs.length, first: c.seen.logs[0] };
    } finally {
      await c.client.close();
    }
  },
  async sampling() {
    const c = await connect();
    try {
      const tool = need(c, ["test_sampling", "trigger-sampling-request"], "sampling");
      const r = await c.client.callTool({ name: tool, arguments: { prompt: "say something" } }, T.CallToolResultSchema, { timeout: opts.timeout * 1000 });
      if (c.seen.sampling !== 1) throw new Error(`sampling handler called ${c.seen.sampling} times`);
      if (!textOf(r).includes(SAMPLING_ANSWER)) throw new Error(`tool result lacks the sampling answer: ${textOf(r)}`);
      return { tool, result: textOf(r).slice(0, 200) };
    } finally {
      await c.client.close();
    }
  },
  async greet() {
    const c = await connect();
    try {
      const r = await c.client.callTool({ name: "greet", arguments: {} }, T.CallToolResultSchema, { timeout: opts.timeout * 1000 });
      if (c.seen.elicitation !== 2) throw new Error(`elicitation handler called ${c.seen.elicitation} times, not twice`);
      const t = textOf(r);
      if (!t.startsWith("catwalk, catwalk-test")) throw new Error(`the greeting does not carry both answers: ${t}`);
      return { result: t, asked: c.seen.elicitationRequests.map((p) => p.message) };
    } finally {
      await c.client.close();
    }
  },
  async elicitation() {
    const c = await connect();
    try {
      const tool = need(c, ["test_elicitation", "trigger-elicitation-request"], "elicitation");
      const r = await c.client.callTool({ name: tool, arguments: { message: "Please provide your information" } }, T.CallToolResultSchema, { timeout: opts.timeout * 1000 });
      if (c.seen.elicitation !== 1) throw new Error(`elicitation handler called ${c.seen.elicitation} times`);
      const t = textOf(r);
      if (!/accept|provided the requested/i.test(t)) throw new Error(`tool result does not reflect the accepted elicitation: ${t}`);
      return { tool, result: t.slice(0, 200) };
    } finally {
      await c.client.close();
    }
  },
  async subscribe() {
    const c = await connect();
    try {
      const everything = c.tools.includes("toggle-subscriber-updates");
      const uri = everything ? "demo://resource/dynamic/text/1" : "test://watched-resource";
      // The update travels on the standalone GET stream, which the SDK opens right after initialize; if it
      // was not up yet the notification is dropped by the server, so retry a few times before failing.
      for (let attempt = 1; attempt <= 3 && !c.seen.updates.includes(uri); attempt++) {
        if (everything) {
          await c.client.subscribeResource({ uri });
          await c.client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
        } else {
          await c.client.subscribeResource({ uri });
        }
        try {
          await waitFor(() => c.seen.updates.includes(uri), (opts.timeout * 1000) / 3, `notifications/resources/updated for ${uri}`);
        } catch (e) {
          if (attempt === 3) throw e;
        }
        if (everything) await c.client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
        await c.client.unsubscribeResource({ uri });
      }
      return { uri, updates: c.seen.updates.length };
    } finally {
      await c.client.close();
    }
  },
  async terminate() {
    const c = await connect();
    const sid = c.transport.sessionId;
    if (!sid) throw new Error("no Mcp-Session-Id after initialize");
    await c.transport.terminateSession();
    const res = await fetch(opts.url, {
      method: "POST",
      headers: {
        ...authHeaders,
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-session-id": sid,
        "mcp-protocol-version": c.transport.protocolVersion ?? "2025-06-18",
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 99, method: "tools/list", params: {} }),
    });
    await res.body?.cancel();
    await c.client.close();
    if (res.status !== 404) throw new Error(`request on terminated session got HTTP ${res.status}, want 404`);
    return { terminatedSession: sid, statusAfter: res.status };
  },
  async isolation() {
    const a = await connect("catwalk-ts-client-a");
    const b = await connect("catwalk-ts-client-b");
    try {
      if (!a.transport.sessionId || a.transport.sessionId === b.transport.sessionId) {
        throw new Error(`session ids not distinct: ${a.transport.sessionId} / ${b.transport.sessionId}`);
      }
      const tool = need(a, ["toggle-simulated-logging"], "per-session state (toggle-simulated-logging)");
      const ra = textOf(await a.client.callTool({ name: tool, arguments: {} }));
      const rb = textOf(await b.client.callTool({ name: tool, arguments: {} }));
      const ra2 = textOf(await a.client.callTool({ name: tool, arguments: {} }));
      const rb2 = textOf(await b.client.callTool({ name: tool, arguments: {} }));
      if (!ra.startsWith("Started") || !rb.startsWith("Started")) throw new Error(`state shared between sessions: A="${ra.slice(0, 60)}" B="${rb.slice(0, 60)}"`);
      if (!ra2.startsWith("Stopped") || !rb2.startsWith("Stopped")) throw new Error(`second toggle did not stop: A="${ra2.slice(0, 60)}" B="${rb2.slice(0, 60)}"`);
      return { sessions: [a.transport.sessionId, b.transport.sessionId] };
    } finally {
      await a.client.close();
      await b.client.close();
    }
  },
};

async function withTimeout(p, secs, what) {
  let timer;
  const t = new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} timed out after ${secs} s`)), secs * 1000)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

const summary = { client: "typescript-sdk", url: opts.url, ok: true, scenarios: {} };
for (const name of opts.scenarios) {
  const started = Date.now();
  try {
    const detail = await withTimeout(scenarios[name](), opts.timeout * 2, name);
    summary.scenarios[name] = { ok: true, ms: Date.now() - started, detail };
  } catch (e) {
    summary.ok = false;
    summary.scenarios[name] = { ok: false, ms: Date.now() - started, error: e instanceof Error ? e.message : String(e) };
  }
}
console.log(JSON.stringify(summary, null, 2));
process.exit(summary.ok ? 0 : 1);
