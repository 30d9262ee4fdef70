// The web page in a real browser: two pages (Debian's headless Chromium,
// driven by Playwright: a desktop one and a phone-sized dark one) and one
// terminal client in the same room exchange messages and all three see all of
// them; nothing they send is taken as HTML, links are links, multi-line
// messages stay together; the page counts unread messages in its title, offers
// a way down to new messages, shows other days' dates, keeps its colours
// readable, checks sizes against the welcome's limits and keeps its session
// secret to itself, using it to take its name back from a dead connection;
// then the server restarts on the same SQLite file, lines typed meanwhile
// wait, and the pages and the client come back by themselves, with no "history
// was reset" and no line twice; a page scrolled to the top loads older
// messages, with dates, never two requests at once, and its trim keeps them.
// Run by tests/e2e/browser.rs, which passes the paths below.
//
// Checks marked SPEC need the server side of spec/protocol14.md (limits,
// session, ids with ack and error codes); their failures are collected and
// listed together at the end.
//
// Every wait is for an event (a line, an element, a state), bounded by a
// timeout only as a safety net.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { CHAT_SERVER, CHAT_CLIENT, CHAT_CHROMIUM, CHAT_SCREENSHOT } = process.env;
const PATIENCE = 20_000;

// The server's store: a file of this run's own, so that a restart keeps the
// rooms' history, numbering and epoch; removed at the end.
const dbDir = mkdtempSync(join(tmpdir(), "chat-browser-"));
const db = join(dbDir, "chat.db");
const removeDb = () => rmSync(dbDir, { recursive: true, force: true });

const children = new Set();
function fail(message) {
  console.error(`browser test failed: ${message}`);
  // The finally below does not run after exit: stop the programs here.
  for (const child of children) child.kill("SIGTERM");
  removeDb();
  process.exit(1);
}
// Safety net for the whole run.
setTimeout(() => fail("did not finish within 240 s"), 240_000).unref();

