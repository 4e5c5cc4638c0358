#!/usr/bin/env node
// The official TypeScript SDK 2.x client (@modelcontextprotocol/client) connecting to an OAuth-protected
// catwalk endpoint with the SDK's own OAuth implementation: discovery from the 401, dynamic registration
// (or a Client ID Metadata Document URL), PKCE, the `resource` parameter, the RFC 9207 `iss` check in
// finishAuth, refresh, and what happens after revocation. Prints one JSON summary; exits non-zero on any
// failed step.
//
//   node22 tests/clients/ts_oauth_client.mjs --url URL --approve-cmd JSON_ARGV [--cimd URL]
//
// The "browser" is this script: it fetches the authorization URL the SDK asks to open, reads the
// `approve CODE` line, runs JSON_ARGV + ["approve", CODE] (the test's `ssh` command line), reloads the
// page until it redirects, and hands the callback's query to transport.finishAuth().

import { execFileSync } from "node:child_process";
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
  console.error(`ts_oauth_client: @modelcontextprotocol/client not found in ${candidates.join(", ")}; run ./scripts/test-deps first`);
  process.exit(2);
}
const NM = nodeModulesDir();
const { Client, StreamableHTTPClientTransport, UnauthorizedError } = await import(
  pathToFileURL(join(NM, "@modelcontextprotocol", "client", "dist", "index.mjs")).href
);

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const url = opt("url");
const approveCmd = JSON.parse(opt("approve-cmd") ?? "null");
const cimd = opt("cimd");
if (!url || !approveCmd) {
  console.error("usage: ts_oauth_client.mjs --url URL --approve-cmd JSON_ARGV [--cimd URL]");
  process.exit(2);
}
const REDIRECT = "http://127.0.0.1:9/sdk-callback";

/** An in-memory OAuthClientProvider: what a real app would keep in its storage. */
class Provider {
  constructor() {
    this.info = undefined;
    this.saved = undefined;
    this.verifier = undefined;
    this.authorizationUrls = [];
    if (cimd) this.clientMetadataUrl = cimd;
  }
  get redirectUrl() { return REDIRECT; }
  state() { return `st-${Math.random().toString(36).slice(2)}`; }
  get clientMetadata() {
    return {
      client_name: "SDK 2.x test client",
      redirect_uris: [REDIRECT],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() { return this.info; }
  saveClientInformation(info) { this.info = info; }
  tokens() { return this.saved; }
  saveTokens(tokens) { this.saved = tokens; }
  redirectToAuthorization(authorizationUrl) { this.authorizationUrls.push(new URL(authorizationUrl)); }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
  saveDiscoveryState(s) { this.discovery = s; }
  discoveryState() { return this.discovery; }
  // What the SDK calls after invalid_grant / invalid_client: forget what the server no longer honours.
  invalidateCredentials(scope) {
    if (scope === "all" || scope === "tokens") this.saved = undefined;
    if (scope === "all" || scope === "client") this.info = undefined;
    if (scope === "all" || scope === "verifier") this.verifier = undefined;
    if (scope === "all" || scope === "discovery") this.discovery = undefined;
  }
}

/** The browser and the human: open the page, approve over ssh, reload until redirected. */
async function approveInBrowser(authorizationUrl) {
  const page = await fetch(authorizationUrl, { redirect: "manual" });
  const html = await page.text();
  if (page.status !== 200) throw new Error(`authorization page answered ${page.status}: ${html}`);
  const m = html.match(/ approve ([A-Z0-9]{4}-[A-Z0-9]{4})</);
  if (!m) throw new Error(`no approve CODE on the page: ${html}`);
  execFileSync(approveCmd[0], [...approveCmd.slice(1), `approve ${m[1]}`], { stdio: ["ignore", "pipe", "inherit"] });
  for (let i = 0; i < 50; i++) {
    const again = await fetch(authorizationUrl, { redirect: "manual" });
    if (again.status === 302 || again.status === 303) {
      const location = new URL(again.headers.get("location"));
      if (location.origin + location.pathname !== REDIRECT) throw new Error(`redirected to ${location}`);
      return location.searchParams;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the page never redirected after approval");
}

async function connect(provider) {
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  const client = new Client({ name: "catwalk-oauth-test", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

const summary = { steps: [] };
const step = (name, detail) => summary.steps.push(detail === undefined ? name : { [name]: detail });
let failed = false;
try {
  const provider = new Provider();
  // 1. First connect: 401 → discovery → registration (or CIMD) → redirectToAuthorization.
  let authorized = false;
  try {
    await connect(provider);
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    const asked = provider.authorizationUrls.at(-1);
    if (!asked) throw new Error("UnauthorizedError without an authorization URL");
    for (const p of ["client_id", "code_challenge", "resource", "state"]) {
      if (!asked.searchParams.get(p)) throw new Error(`the SDK's authorization URL has no ${p}: ${asked}`);
    }
    if (asked.searchParams.get("code_challenge_method") !== "S256") throw new Error("not S256");
    if (asked.searchParams.get("resource") !== url) throw new Error(`resource ${asked.searchParams.get("resource")} != ${url}`);
    step("authorization_url", { client_id: asked.searchParams.get("client_id"), resource: asked.searchParams.get("resource") });
    const callback = await approveInBrowser(asked);
    step("approved");
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    await transport.finishAuth(callback); // checks state and the RFC 9207 iss
    authorized = true;
  }
  if (!authorized) throw new Error("the endpoint did not ask for authorization");
  step("tokens", { refresh: Boolean(provider.saved?.refresh_token), expires_in: provider.saved?.expires_in });

  // 2. Connected: list and call tools.
  let { client } = await connect(provider);
  const tools = await client.listTools();
  const echo = await client.callTool({ name: "echo", arguments: { text: "sdk oauth" } });
  const text = echo.content?.[0]?.text;
  if (text !== "sdk oauth") throw new Error(`echo answered ${JSON.stringify(echo)}`);
  step("called", { tools: tools.tools.length, echo: text });
  await client.close();

  // 3. A rejected access token: the SDK refreshes (rotation) and carries on.
  const before = provider.saved.refresh_token;
  provider.saved = { ...provider.saved, access_token: "cwa_" + "0".repeat(76) };
  ({ client } = await connect(provider));
  await client.listTools();
  if (provider.saved.refresh_token === before) throw new Error("the refresh token was not rotated");
  step("refreshed", { rotated: true });
  await client.close();

  // 4. Revocation (RFC 7009) of the refresh token ends the grant: the SDK must start a new authorization.
  const revoke = await fetch(new URL("/oauth/revoke", url), {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: provider.saved.refresh_token, client_id: provider.info?.client_id ?? cimd }),
  });
  if (revoke.status !== 200) throw new Error(`revoke answered ${revoke.status}`);
  const asked = provider.authorizationUrls.length;
  try {
    await connect(provider);
    throw new Error("the revoked grant still connected");
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  if (provider.authorizationUrls.length !== asked + 1) throw new Error("no new authorization was started after revocation");
  step("revoked", { reauthorization_requested: true });
} catch (e) {
  failed = true;
  summary.error = String(e?.stack ?? e);
}
summary.ok = !failed;
console.log(JSON.stringify(summary));
process.exit(failed ? 1 : 0);
