// The web page with an identity token (JWT): given in the URL fragment
// (#token=), it is kept in sessionStorage, taken out of the address bar, and
// sent as an offered subprotocol, so no request line ever carries it; the
// name shown is the token's, whatever ?name= says; a reload keeps it; and
// without a token the page still loads, but cannot connect.
// Run by tests/e2e/browser.rs, which passes the paths below.
//
// Every wait is for an event (a line, an element, a state), bounded by a
// timeout only as a safety net.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { CHAT_SERVER, CHAT_CHROMIUM } = process.env;
const PATIENCE = 20_000;
const SECRET = "a secret for the browser test";

let server;
function fail(message) {
  console.error(`browser identity test failed: ${message}`);
  if (server) server.kill("SIGTERM");
  process.exit(1);
}
setTimeout(() => fail("did not finish within 120 s"), 120_000).unref();

/// An HS256 token, made as any issuer would.
function token(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

server = spawn(CHAT_SERVER, ["--port", "0", "--jwt-secret", SECRET], {
  stdio: ["pipe", "pipe", "inherit"],
  env: { ...process.env, RUST_LOG: "warn" },
});
const listening = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no listening line")), PATIENCE);
  createInterface({ input: server.stdout }).on("line", (line) => {
    if (line.startsWith("listening on ")) { clearTimeout(timer); resolve(line); }
  });
}).catch((error) => fail(error.message));
const base = `http://127.0.0.1:${listening.split(":").pop()}/garden`;

const browser = await chromium.launch({
  executablePath: CHAT_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
try {
  const jwt = token({ sub: "u-7", name: "ida", exp: Math.floor(Date.now() / 1000) + 600 });
  const page = await (await browser.newContext()).newPage();
  const seen = [];
  page.on("request", (request) => seen.push(request.url()));
  page.on("websocket", (ws) => seen.push(ws.url()));
  await page.goto(`${base}?name=mallory#token=${jwt}`);
  await page.locator("#state.connected", { hasText: "connected as ida" }).waitFor({ timeout: PATIENCE });
  if (page.url().includes("token")) fail(`the token stayed in the address bar: ${page.url()}`);
  const kept = await page.evaluate(() => sessionStorage.getItem("chat.token"));
  if (kept !== jwt) fail("the token was not kept in sessionStorage");
  // A reload comes back under the same name, from sessionStorage.
  await page.reload();
  await page.locator("#state.connected", { hasText: "connected as ida" }).waitFor({ timeout: PATIENCE });
  const leaked = seen.filter((url) => url.includes(jwt.split(".")[2]));
  if (seen.length < 4) fail(`expected the page and its WebSocket twice, saw ${JSON.stringify(seen)}`);
  if (leaked.length) fail(`a request line carried the token: ${JSON.stringify(leaked)}`);

  // Without a token, the page loads, and its connection is refused.
  const stranger = await (await browser.newContext()).newPage();
  const response = await stranger.goto(base);
  if (response.status() !== 200) fail(`the page without a token answered ${response.status()}`);
  await stranger.locator("#state.offline").waitFor({ timeout: PATIENCE });
  // It cannot see the 401, and says what is likely missing.
  await stranger.locator("#messages li", { hasText: "#token=" }).waitFor({ timeout: PATIENCE });
  console.log("browser identity test passed");
} catch (error) {
  fail(error.stack || String(error));
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
