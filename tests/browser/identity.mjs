// The web page with an identity token (JWT): given in the URL fragment
// (#token=), it is kept in sessionStorage, taken out of the address bar, and
// exchanged (POST /api/ticket, Authorization: Bearer) for a single-use
// ticket that the WebSocket's URL carries, so no request line ever carries
// the token; the page says who it is signed in as, the token's name,
// whatever ?name= says, on a phone too; a reload keeps it; a refused token
// is said so; and without a token the page still loads, but cannot connect.
// Run by tests/e2e/browser.rs, which passes the paths below.
//
// Every wait is for an event (a line, an element, a state), bounded by a
// timeout only as a safety net.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
  const exchanges = [];
  page.on("request", (request) => {
    if (request.url().endsWith("/api/ticket")) exchanges.push(request.headers()["authorization"]);
  });
  await page.goto(`${base}?name=mallory#token=${jwt}`);
  await page.locator("#state.connected", { hasText: "connected as ida" }).waitFor({ timeout: PATIENCE });
  await page.locator("#signed-in", { hasText: "signed in as ida" }).waitFor({ timeout: PATIENCE });
  if (exchanges[0] !== `Bearer ${jwt}`) fail(`the token was not exchanged for a ticket: ${JSON.stringify(exchanges)}`);
  const sockets = seen.filter((url) => url.startsWith("ws"));
  if (!sockets.length || !sockets.every((url) => /[?&]ticket=[0-9a-f]{32}(&|$)/.test(url))) {
    fail(`the WebSocket did not come with a ticket: ${JSON.stringify(sockets)}`);
  }
  if (page.url().includes("token")) fail(`the token stayed in the address bar: ${page.url()}`);
  const kept = await page.evaluate(() => sessionStorage.getItem("chat.token"));
  if (kept !== jwt) fail("the token was not kept in sessionStorage");
  // A reload comes back under the same name, from sessionStorage.
  await page.reload();
  await page.locator("#state.connected", { hasText: "connected as ida" }).waitFor({ timeout: PATIENCE });
  const leaked = seen.filter((url) => url.includes(jwt.split(".")[2]));
  if (seen.length < 4) fail(`expected the page and its WebSocket twice, saw ${JSON.stringify(seen)}`);
  if (leaked.length) fail(`a request line carried the token: ${JSON.stringify(leaked)}`);
  if (exchanges.length < 2) fail("the reload did not exchange the token for a new ticket");

  // On a phone: the name signed in with is shown, in a header that fits.
  const phone = await (await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: "dark" })).newPage();
  await phone.goto(`${base}#token=${jwt}`);
  await phone.locator("#signed-in", { hasText: "signed in as ida" }).waitFor({ timeout: PATIENCE });
  await phone.locator("#state.connected").waitFor({ timeout: PATIENCE });
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  if (width > 390) fail(`the phone-sized page scrolls sideways: ${width} px wide`);
  const shot = process.env.CHAT_IDENTITY_SCREENSHOT || join(tmpdir(), "chat-identity-phone.png");
  await phone.screenshot({ path: shot });
  console.log(`phone screenshot: ${shot}`);

  // A bad token is refused at the exchange, and the page says so.
  const forged = `${jwt.split(".").slice(0, 2).join(".")}.${"A".repeat(43)}`;
  const refused = await (await browser.newContext()).newPage();
  await refused.goto(`${base}#token=${forged}`);
  await refused.locator("#messages li", { hasText: "token refused: the token's signature is not valid" }).waitFor({ timeout: PATIENCE });
  await refused.locator("#state.offline", { hasText: "token refused" }).waitFor({ timeout: PATIENCE });

  // Without a token, the page loads, and its connection is refused.
  const stranger = await (await browser.newContext()).newPage();
  const response = await stranger.goto(base);
  if (response.status() !== 200) fail(`the page without a token answered ${response.status()}`);
  await stranger.locator("#state.offline").waitFor({ timeout: PATIENCE });
  // It cannot see the 401, and says what is likely missing.
  await stranger.locator("#messages li", { hasText: "#token=" }).waitFor({ timeout: PATIENCE });
  // A moderator's page: /help lists the commands, a kick is sent and told,
  // and the kicked page shows why and does not come back.
  const modJwt = token({ sub: "u-1", name: "mia", mod: "*", exp: Math.floor(Date.now() / 1000) + 600 });
  const moderator = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage();
  await moderator.goto(`${base}#token=${modJwt}`);
  await moderator.locator("#state.connected", { hasText: "connected as mia" }).waitFor({ timeout: PATIENCE });
  await moderator.locator("#signed-in", { hasText: "signed in as mia · moderator" }).waitFor({ timeout: PATIENCE });
  const victimJwt = token({ sub: "u-9", name: "vic", exp: Math.floor(Date.now() / 1000) + 600 });
  const victim = await (await browser.newContext()).newPage();
  const victimSockets = [];
  victim.on("websocket", (ws) => victimSockets.push(ws.url()));
  await victim.goto(`${base}#token=${victimJwt}`);
  await victim.locator("#state.connected", { hasText: "connected as vic" }).waitFor({ timeout: PATIENCE });
  await moderator.locator("#messages li", { hasText: "vic joined" }).waitFor({ timeout: PATIENCE });
  const box = moderator.locator("#input");
  await box.fill("/help");
  await box.press("Enter");
  await moderator.locator("#messages li", { hasText: "as a moderator: /kick NAME [REASON]" }).waitFor({ timeout: PATIENCE });
  await box.fill("/mute vic 10m");
  await box.press("Enter");
  await victim.locator("#messages li", { hasText: "vic was muted by mia for 10m" }).waitFor({ timeout: PATIENCE });
  const victimBox = victim.locator("#input");
  await victimBox.fill("let me speak");
  await victimBox.press("Enter");
  await victim.locator("#messages li", { hasText: "you are muted in this room for" }).waitFor({ timeout: PATIENCE });
  await box.fill("/kick vic enough now");
  await box.press("Enter");
  await moderator.locator("#messages li", { hasText: "vic was kicked by mia: enough now" }).waitFor({ timeout: PATIENCE });
  await moderator.locator("#messages li", { hasText: "vic left" }).waitFor({ timeout: PATIENCE });
  await victim.locator("#messages li", { hasText: "you were removed from the room (vic was kicked by mia: enough now): not reconnecting" }).waitFor({ timeout: PATIENCE });
  await victim.locator("#state.offline", { hasText: "removed by a moderator" }).waitFor({ timeout: PATIENCE });
  const modShot = process.env.CHAT_MODERATOR_SCREENSHOT || join(tmpdir(), "chat-moderator-phone.png");
  await moderator.screenshot({ path: modShot });
  console.log(`moderator screenshot: ${modShot}`);
  const kickedShot = join(tmpdir(), "chat-kicked.png");
  await victim.screenshot({ path: kickedShot });
  console.log(`kicked page screenshot: ${kickedShot}`);
  // It stays out: no new connection from the kicked page while the room goes on.
  const socketsAfterKick = victimSockets.length;
  await box.fill("one more line");
  await box.press("Enter");
  await moderator.locator("#messages li", { hasText: "one more line" }).waitFor({ timeout: PATIENCE });
  if (victimSockets.length !== socketsAfterKick) fail(`the kicked page reconnected: ${JSON.stringify(victimSockets)}`);
  // Nor will it: no reconnection was scheduled (each schedules one attempt).
  const scheduled = await victim.evaluate(() => attempts);
  if (scheduled !== 0) fail(`the kicked page means to reconnect: ${scheduled} attempts scheduled`);
  await victim.locator("#state.offline", { hasText: "removed by a moderator" }).waitFor({ timeout: PATIENCE });
  // A page without `mod` cannot kick: ida is told, and mia stays.
  const idaBox = page.locator("#input");
  await idaBox.fill("/kick mia");
  await idaBox.press("Enter");
  await page.locator("#messages li", { hasText: "you do not moderate this room" }).waitFor({ timeout: PATIENCE });

  console.log("browser identity test passed");
} catch (error) {
  fail(error.stack || String(error));
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
