// Drive the example chat page in headless Debian chromium (playwright-core).
//
// Usage: node chat.mjs BASE_URL ARTIFACT_DIR [BOB_BASE_URL]
// Opens BASE_URL/ in three tabs of one fresh browser profile: alice and bob
// sign in (a signed token from the page's POST /token) and join "lobby",
// alice types (bob sees the typing indicator) and sends a message (bob sees
// it), then carol joins and gets it as history. Then alice's connection
// drops (its socket is closed from page JS and new ones fail until bob has
// said three things); the page reconnects by itself, joins with its last
// position and shows the three messages exactly once. With BOB_BASE_URL,
// bob's tab is served by that other server process (sharing Redis): the
// member lists must still match. Saves screenshots in ARTIFACT_DIR and
// prints one JSON line with what was seen.
// Exits non-zero (with the reason on stderr) on any failure or page error.
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, artifacts, bobBase] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node chat.mjs BASE_URL ARTIFACT_DIR");
  process.exit(64);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT = 10_000;
const watchdog = setTimeout(() => {
  console.error("browser test: overall timeout (60 s)");
  process.exit(3);
}, 60_000);

mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "pachinko-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 900, height: 640 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const pageErrors = [];
const seen = {};
const tabs = {};

// Test-only instrumentation of a tab: keeps its sockets (so a test can close
// one, as a dropped network would) and, while window.__offline is set, makes
// new connections fail at once (the page sees a close, 1006, and retries).
function instrument() {
  const Real = window.WebSocket;
  window.__sockets = [];
  window.__offline = false;
  function Instrumented(url, protocols) {
    if (window.__offline) {
      const failed = { readyState: 3, send() {}, close() {} };
      setTimeout(() => failed.onclose && failed.onclose({ code: 1006 }), 0);
      return failed;
    }
    const socket = new Real(url, protocols);
    window.__sockets.push(socket);
    return socket;
  }
  Object.assign(Instrumented, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Instrumented;
}

async function open(name, { instrumented = false, from = base } = {}) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  if (instrumented) await page.addInitScript(instrument);
  tabs[name] = page;
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") pageErrors.push(`${name} console: ${msg.text()}`);
  });
  await page.goto(new URL("/", from).href);
  await page.locator("#join:enabled").waitFor();
  return page;
}

async function joinRoom(page, name, room = "lobby") {
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join");
  await page.locator("#status.open", { hasText: `connected as ${name}` }).waitFor();
  await page.locator("#members li", { hasText: name }).waitFor();
  await page.locator("#text:enabled").waitFor();
}

const members = (page) => page.locator("#members li").allTextContents();

let failure = null;
try {
  const alice = await open("alice", { instrumented: true });
  const bob = await open("bob", { from: bobBase || base });
  await joinRoom(alice, "alice");
  await joinRoom(bob, "bob");
  // presence: alice's list grows when bob joins
  await alice.locator("#members li", { hasText: "bob" }).waitFor();
  seen.members_alice = await members(alice);
  seen.members_bob = await members(bob);

  // typing indicator: alice types, bob sees it
  await alice.locator("#text").pressSequentially("hello from ");
  await bob.locator("#typing", { hasText: "alice is typing" }).waitFor();
  seen.typing_bob = await bob.locator("#typing").textContent();
  await bob.screenshot({ path: join(artifacts, "chat-typing.png"), fullPage: true });

  // a message: alice sends, bob shows it
  await alice.locator("#text").pressSequentially("alice");
  await alice.click("#send");
  const received = bob.locator("#messages li.msg", { hasText: "hello from alice" });
  await received.waitFor();
  seen.message_bob = await received.textContent();
  await alice.locator("#messages li.msg", { hasText: "hello from alice" }).waitFor();
  await bob.locator("#typing:empty").waitFor();
  await bob.screenshot({ path: join(artifacts, "chat-bob.png"), fullPage: true });
  await alice.screenshot({ path: join(artifacts, "chat-alice.png"), fullPage: true });

  // history on join: carol arrives later and gets the message
  const carol = await open("carol");
  await joinRoom(carol, "carol");
  const history = carol.locator("#messages li.history", { hasText: "hello from alice" });
  await history.waitFor();
  seen.history_carol = await history.textContent();
  seen.members_carol = await members(carol);
  await carol.screenshot({ path: join(artifacts, "chat-carol.png"), fullPage: true });

  // reconnect: alice's connection drops, bob says three things meanwhile,
  // alice's page reconnects by itself and shows them exactly once
  await alice.evaluate(() => {
    window.__offline = true;
    window.__sockets.at(-1).close();
  });
  seen.step = "dropped";
  await alice.locator("#status.closed").waitFor();
  seen.step = "closed";
  const missed = ["missed one", "missed two", "missed three"];
  for (const text of missed) {
    await bob.fill("#text", text);
    await bob.click("#send");
    await bob.locator("#messages li.msg", { hasText: text }).waitFor();
  }
  seen.step = "bob said";
  await alice.evaluate(() => { window.__offline = false; });
  await alice.locator("#messages li .note", { hasText: "reconnected to #lobby" }).waitFor();
  await alice.locator("#messages li.msg", { hasText: "missed three" }).waitFor();
  seen.step = "recovered";
  await alice.locator("#status.open").waitFor();
  delete seen.step;
  // one more, live: it comes after the missed ones, once
  await bob.fill("#text", "live again");
  await bob.click("#send");
  await alice.locator("#messages li.msg", { hasText: "live again" }).waitFor();
  const texts = await alice.locator("#messages li.msg .text").allTextContents();
  seen.messages_alice = texts;
  seen.reconnect_alice = await alice
    .locator("#messages li .note", { hasText: "reconnected to #lobby" })
    .allTextContents();
  seen.sockets_alice = await alice.evaluate(() => window.__sockets.length);
  await alice.screenshot({ path: join(artifacts, "chat-reconnect.png"), fullPage: true });
} catch (error) {
  failure = error;
  for (const [name, page] of Object.entries(tabs)) {
    const shown = await page.locator("#messages li").allTextContents().catch(() => []);
    seen[`shown_${name}`] = shown;
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(watchdog);
}

if (failure || pageErrors.length) {
  console.error(`browser test failed: ${failure ? failure.message : ""}`);
  for (const error of pageErrors) console.error(`page error: ${error}`);
  console.error(`seen so far: ${JSON.stringify(seen)}`);
  if (failure && process.env.CHAT_DEBUG) console.error(failure.stack);
  process.exit(1);
}
console.log(JSON.stringify(seen));