/// A child process whose stdout lines can be awaited.
function start(program, args) {
  const child = spawn(program, args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  children.add(child);
  child.once("exit", () => children.delete(child));
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
    const server = start(CHAT_SERVER, ["--port", String(port), "--db", db]);
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

// Messages the room has seen (not lines still waiting to be sent).
const messages = (page) => page.locator("#messages li.message:not(.pending)");

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

/// Checks that need the server side of protocol 14: failures are listed at the end.
const specFailures = [];
async function spec(what, check) {
  try {
    await check();
  } catch (error) {
    specFailures.push(`${what}: ${error.message.split("\n")[0]}`);
  }
}
function must(condition, message) {
  if (!condition) throw new Error(message);
}

/// The page's visibility, as a browser sets it when the tab is hidden or shown.
async function setHidden(page, hidden) {
  await page.evaluate((hidden) => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
}

async function titleIs(page, title) {
  await page.waitForFunction((title) => document.title === title, title, { timeout: PATIENCE });
}

async function focusedOnInput(page) {
  await page.waitForFunction(() => document.activeElement?.id === "input", null, { timeout: PATIENCE });
}

/// WCAG contrast of each kind of text against what is drawn behind it (the
/// backgrounds of its ancestors, blended), in the page's current colour scheme.
async function contrasts(page, kinds) {
  return page.evaluate((kinds) => {
    const rgba = (css) => {
      const [r, g, b, a = 1] = css.match(/[\d.]+/g).map(Number);
      return { r, g, b, a };
    };
    const over = (top, under) => ({
      r: top.r * top.a + under.r * (1 - top.a),
      g: top.g * top.a + under.g * (1 - top.a),
      b: top.b * top.a + under.b * (1 - top.a),
      a: 1,
    });
    const luminance = ({ r, g, b }) => {
      const [R, G, B] = [r, g, b].map((v) => {
        v /= 255;
        return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * R + 0.7152 * G + 0.0722 * B;
    };
    return kinds.map(([kind, selector, pseudo]) => {
      const el = document.querySelector(selector);
      if (!el) return { kind, missing: selector };
      const layers = [];
      for (let node = el; node; node = node.parentElement) layers.push(rgba(getComputedStyle(node).backgroundColor));
      let back = { r: 255, g: 255, b: 255, a: 1 };
      for (const layer of layers.reverse()) back = over(layer, back);
      const fore = over(rgba(getComputedStyle(el, pseudo ?? null).color), back);
      const [light, dark] = [luminance(fore), luminance(back)].sort((x, y) => y - x);
      return { kind, ratio: (light + 0.05) / (dark + 0.05) };
    });
  }, kinds);
}

async function readable(page, kinds, scheme) {
  for (const colorScheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme });
    for (const { kind, ratio, missing } of await contrasts(page, kinds)) {
      if (missing) fail(`no ${kind} (${missing}) to measure`);
      if (ratio < 4.5) fail(`${kind} text has contrast ${ratio.toFixed(2)}:1 in ${colorScheme} mode, below 4.5:1`);
    }
  }
  await page.emulateMedia({ colorScheme: scheme });
}

let { server, port } = await startServer(0);
const base = `http://127.0.0.1:${port}/garden`;
const browser = await chromium.launch({
  executablePath: CHAT_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
let client;
let gus;
try {
  const ann = await (await browser.newContext({ viewport: { width: 900, height: 560 }, colorScheme: "light" })).newPage();
  const ben = await (await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: "dark" })).newPage();
  for (const page of [ann, ben]) page.on("pageerror", (error) => fail(`page error: ${error}`));
  // Ann's connections to the room and the welcomes they got.
  const annSockets = [];
  const annWelcomes = [];
  let welcomed;
  const firstWelcome = new Promise((resolve) => { welcomed = resolve; });
  ann.on("websocket", (socket) => {
    if (!new URL(socket.url()).pathname.startsWith("/garden")) return;
    annSockets.push(socket.url());
    socket.on("framereceived", ({ payload }) => {
      const event = JSON.parse(payload);
      if (event.type === "welcome") {
        annWelcomes.push(event);
        welcomed();
      }
    });
  });
  // What the test prints never shows a session secret either.
  const redacted = (text) => String(text).replace(/[0-9a-f]{32}/g, "…");

  await ann.goto(`${base}?name=ann`);
  await connected(ann, "ann");
  await focusedOnInput(ann);
  // Ben picks his name in the page; it is remembered.
  await ben.goto(base);
  await ben.locator("#state.connected").waitFor({ timeout: PATIENCE });
  await focusedOnInput(ben);
  await ben.fill("#name", "ben");
  await ben.press("#name", "Enter");
  await connected(ben, "ben");
  if ((await ben.evaluate(() => localStorage.getItem("chat.name"))) !== "ben") fail("name not remembered");

  // SPEC: the session secret stays in the page's memory: not in the address
  // bar, storage, cookies or anything shown.
  let secret = null;
  await firstWelcome;
  await spec("the welcome carries a session secret", async () => {
    secret = annWelcomes[0].session;
    must(/^[0-9a-f]{32}$/.test(secret ?? ""), `welcome: ${redacted(JSON.stringify(annWelcomes[0]))}`);
  });
  const keptSecret = async (secret) => {
    if (!secret) return;
    const exposed = await ann.evaluate((secret) => {
      const stored = (store) => Object.keys(store).map((key) => key + "=" + store.getItem(key)).join(";");
      const fields = [...document.querySelectorAll("input, textarea")].map((field) => field.value).join(";");
      const places = { url: location.href, localStorage: stored(localStorage), sessionStorage: stored(sessionStorage),
        cookie: document.cookie, text: document.body.innerText, fields, html: document.documentElement.outerHTML, title: document.title };
      return Object.keys(places).filter((place) => places[place].includes(secret));
    }, secret);
    if (exposed.length) fail(`the session secret shows in: ${exposed}`);
  };
  await keptSecret(secret);

  client = start(CHAT_CLIENT, [`ws://127.0.0.1:${port}/garden`, "--name", "carol"]);
  await client.waitFor((l) => l === "* carol joined", "join line");
  // A room with more than a join replays (100): filled meanwhile, scrolled
  // back through after the restart.
  const ARCHIVED = 180;
  gus = start(CHAT_CLIENT, [`ws://127.0.0.1:${port}/archive`, "--name", "gus"]);
  for (let n = 1; n <= ARCHIVED; n++) gus.stdin.write(`old ${n}\n`);
  await ann.locator("#who li", { hasText: "carol" }).waitFor({ timeout: PATIENCE });

  await say(ann, "hello from ann");
  await say(ben, "hello from ben");
  client.stdin.write("hello from carol\n");
  client.stdin.write("<img src=x onerror=\"window.pwned=1\"> & <b>bold</b>\n");
  client.stdin.write("docs: https://example.com/path?q=1&r=2. (see http://example.org/x) javascript:alert(1)\n");
  client.stdin.write("abc\u202edef\n");
  for (const page of [ann, ben]) {
    for (const text of ["ann: hello from ann", "ben: hello from ben", "carol: hello from carol", "<b>bold</b>", "docs:"]) {
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
  // Addresses are links that open apart from the page; nothing else is.
  const links = await ann.locator("#messages li", { hasText: "docs:" }).locator("a").evaluateAll((links) =>
    links.map((a) => [a.getAttribute("href"), a.textContent, a.target, a.rel].join(" ")));
  const wanted = ["https://example.com/path?q=1&r=2", "http://example.org/x"].map((url) => `${url} ${url} _blank noopener noreferrer`);
  if (links.join("|") !== wanted.join("|")) fail(`links: ${JSON.stringify(links)}`);
  // A bidirectional control is shown escaped, not obeyed.
  await sees(ann, "carol: abc\\u{202e}def");

  // Shift+Enter starts a new line; the message arrives as one block under
  // one name.
  await ann.fill("#input", "line one");
  await ann.press("#input", "Shift+Enter");
  await ann.keyboard.type("line two");
  await ann.press("#input", "Enter");
  for (const page of [ann, ben]) {
    const block = messages(page).filter({ hasText: "line two" });
    await block.first().waitFor({ timeout: PATIENCE });
    const shown = await block.evaluateAll((lis) => lis.map((li) => ({
      text: li.querySelector(".text").textContent,
      names: li.querySelectorAll(".from").length,
      wrap: getComputedStyle(li.querySelector(".text")).whiteSpace,
      lines: Math.round(li.querySelector(".text").getBoundingClientRect().height / parseFloat(getComputedStyle(li).lineHeight)),
    })));
    const [one] = shown;
    if (shown.length !== 1 || one.text !== "line one\nline two" || one.names !== 1 || one.wrap !== "pre-wrap" || one.lines !== 2) {
      fail(`multi-line message shown as ${JSON.stringify(shown)}`);
    }
  }
  // The terminal shows it on one line.
  await client.waitFor((l) => l.startsWith("ann: line one") && l.includes("line two"), "the two-line message on one line");

  const who = await ann.locator("#who li").allTextContents();
  if (who.join(",") !== "ann,ben,carol") fail(`who is online: ${who}`);

  // On a phone the room name stays in sight and the online count opens the
  // list of who is online over the messages.
  const title = await ben.locator("#title").evaluate((h1) => {
    const box = h1.getBoundingClientRect();
    return { text: h1.textContent, clipped: h1.scrollWidth > h1.clientWidth, left: box.left, right: box.right, visible: box.width > 0 };
  });
  if (title.text !== "#garden" || title.clipped || !title.visible || title.left < 0 || title.right > 390) fail(`room name on a phone: ${JSON.stringify(title)}`);
  if (await ben.locator("#members").isVisible()) fail("the members list covers the phone's messages from the start");
  const count = ben.locator("#online");
  await count.filter({ hasText: "3 online" }).waitFor({ timeout: PATIENCE });
  await count.click();
  await ben.locator("#members").waitFor({ state: "visible", timeout: PATIENCE });
  const panel = await ben.locator("#members").boundingBox();
  if (panel.x < 0 || panel.x + panel.width > 390) fail(`members panel off screen: ${JSON.stringify(panel)}`);
  const phoneWho = await ben.locator("#who li").allTextContents();
  if (phoneWho.join(",") !== "ann,ben,carol") fail(`who is online, on a phone: ${phoneWho}`);
  if ((await count.getAttribute("aria-expanded")) !== "true") fail("online button does not say the list is open");
  await ben.keyboard.press("Escape");
  await ben.locator("#members").waitFor({ state: "hidden", timeout: PATIENCE });
  if ((await count.getAttribute("aria-expanded")) !== "false") fail("online button does not say the list is closed");
  await count.click();
  await ben.click("#close-members");
  await ben.locator("#members").waitFor({ state: "hidden", timeout: PATIENCE });
  // On a wide screen the list is a column from the start; the count hides
  // and shows it.
  if ((await ann.locator("#online").getAttribute("aria-expanded")) !== "true") fail("the desktop members column is not said to be open");
  await ann.click("#online");
  await ann.locator("#members").waitFor({ state: "hidden", timeout: PATIENCE });
  await ann.click("#online");
  await ann.locator("#members").waitFor({ state: "visible", timeout: PATIENCE });
  await ann.focus("#input");

  // While the tab is hidden, the title counts unread messages.
  await setHidden(ann, true);
  for (const n of [1, 2, 3]) client.stdin.write(`unread ${n}\n`);
  await titleIs(ann, "(3) #garden · chat");
  await setHidden(ann, false);
  await titleIs(ann, "#garden · chat");

  if (CHAT_SCREENSHOT) {
    await ben.focus("#input");
    await ann.screenshot({ path: CHAT_SCREENSHOT });
    await ben.screenshot({ path: CHAT_SCREENSHOT.replace(/(\.png)?$/, "-phone.png") });
  }

  // A page whose clock says two days later: the replayed messages are from
  // another day, so they carry their date.
  const danContext = await browser.newContext({ viewport: { width: 900, height: 560 } });
  await danContext.clock.setFixedTime(Date.now() + 2 * 86_400_000);
  const dan = await danContext.newPage();
  dan.on("pageerror", (error) => fail(`page error: ${error}`));
  await dan.goto(`${base}?name=dan`);
  await connected(dan, "dan");
  await dan.locator("#messages li.marker", { hasText: "end of history" }).waitFor({ timeout: PATIENCE });
  const danTimes = await dan.locator("#messages li.message time").allTextContents();
  if (!danTimes.length || !danTimes.every((t) => /^\d{4}-\d\d-\d\d \d\d:\d\d$/.test(t))) fail(`dates of earlier days: ${danTimes}`);
  const annTimes = await ann.locator("#messages li.message time").allTextContents();
  if (!annTimes.every((t) => /^\d\d:\d\d$/.test(t))) fail(`times of today: ${annTimes}`);
  await danContext.close();

  // SPEC: a page whose connection died without the server noticing (cut
  // here between page and server) comes back with its session secret and
  // gets its name at once; the server retires the old connection with 4001
  // and the room sees no leave or join. Of two lines left unanswered, the
  // one the server carried out (the welcome's last_id says so) is not sent
  // again, the one it never got is.
  const eveContext = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const eve = await eveContext.newPage();
  eve.on("pageerror", (error) => fail(`page error: ${error}`));
  const routes = [];
  await eve.routeWebSocket(/\/garden\?/, (route) => {
    const server = route.connectToServer();
    const link = { route, server, toPage: true, toServer: true };
    route.onMessage((frame) => link.toServer && server.send(frame));
    server.onMessage((frame) => link.toPage && route.send(frame));
    // Either side's close stays on its side: the cut below leaves the
    // server's end open, as a dead network does.
    route.onClose(() => {});
    link.closed = new Promise((resolve) => server.onClose((code, reason) => resolve({ code, reason })));
    routes.push(link);
  });
  await eve.goto(`${base}?name=eve`);
  await connected(eve, "eve");
  await ann.locator("#messages li.notice", { hasText: "eve joined" }).waitFor({ timeout: PATIENCE });
  // Nothing more reaches the page: the server carries out this line, but
  // its answer is lost.
  routes[0].toPage = false;
  await say(eve, "carried out");
  await sees(ann, "eve: carried out");
  // Nor the server: this line is lost on the way.
  routes[0].toServer = false;
  await say(eve, "never arrived");
  await routes[0].route.close({ code: 4000, reason: "cut" });
  await spec("a page that lost its connection gets its name back at once", async () => {
    await eve.locator("#state.offline").waitFor({ timeout: PATIENCE });
    await connected(eve, "eve");
    const retired = await Promise.race([routes[0].closed, new Promise((resolve) => setTimeout(resolve, PATIENCE, null).unref())]);
    must(retired?.code === 4001 && retired.reason === "replaced by a new connection", `the old connection ended with ${JSON.stringify(retired)}`);
    await say(eve, "eve is back");
    await sees(ann, "eve: eve is back");
    const notices = await ann.locator("#messages li.notice").allTextContents();
    must(notices.filter((n) => n.endsWith("eve joined")).length === 1 && !notices.some((n) => n.endsWith("eve left")),
      `the room saw ${JSON.stringify(notices.filter((n) => n.includes("eve")))}`);
    const said = (await messages(ann).allTextContents()).filter((t) => t.includes("eve: "));
    must(said.length === 3 && said[0].endsWith("eve: carried out") && said[1].endsWith("eve: never arrived"),
      `the room got from eve: ${JSON.stringify(said)}`);
    await eve.waitForFunction(() => !document.querySelector("#messages li.pending"), null, { timeout: PATIENCE });
    await sees(eve, "eve: carried out");
  });
  for (const { server } of routes) await server.close();
  await ann.locator("#messages li.notice", { hasText: "eve left" }).waitFor({ timeout: PATIENCE });
  await eveContext.close();

  // Scrolled up, new messages do not pull the view down but a button offers
  // the way down.
  for (let n = 1; n <= 20; n++) client.stdin.write(`filler ${n}\n`);
  await sees(ann, "carol: filler 20");
  // At the top, the page asks for earlier messages: Ann has seen the room
  // from its first, so the server has none.
  await ann.locator("#messages").evaluate((list) => { list.scrollTop = 0; });
  await ann.locator("#messages li.marker", { hasText: "no earlier messages" }).waitFor({ timeout: PATIENCE });
  const upThere = await ann.locator("#messages").evaluate((list) => list.scrollTop);
  client.stdin.write("while you were up there\n");
  await sees(ann, "while you were up there");
  await ann.locator("#new").waitFor({ state: "visible", timeout: PATIENCE });
  if ((await ann.locator("#messages").evaluate((list) => list.scrollTop)) !== upThere) fail("new message scrolled a reader who had scrolled up");
  await readable(ann, [["new messages button", "#new"]], "light");
  await ann.click("#new");
  await ann.waitForFunction(() => {
    const list = document.getElementById("messages");
    return list.scrollTop + list.clientHeight >= list.scrollHeight - 2;
  }, null, { timeout: PATIENCE });
  await ann.locator("#new").waitFor({ state: "hidden", timeout: PATIENCE });

  // /nick without a name is answered by the page itself.
  for (const page of [ann, ben]) {
    await say(page, "/nick");
    await page.locator("#messages li.error", { hasText: "usage: /nick NAME" }).waitFor({ timeout: PATIENCE });
  }
  await ann.fill("#input", "");
  // Sending with the button leaves the box focused for the next line.
  await ann.fill("#input", "sent with the button");
  await ann.click("#send button");
  await sees(ben, "ann: sent with the button");
  await focusedOnInput(ann);

  // Every kind of text is readable in both colour schemes.
  const kinds = [
    ["message", "#messages li.message:not(.own) .text"],
    ["sender", "#messages li.message:not(.own) .from"],
    ["own message", "#messages li.own .text"],
    ["own name", "#messages li.own .from"],
    ["notice", "#messages li.notice span"],
    ["error", "#messages li.error span"],
    ["time", "#messages time"],
    ["link", "#messages a"],
    ["room name", "#title"],
    ["header state", "#state"],
    ["online count", "#online"],
    ["members heading", "#count"],
    ["member", "#who li"],
    ["placeholder", "#input", "::placeholder"],
    ["name field", "#name"],
    ["send button", "#send button"],
  ];
  await readable(ann, kinds, "light");
  await readable(ben, kinds.filter(([kind]) => !["members heading", "member"].includes(kind)), "dark");

  // SPEC: the largest message is the welcome's limits.max_bytes, counted in
  // UTF-8 bytes. One byte more is refused by the page, which keeps the text
  // and the connection; exactly the limit goes through.
  const limits = await ann.evaluate((url) => new Promise((resolve, reject) => {
    const probe = new WebSocket(url, "chat.v1.json");
    probe.onmessage = (m) => {
      const event = JSON.parse(m.data);
      if (event.type === "welcome") { probe.close(); resolve(event.limits ?? null); }
    };
    probe.onerror = () => reject(new Error("the probe could not connect"));
  }), `ws://127.0.0.1:${port}/probe?name=probe`);
  await spec("the welcome carries limits.max_bytes", async () => must(Number.isInteger(limits?.max_bytes) && limits.max_bytes > 0, `limits: ${JSON.stringify(limits)}`));
  if (Number.isInteger(limits?.max_bytes) && limits.max_bytes > 0) {
    const max = limits.max_bytes;
    // "é" is two bytes: a check that counted characters would let this through.
    const over = "é".repeat(Math.floor(max / 2) + 1);
    const exact = "é".repeat(Math.floor(max / 2)) + "e".repeat(max % 2);
    const sockets = annSockets.length;
    const errors = await ann.locator("#messages li.error").count();
    await ann.fill("#input", over);
    await ann.press("#input", "Enter");
    await ann.locator("#messages li.error").nth(errors).waitFor({ timeout: PATIENCE });
    const reason = await ann.locator("#messages li").last().evaluate((li) => ({
      error: li.classList.contains("error"),
      text: li.textContent,
      lines: Math.round(li.getBoundingClientRect().height / parseFloat(getComputedStyle(li).lineHeight)),
    }));
    if (!reason.error || reason.lines !== 1 || !reason.text.includes(String(max))) fail(`reason for an oversized message: ${JSON.stringify(reason)}`);
    if ((await ann.inputValue("#input")) !== over) fail("the oversized message left the box");
    await ann.fill("#input", exact);
    await ann.press("#input", "Enter");
    await spec("a message of exactly max_bytes goes through", () => ben.waitForFunction((exact) =>
      [...document.querySelectorAll("#messages li.message .text")].some((text) => text.textContent === exact), exact, { timeout: PATIENCE }));
    if (await ben.evaluate((over) => [...document.querySelectorAll("#messages .text")].some((text) => text.textContent === over), over)) fail("the oversized message was sent");
    await connected(ann, "ann");
    if (annSockets.length !== sockets) fail("the connection did not stay up");
  }

  // SPEC: a message the server refuses (a control character) comes back into
  // the empty box, with the server's reason.
  await spec("a refused message comes back into the box", async () => {
    const errors = await ann.locator("#messages li.error").count();
    await ann.fill("#input", "ring \u0007 bell");
    await ann.press("#input", "Enter");
    await ann.locator("#messages li.error").nth(errors).waitFor({ timeout: 5_000 });
    const back = await ann.inputValue("#input");
    must(back === "ring \u0007 bell", `the box holds ${JSON.stringify(back)}`);
    await ann.fill("#input", "");
  });

  // The server restarts on the same port and store file: everyone comes back
  // on their own, where they were.
  await gus.waitFor((l) => l === `gus: old ${ARCHIVED}`, "the archive's last message");
  const linesBeforeRestart = { client: client.lines.length, gus: gus.lines.length };
  await stopped(server);
  await ann.locator("#state.offline").waitFor({ timeout: PATIENCE });
  // Lines typed meanwhile wait, shown as pending, and go out in order.
  await say(ann, "queued one");
  await say(ann, "queued two");
  await ann.locator("#messages li.pending").nth(1).waitFor({ timeout: PATIENCE });
  if ((await ann.inputValue("#input")) !== "") fail("a queued line stayed in the box");
  await readable(ann, [["pending message", "#messages li.pending .text"], ["pending state", "#messages li.pending .state"], ["offline state", "#state"]], "light");
  const beforeRestart = annSockets.length;
  ({ server } = await startServer(port));
  await connected(ann, "ann");
  await connected(ben, "ben");
  await client.waitFor((l, i) => i >= linesBeforeRestart.client && l.startsWith("* you are carol"), "welcome after the restart");
  await gus.waitFor((l, i) => i >= linesBeforeRestart.gus && l.startsWith("* you are gus"), "welcome after the restart");
  await ann.locator("#who li", { hasText: "carol" }).waitFor({ timeout: PATIENCE });
  for (const page of [ann, ben]) await sees(page, "ann: queued two");
  const order = (await messages(ben).allTextContents()).filter((t) => t.includes("ann: queued"));
  if (order.length !== 2 || !order[0].includes("queued one") || !order[1].includes("queued two")) fail(`queued lines arrived as ${order}`);
  await client.waitFor((l) => l === "ann: queued two", "second queued line");
  if (client.lines.indexOf("ann: queued one") > client.lines.indexOf("ann: queued two")) fail("queued lines out of order");
  await ann.waitForFunction(() => !document.querySelector("#messages li.pending"), null, { timeout: PATIENCE });
  // The reconnection resumes where the page was, under its name (and SPEC:
  // with its session secret).
  const again = new URL(annSockets[beforeRestart]).searchParams;
  if (again.get("name") !== "ann" || !again.has("since") || !again.has("epoch")) fail(`reconnected with ${redacted(again)}`);
  await spec("the reconnection presents the session secret", async () => must(secret && again.get("session") === secret, `reconnected with ${redacted(again)}`));
  for (const welcome of annWelcomes) await keptSecret(welcome.session);

  await say(ben, "after the restart");
  await sees(ann, "ben: after the restart");
  await client.waitFor((l) => l === "ben: after the restart", "message after the restart");
  client.stdin.write("carol is back\n");
  await sees(ann, "carol: carol is back");
  await sees(ben, "carol: carol is back");
  await client.waitFor((l) => l === "carol: carol is back", "own line after the restart");

  // The store kept the history, its numbering and epoch: nobody was told it
  // was reset or missed anything, and nothing came twice.
  for (const [who, lines] of [["the client", client.lines], ["gus", gus.lines]]) {
    const told = lines.filter((l) => l.startsWith("! missed"));
    if (told.length) fail(`${who} was told after the restart: ${JSON.stringify(told)}`);
  }
  for (const page of [ann, ben]) {
    const told = await page.locator("#messages li.error", { hasText: "missed" }).allTextContents();
    if (told.length) fail(`a page was told after the restart: ${JSON.stringify(told)}`);
    const seqs = await page.locator("#messages li.message[data-seq]").evaluateAll((lis) => lis.map((li) => li.dataset.seq));
    const twice = seqs.filter((seq, i) => seqs.indexOf(seq) !== i);
    if (twice.length) fail(`a page shows messages twice: ${twice}`);
  }
  const messageLines = client.lines.filter((l) => /^[^*!#][^ ]*: /.test(l));
  const repeated = messageLines.filter((l, i) => messageLines.indexOf(l) !== i);
  if (repeated.length) fail(`the client printed twice: ${JSON.stringify(repeated)}`);

  // A room with more messages than its replay: at the top, the page loads
  // the earlier ones above, with their dates, and keeps in view what was.
  const fayContext = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: "dark" });
  const fay = await fayContext.newPage();
  fay.on("pageerror", (error) => fail(`page error: ${error}`));
  // History requests in flight, and the most at once.
  const asked = { now: 0, most: 0, total: 0 };
  fay.on("websocket", (socket) => {
    socket.on("framesent", ({ payload }) => {
      if (JSON.parse(payload).type !== "history") return;
      asked.total += 1;
      asked.most = Math.max(asked.most, ++asked.now);
    });
    socket.on("framereceived", ({ payload }) => { if (JSON.parse(payload).type === "earlier") asked.now -= 1; });
  });
  await fay.goto(`http://127.0.0.1:${port}/archive?name=fay`);
  await connected(fay, "fay");
  await fay.locator("#messages li.marker", { hasText: "end of history" }).waitFor({ timeout: PATIENCE });
  const replayed = await messages(fay).count();
  if (replayed >= ARCHIVED) fail(`the archive's replay holds ${replayed} messages: nothing to scroll back to`);
  const firstReplayed = `gus: old ${ARCHIVED - replayed + 1}`;
  // Fewer lines than it will hold: the trim would remove them, were the
  // reader not scrolled up.
  await fay.evaluate(() => { shownCap = 120; });
  const oldLine = (n) => fay.locator("#messages li.message", { hasText: new RegExp(`^\\d\\d:\\d\\d ?gus: old ${n}$`) });
  // Many scroll events at once: still one request.
  const topBefore = await fay.locator("#messages").evaluate((list, text) => {
    list.scrollTop = 0;
    for (let i = 0; i < 5; i++) list.dispatchEvent(new Event("scroll"));
    const li = [...list.querySelectorAll("li.message")].find((li) => li.textContent.endsWith(text));
    return li.getBoundingClientRect().top - list.getBoundingClientRect().top;
  }, firstReplayed);
  await oldLine(ARCHIVED - replayed).waitFor({ timeout: PATIENCE });
  await fay.locator("#loading").waitFor({ state: "hidden", timeout: PATIENCE });
  const topAfter = await fay.locator("#messages").evaluate((list, text) => {
    const li = [...list.querySelectorAll("li.message")].find((li) => li.textContent.endsWith(text));
    return li.getBoundingClientRect().top - list.getBoundingClientRect().top;
  }, firstReplayed);
  if (Math.abs(topAfter - topBefore) > 1) fail(`loading earlier messages moved the view: ${topBefore} -> ${topAfter}`);
  // Back at the top, again until the server has no more: said once.
  for (let page = 2; page <= 4; page++) {
    await fay.locator("#messages").evaluate((list) => { list.scrollTop = 0; list.dispatchEvent(new Event("scroll")); });
    await fay.locator("#loading").waitFor({ state: "hidden", timeout: PATIENCE });
  }
  await oldLine(1).waitFor({ timeout: PATIENCE });
  await fay.locator("#messages li.marker", { hasText: "no earlier messages" }).waitFor({ timeout: PATIENCE });
  const shown = await fay.locator("#messages li").evaluateAll((lis) => lis.map((li) => ({
    cls: li.className, text: li.textContent, time: li.querySelector("time")?.textContent ?? null, seq: li.dataset.seq ?? null,
  })));
  const seqs = shown.filter((li) => li.seq !== null).map((li) => Number(li.seq));
  if (seqs.length !== ARCHIVED || seqs.some((seq, i) => i > 0 && seq <= seqs[i - 1])) fail(`the archive shows ${JSON.stringify(seqs)}`);
  if (shown.filter((li) => li.text.includes("no earlier messages")).length !== 1 || !shown[0].text.includes("no earlier messages")) {
    fail(`"no earlier messages" is not said once, on top: ${JSON.stringify(shown.slice(0, 3))}`);
  }
  // Today's messages: one day separator on top of the loaded ones, each
  // message with its time.
  const days = shown.filter((li) => li.cls === "day");
  if (days.length !== 1 || shown[1].cls !== "day" || !/\d{4}/.test(days[0].text)) fail(`day separators: ${JSON.stringify(days)} over ${JSON.stringify(shown[2])}`);
  if (!shown.filter((li) => li.cls.includes("message")).every((li) => /^\d\d:\d\d$/.test(li.time))) fail("a loaded message has no time");
  // The page asks for 50 at a time.
  const pages = Math.ceil((ARCHIVED - replayed) / 50);
  if (asked.most !== 1 || asked.total !== pages) fail(`history requests: ${JSON.stringify(asked)} (${pages} expected, one at a time)`);
  // Live lines while the reader is up there trim nothing.
  gus.stdin.write("while fay reads\n");
  await sees(fay, "gus: while fay reads");
  await oldLine(1).waitFor({ timeout: PATIENCE });
  if ((await fay.locator("#messages li").count()) <= 120) fail("lines were trimmed while the reader was scrolled up");
  await readable(fay, [["day separator", "#messages li.day"], ["no earlier messages", "#messages li.marker"]], "dark");
  if (CHAT_SCREENSHOT) await fay.screenshot({ path: CHAT_SCREENSHOT.replace(/(\.png)?$/, "-history.png") });
  // Back at the bottom, the oldest go again.
  await fay.click("#new");
  gus.stdin.write("fay is back down\n");
  await sees(fay, "gus: fay is back down");
  const kept = await fay.locator("#messages li").count();
  if (kept > 120) fail(`at the bottom, the page kept ${kept} lines past its cap of 120`);
  // /history N loads N more above the oldest still shown, and shows them.
  const oldestShown = Number(await fay.locator("#messages li[data-seq]").first().getAttribute("data-seq"));
  await say(fay, "/history 2");
  for (const seq of [oldestShown - 1, oldestShown - 2]) {
    await fay.locator(`#messages li[data-seq="${seq}"]`).waitFor({ timeout: PATIENCE });
  }
  const inView = await fay.locator(`#messages li[data-seq="${oldestShown - 2}"]`).evaluate((li) => {
    const [box, view] = [li.getBoundingClientRect(), li.parentElement.getBoundingClientRect()];
    return box.top >= view.top && box.bottom <= view.bottom;
  });
  if (!inView) fail("/history's answer is out of view");
  await fayContext.close();
  if (specFailures.length) fail(`checks that need spec/protocol14.md's server side:\n  ${specFailures.join("\n  ")}`);
  console.log("browser test passed");
} catch (error) {
  fail(error.stack || String(error));
} finally {
  await browser.close();
  if (client) client.kill("SIGTERM");
  if (gus) gus.kill("SIGTERM");
  await stopped(server);
  removeDb();
}
