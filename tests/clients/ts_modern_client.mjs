#!/usr/bin/env node
// The official TypeScript SDK 2.x client (@modelcontextprotocol/client) in each of its version-negotiation
// modes, against an MCP endpoint. Prints one JSON summary; exits non-zero when any scenario failed.
//
//   node22 tests/clients/ts_modern_client.mjs --url URL --mode legacy|auto|pin [--token T] [--scenario a,b]
//
// Modes (ClientOptions.versionNegotiation): `legacy` (the 2025 initialize handshake), `auto` (probes
// server/discover and must settle on 2026-07-28 when the server offers it), `pin` (2026-07-28 only).
// Scenarios (tools are picked from tools/list, so server-everything and mcp-server-time both work):
//   era       the negotiated version is the one the mode must reach; serverInfo is the server's
//   basic     tools/list, then a tools/call (echo, get_current_time or shout) whose text is checked
//   progress  a tools/call with onprogress (server-everything's trigger-long-running-operation)
//   parallel  five tools/call at once, each answer matched to its own question
//   listen    subscriptions/listen is acknowledged (modern modes only)
//   elicitation  server-everything's trigger-elicitation-request: the server asks this client for input
//             (2026-07-28: an input_required result the SDK fulfils and retries) and shows the answer
//   sampling  the same with trigger-sampling-request and a sampling answer

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
    if (existsSync(join(dir, "@modelcontextprotocol", "client", "package.json"))) return dir;
  }
  console.error(`ts_modern_client: @modelcontextprotocol/client not found in ${candidates.join(", ")}; run ./scripts/test-deps first`);
  process.exit(2);
}
const NM = nodeModulesDir();
const { Client, StreamableHTTPClientTransport } = await import(
  pathToFileURL(join(NM, "@modelcontextprotocol", "client", "dist", "index.mjs")).href
);

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const url = opt("url");
const mode = opt("mode", "auto");
const token = opt("token");
const scenarios = opt("scenario", "era,basic,progress,parallel,listen").split(",");
if (!url || !["legacy", "auto", "pin"].includes(mode)) {
  console.error("usage: ts_modern_client.mjs --url URL --mode legacy|auto|pin [--token T] [--scenario a,b]");
  process.exit(2);
}
const MODERN = "2026-07-28";
const ELICITED = "Ada Lovelace";
const SAMPLED = "catwalk sampling answer 42";
const expectedVersion = mode === "legacy" ? null : MODERN;

async function connect() {
  const negotiation = mode === "legacy" ? { mode: "legacy" } : mode === "auto" ? { mode: "auto" } : { mode: { pin: MODERN } };
  const client = new Client(
    { name: "catwalk-ts2-test", version: "1.0.0" },
    { versionNegotiation: negotiation, capabilities: { elicitation: {}, sampling: {} } },
  );
  client.setRequestHandler("elicitation/create", async () => ({ action: "accept", content: { name: ELICITED } }));
  client.setRequestHandler("sampling/createMessage", async () => ({
    role: "assistant",
    content: { type: "text", text: SAMPLED },
    model: "catwalk-test-model",
    stopReason: "endTurn",
  }));
  const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit });
  await client.connect(transport);
  return client;
}

function text(result) {
  return (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

async function callSomething(client, tools, tag) {
  if (tools.includes("echo")) {
    const r = await client.callTool({ name: "echo", arguments: { message: `hello ${tag}` } });
    if (!text(r).includes(`hello ${tag}`)) throw new Error(`echo answered ${JSON.stringify(r)}`);
    return text(r);
  }
  if (tools.includes("get_current_time")) {
    const r = await client.callTool({ name: "get_current_time", arguments: { timezone: "UTC" } });
    if (!text(r).includes("UTC")) throw new Error(`get_current_time answered ${JSON.stringify(r)}`);
    return text(r);
  }
  if (tools.includes("shout")) {
    const r = await client.callTool({ name: "shout", arguments: { text: `hello ${tag}` } });
    if (!text(r).includes(`HELLO ${tag.toUpperCase()}`)) throw new Error(`shout answered ${JSON.stringify(r)}`);
    return text(r);
  }
  throw new Error(`no known tool among ${tools.join(", ")}`);
}

const summary = { ok: true, mode, scenarios: {} };
let client;
try {
  client = await connect();
} catch (e) {
  summary.ok = false;
  summary.connect = String(e?.stack ?? e);
  console.log(JSON.stringify(summary, null, 2));
  process.exit(1);
}
summary.negotiated = client.getNegotiatedProtocolVersion();
summary.era = client.getProtocolEra?.();
const toolNames = async () => (await client.listTools()).tools.map((t) => t.name);

const run = {
  async era() {
    const v = client.getNegotiatedProtocolVersion();
    if (expectedVersion && v !== expectedVersion) throw new Error(`negotiated ${v}, expected ${expectedVersion}`);
    if (!expectedVersion && v === MODERN) throw new Error(`legacy mode negotiated ${v}`);
    const info = client.getServerVersion();
    if (!info?.name) throw new Error(`no serverInfo: ${JSON.stringify(info)}`);
    return { version: v, server: info };
  },
  async basic() {
    const tools = await toolNames();
    return { tools: tools.length, answer: await callSomething(client, tools, "basic") };
  },
  async progress() {
    const tools = await toolNames();
    if (!tools.includes("trigger-long-running-operation")) return { skipped: "no progress tool on this server" };
    const seen = [];
    await client.callTool(
      { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
      { onprogress: (p) => seen.push(p.progress), timeout: 30000 },
    );
    if (seen.length < 2) throw new Error(`expected >= 2 progress notifications, got ${JSON.stringify(seen)}`);
    return { progress: seen };
  },
  async parallel() {
    const tools = await toolNames();
    const answers = await Promise.all([1, 2, 3, 4, 5].map((i) => callSomething(client, tools, `p${i}`)));
    return { answers: answers.length };
  },
  async elicitation() {
    const r = await client.callTool({ name: "trigger-elicitation-request", arguments: {} });
    if (!text(r).includes(ELICITED)) throw new Error(`the elicited name is not in ${JSON.stringify(r)}`);
    return { answer: text(r).slice(0, 80) };
  },
  async sampling() {
    const r = await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 10 } });
    if (!text(r).includes(SAMPLED)) throw new Error(`the sampled text is not in ${JSON.stringify(r)}`);
    return { answer: "sampled" };
  },
  async listen() {
    if (mode === "legacy") return { skipped: "listen is a 2026-07-28 method" };
    const sub = await client.listen({ toolsListChanged: true });
    const honored = sub.honoredFilter;
    await sub.close();
    return { honored };
  },
};

for (const name of scenarios) {
  try {
    summary.scenarios[name] = { ok: true, ...(await run[name]()) };
  } catch (e) {
    summary.ok = false;
    summary.scenarios[name] = { ok: false, error: String(e?.stack ?? e) };
  }
}
await client.close().catch(() => {});
console.log(JSON.stringify(summary, null, 2));
process.exit(summary.ok ? 0 : 1);
