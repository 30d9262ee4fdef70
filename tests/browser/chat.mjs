// The web page in a real browser: two pages (Debian's headless Chromium,
// driven by Playwright) and one terminal client in the same room exchange
// messages and all three see all of them; nothing they send is taken as HTML;
// then the server restarts and the pages and the client come back by
// themselves. Run by tests/browser.rs, which passes the paths below.
//
// Every wait is for an event (a line, an element, a state), bounded by a
// timeout only as a safety net.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { CHAT_SERVER, CHAT_CLIENT, CHAT_CHROMIUM, CHAT_SCREENSHOT } = process.env;
const PATIENCE = 20_000;

function fail(message) {
  console.error(`browser test failed: ${message}`);
  process.exit(1);
}
// Safety net for the whole run.
setTimeout(() => fail("did not finish within 120 s"), 120_000).unref();

/// A child process whose stdout lines can be awaited.
function start(program, args) {
  const child = spawn(program, args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line);
    for (const waiter of [...waiters]) waiter();
  });
  child.lines = lines;
  child.waitFor = (predicate, what) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.find(predicate);
        if (found !== undefined) {
          waiters.splice(waiters.indexOf(check), 1);
          clearTimeout(timer);
          resolve(found);
        }
      };
      const timer = setTimeout(() => reject(new Error(`${program}: no ${what}; got ${JSON.stringify(lines)}`)), PATIENCE);
      waiters.push(check);
      check();
    });
  return child;
}

async function startServer(port) {
  // Winning the old port back may take a few tries: until then another
  // process's outgoing connection may hold it.
  for (let attempt = 1; ; attempt++) {
    const server = start(CHAT_SERVER, ["--port", String(port)]);
    const exited = new Promise((resolve) => server.once("exit", () => resolve(null)));
    const listening = server.waitFor((l) => l.startsWith("listening on "), "listening line");
    listening.catch(() => {}); // settled by the race below when the server exits first
    const line = await Promise.race([listening, exited]);
    if (line !== null) return { server, port: Number(line.split(":").pop()) };
    if (attempt === 20) fail(`the server could not listen on port ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
  }
}

function stopped(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once("exit", resolve);
    child.kill("SIGTERM");
  });
}

const messages = (page) => page.locator("#messages li.message");

async function sees(page, text) {
  await messages(page).filter({ hasText: text }).first().waitFor({ timeout: PATIENCE });
}

async function say(page, text) {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

async function connected(page, name) {
  await page.locator("#state.connected", { hasText: `connected as ${name}` }).waitFor({ timeout: PATIENCE });
}

let { server, port } = await startServer(0);
const base = `http://127.0.0.1:${port}/garden`;
const browser = await chromium.launch({
  executablePath: CHAT_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
let client;
try {
  const ann = await (await browser.newContext({ viewport: { width: 900, height: 560 } })).newPage();
  const ben = await (await browser.newContext({ viewport: { width: 390, height: 700 } })).newPage();
  for (const page of [ann, ben]) page.on("pageerror", (error) => fail(`page error: ${error}`));

  await ann.goto(`${base}?name=ann`);
  await connected(ann, "ann");
  // Ben picks his name in the page; it is remembered.
  await ben.goto(base);
  await ben.locator("#state.connected").waitFor({ timeout: PATIENCE });
  await ben.fill("#name", "ben");
  await ben.press("#name", "Enter");
  await connected(ben, "ben");
  if ((await ben.evaluate(() => localStorage.getItem("chat.name"))) !== "ben") fail("name not remembered");

  client = start(CHAT_CLIENT, [`ws://127.0.0.1:${port}/garden`, "--name", "carol"]);
  await client.waitFor((l) => l === "* carol joined", "join line");
  await ann.locator("#who li", { hasText: "carol" }).waitFor({ timeout: PATIENCE });

  await say(ann, "hello from ann");
  await say(ben, "hello from ben");
  client.stdin.write("hello from carol\n");
  client.stdin.write("<img src=x onerror=\"window.pwned=1\"> & <b>bold</b>\n");
  for (const page of [ann, ben]) {
    for (const text of ["ann: hello from ann", "ben: hello from ben", "carol: hello from carol", "<b>bold</b>"]) {
      await sees(page, text);
    }
  }
  for (const line of ["ann: hello from ann", "ben: hello from ben", "carol: hello from carol"]) {
    await client.waitFor((l) => l === line, line);
  }
  // Own messages are told apart; the markup was shown as text, not run.
  if ((await ann.locator("#messages li.own").allTextContents()).join("|").includes("ben:")) fail("ben's message marked as ann's");
  await ann.locator("#messages li.own", { hasText: "hello from ann" }).waitFor({ timeout: PATIENCE });
  if (await ann.locator("#messages img, #messages b").count()) fail("HTML from a message was rendered");
  if (await ann.evaluate(() => window.pwned)) fail("script from a message ran");
  const who = await ann.locator("#who li").allTextContents();
  if (who.join(",") !== "ann,ben,carol") fail(`who is online: ${who}`);

  if (CHAT_SCREENSHOT) await ann.screenshot({ path: CHAT_SCREENSHOT });

  // The server restarts on the same port: everyone comes back on their own.
  await stopped(server);
  await ann.locator("#state.offline").waitFor({ timeout: PATIENCE });
  ({ server } = await startServer(port));
  await connected(ann, "ann");
  await connected(ben, "ben");
  await client.waitFor((l) => l === "! missed an unknown number of messages: the room's history was reset", "reset notice");
  await ann.locator("#who li", { hasText: "carol" }).waitFor({ timeout: PATIENCE });
  await say(ben, "after the restart");
  await sees(ann, "ben: after the restart");
  await client.waitFor((l) => l === "ben: after the restart", "message after the restart");
  client.stdin.write("carol is back\n");
  await sees(ann, "carol: carol is back");
  await sees(ben, "carol: carol is back");
  console.log("browser test passed");
} catch (error) {
  fail(error.stack || String(error));
} finally {
  await browser.close();
  if (client) client.kill("SIGTERM");
  await stopped(server);
}
