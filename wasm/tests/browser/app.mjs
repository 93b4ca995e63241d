// End-to-end tests of the web app (www/, as `cargo xtask dist` writes it to
// www/dist/) served by a real mycel-relay (`--www`), in headless Chromium
// through playwright-core (/usr/bin/chromium; never a browser download).
//
//   MYCEL_RELAY_BIN=path/to/mycel-relay MYCEL_WWW_DIST=www/dist node app.mjs
//
// Each test uses fresh browser contexts (own IndexedDB, own service worker).
// Every wait is bounded; any failure exits non-zero.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Relay, freePort } from "./relay.mjs";
import { Tap, plaintextForms } from "./tap.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(process.env.MYCEL_WWW_DIST ?? path.join(here, "../../../www/dist"));
const relayBin = process.env.MYCEL_RELAY_BIN;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 20_000; // the longest any single wait may take
// Screenshots of each step, for a person to look at (gitignored).
const shots = path.resolve(process.env.MYCEL_SCREENSHOTS ?? path.join(here, "screenshots"));
mkdirSync(shots, { recursive: true });
const shot = (p, name) => p.screenshot({ path: path.join(shots, `${name}.png`), timeout: WAIT });

const watchdog = setTimeout(() => {
  console.error("app tests: still running after 420 s; giving up");
  process.exit(1);
}, 420_000);
watchdog.unref();

for (const [what, p] of [["the web app (cargo xtask dist's www/dist)", path.join(dist, "index.html")], ["its npm package (www/dist/pkg)", path.join(dist, "pkg/index.js")], ["mycel-relay (MYCEL_RELAY_BIN)", relayBin ?? ""], ["Chromium", chromiumPath]]) {
  if (!p || !existsSync(p)) {
    console.error(`app tests: ${what} not found at ${p || "(unset)"}`);
    process.exit(1);
  }
}




let browser, relay;
const contexts = [];

before(async () => {
  relay = new Relay(relayBin, await freePort(), ["--www", dist]);
  await relay.start();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    timeout: WAIT,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  await relay?.stop();
});

/**
 * A fresh browser profile (or a new page of `context`) on the app at `url`;
 * console errors are collected in `p.errors`.
 */
async function open(url = relay.base, context = null) {
  if (!context) {
    context = await browser.newContext();
    contexts.push(context);
    // Relay only (the app's setting): these tests stop the relay to take
    // pages offline and make concurrent edits, which a direct link would
    // keep in sync. Direct links have their own suite (rtc.mjs).
    await context.addInitScript(() => localStorage.setItem("mycel.direct", "off"));
  }
  const p = await context.newPage();
  p.setDefaultTimeout(WAIT);
  p.errors = [];
  p.on("pageerror", (e) => { p.errors.push(`page error: ${e.message}`); console.error(`page error: ${e.message}`); });
  p.on("console", (m) => {
    if (m.type() === "error") { p.errors.push(`console.error: ${m.text()}`); console.error(`console.error: ${m.text()}`); }
  });
  await p.goto(url);
  await ready(p);
  return p;
}

const ready = (p) => p.waitForSelector("html[data-ready=true]", { state: "attached", timeout: WAIT });
const items = (p) => p.$$eval('[data-testid="item"]', (els) => els.map((e) => e.textContent));
const status = (p) => p.textContent('[data-testid="sync-status"]');

async function until(what, fn) {
  const end = Date.now() + WAIT;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${WAIT} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const controlled = (p) => until("the service worker to control the page", () => p.evaluate(() => !!navigator.serviceWorker.controller));
const build = (p) => p.getAttribute('meta[name="mycel-build"]', "content");
const cacheNames = (p) => p.evaluate(() => caches.keys());
const item = (text) => `li:has([data-testid="item"]:text-is(${JSON.stringify(text)}))`;
const random = () => Array.from({ length: 4 }, () => Math.random().toString(36).slice(2, 8)).join("");

const peers = (p) => p.$$eval('[data-testid="presence"] [data-testid="peer"] .name', (els) => els.map((e) => e.textContent));

async function newDoc(p) {
  await p.click('[data-testid="new-doc"]');
  await p.waitForURL(/#d=[A-Za-z0-9_-]+&k=[A-Za-z0-9_-]+$/, { timeout: WAIT });
  await p.waitForSelector('[data-testid="item-input"]', { state: "visible", timeout: WAIT });
  return p.url();
}

async function addItem(p, text) {
  await p.fill('[data-testid="item-input"]', text);
  await p.click('[data-testid="add-item"]');
}

test("new document, items added in one page appear in another opened at the share link; sync-status shows synced", async () => {
  const a = await open();
  await until("page A synced with the relay", async () => (await status(a)) === "synced");
  const link = await newDoc(a);
  assert.ok(link.startsWith(relay.base), link);
  assert.equal(new URL(link).search, "", "the key is only in the fragment");
  assert.equal(await a.inputValue('[data-testid="share-link"]'), link, "the share link is shown");
  await a.fill('[data-testid="title"]', "groceries");
  await addItem(a, "milk");
  // Adding with the keyboard: Enter in the input.
  await a.fill('[data-testid="item-input"]', "eggs");
  await a.press('[data-testid="item-input"]', "Enter");
  assert.deepEqual(await items(a), ["milk", "eggs"]);
  await until("A's durability to say saved/sent", async () => /saved on this device|sent|stored by/.test(await a.textContent('[data-testid="durability"]')));

  const b = await open(link);
  const t0 = Date.now();
  await until("B to show A's items", async () => JSON.stringify(await items(b)) === JSON.stringify(["milk", "eggs"]));
  console.error(`app: B showed A's items ${Date.now() - t0} ms after opening the link`);
  assert.equal(await b.inputValue('[data-testid="title"]'), "groceries");
  await until("B synced", async () => (await status(b)) === "synced");
  await shot(a, "01-a-new-document-with-items");
  await shot(b, "02-b-opened-the-share-link");

  // Edits both ways: B adds and checks, A sees them; A removes, B sees it.
  // How long an edit takes to show on the other page is printed (the
  // issue's 1 s; timing is not asserted, the machine may be loaded).
  let t = Date.now();
  await addItem(b, "bread");
  await until("A to show B's item", async () => JSON.stringify(await items(a)) === JSON.stringify(["milk", "eggs", "bread"]));
  const bToA = Date.now() - t;
  await b.check('li:has([data-testid="item"]:text-is("milk")) input[type=checkbox]');
  await until("A to show milk checked", () => a.isChecked('li:has([data-testid="item"]:text-is("milk")) input[type=checkbox]'));
  t = Date.now();
  await a.click(`${item("eggs")} button[aria-label="Remove eggs"]`);
  await until("B to see eggs removed", async () => JSON.stringify(await items(b)) === JSON.stringify(["milk", "bread"]));
  const aToB = Date.now() - t;
  console.error(`app: an edit showed on the other page after ${bToA} ms (B to A) and ${aToB} ms (A to B)`);

  // The document is listed on this device.
  await a.goto(relay.base);
  await ready(a);
  await until("A's document list", async () => (await a.textContent('[data-testid="doc-list"]')).includes("groceries"));
  await shot(a, "03-a-documents-on-this-device");
  assert.deepEqual([...a.errors, ...b.errors], [], "no console errors");
});

test("a damaged link, or a wrong key in a browser of its own, shows data-testid=error and no content", async () => {
  const a = await open();
  const link = await newDoc(a);
  await a.fill('[data-testid="title"]', "secret title");
  await addItem(a, "secret item");
  await until("the item", async () => (await items(a)).length === 1);

  // Damaged: part of the key cut off.
  const damaged = link.slice(0, -5);
  const b = await open(damaged);
  await b.waitForSelector('[data-testid="error"]', { state: "visible", timeout: WAIT });
  const message = await b.textContent('[data-testid="error"]');
  assert.match(message, /damaged|wrong/i, message);
  assert.deepEqual(await items(b), []);
  await shot(b, "04-damaged-link-error");
  assert.equal(await b.isVisible('[data-testid="item-input"]'), false, "no document content");

  // A wrong key (well-formed, not this document's) in a fresh browser
  // context, while A holds the document and is online: the key decides the
  // room, so nobody answers. The page waits without letting anyone edit,
  // then says so, and never shows the content.
  const wrong = link.replace(/k=[A-Za-z0-9_-]+$/, "k=" + Buffer.alloc(32, 7).toString("base64url"));
  const c = await open(wrong);
  await c.waitForSelector('[data-testid="loading"]', { state: "visible", timeout: WAIT });
  assert.equal(await c.isDisabled('[data-testid="item-input"]'), true, "nothing editable while waiting");
  await shot(c, "05-wrong-key-fresh-browser-waiting");
  await c.waitForSelector('[data-testid="error"]', { state: "visible", timeout: WAIT });
  assert.match(await c.textContent('[data-testid="error"]'), /wrong|damaged/i);
  assert.deepEqual(await items(c), []);
  assert.equal(await c.isVisible('[data-testid="title"]'), false, "no document content");
  const seen = await c.evaluate(() => document.body.innerText + [...document.querySelectorAll("input, textarea")].map((e) => e.value).join(" "));
  assert.ok(!/secret/.test(seen), `no content of the document: ${seen}`);
  await shot(c, "06-wrong-key-fresh-browser-error");
  assert.deepEqual(c.errors, [], "no console errors");

  // A wrong key where the document is held: refused at once.
  await a.goto(wrong);
  await a.waitForSelector('[data-testid="error"]', { state: "visible", timeout: WAIT });
  assert.match(await a.textContent('[data-testid="error"]'), /wrong/i);
  assert.deepEqual(await items(a), []);
});

test("a link opened on a fresh device shows a loading state, nothing editable, until the document arrives", async () => {
  const a = await open();
  const link = await newDoc(a);
  await addItem(a, "arrives later");
  await until("saved on this device", async () => /saved on this device|sent|stored by/.test(await a.textContent('[data-testid="durability"]')));
  const context = a.context();
  await a.close(); // nobody online holds the document now

  const b = await open(link);
  await b.waitForSelector('[data-testid="loading"]', { state: "visible", timeout: WAIT });
  for (const id of ["title", "body", "item-input", "add-item"]) {
    assert.equal(await b.isDisabled(`[data-testid="${id}"]`), true, `${id} disabled while loading`);
  }
  assert.equal(await b.getAttribute("#editor", "aria-busy"), "true");
  assert.deepEqual(await items(b), []);
  await shot(b, "07-fresh-device-loading");

  // The holder comes back: B gets the document and becomes editable.
  const a2 = await open(link, context);
  await until("A's item again", async () => (await items(a2)).length === 1);
  await until("B to receive the document", async () => JSON.stringify(await items(b)) === JSON.stringify(["arrives later"]));
  await b.waitForSelector('[data-testid="loading"]', { state: "hidden", timeout: WAIT });
  assert.equal(await b.isDisabled('[data-testid="item-input"]'), false, "editable once loaded");
  await addItem(b, "from B");
  await until("A to see B's item", async () => (await items(a2)).length === 2);
  await shot(b, "08-fresh-device-loaded");
  assert.deepEqual([...b.errors, ...a2.errors], [], "no console errors");
});

test("checklist items reorder with labelled move buttons from the keyboard; a concurrent move and edit both survive", async () => {
  const a = await open();
  const link = await newDoc(a);
  for (const t of ["one", "two", "three"]) await addItem(a, t);
  const b = await open(link);
  await until("B to show the three items", async () => (await items(b)).length === 3);

  // Keyboard only: Tab to "Move three up", then Enter twice. Focus stays on the moved item.
  await a.focus(`${item("three")} input.text`);
  await a.keyboard.press("Tab"); // the hidden text hook is not focusable: next is "Move three up"
  assert.equal(await a.evaluate(() => document.activeElement.getAttribute("aria-label")), "Move three up");
  await a.keyboard.press("Enter");
  await until("three moved up", async () => JSON.stringify(await items(a)) === JSON.stringify(["one", "three", "two"]));
  assert.equal(await a.evaluate(() => document.activeElement.getAttribute("aria-label")), "Move three up", "focus follows the item");
  await a.keyboard.press("Enter");
  await until("three at the top", async () => JSON.stringify(await items(a)) === JSON.stringify(["three", "one", "two"]));
  // At the top, "up" is disabled and the focus moves to "down".
  assert.equal(await a.isDisabled(`${item("three")} [data-role="up"]`), true);
  assert.equal(await a.evaluate(() => document.activeElement.getAttribute("aria-label")), "Move three down");
  await until("B to show the new order", async () => JSON.stringify(await items(b)) === JSON.stringify(["three", "one", "two"]));
  await shot(a, "09-reordered-with-the-keyboard");

  // Concurrent edits while the relay is down: A moves "two" to the top;
  // B checks "two", renames it, and moves "three" down.
  await relay.stop();
  await a.click(`${item("two")} [data-role="up"]`);
  await until("A: two up", async () => JSON.stringify(await items(a)) === JSON.stringify(["three", "two", "one"]));
  await a.click(`${item("two")} [data-role="up"]`);
  await until("A: two at the top", async () => JSON.stringify(await items(a)) === JSON.stringify(["two", "three", "one"]));
  await b.check(`${item("two")} input[type=checkbox]`);
  await b.fill(`${item("two")} input.text`, "two, renamed");
  await b.press(`${item("two")} input.text`, "Enter");
  await until("B: renamed", async () => (await items(b)).includes("two, renamed"));
  await b.click(`${item("three")} [data-role="down"]`);
  await until("B: three down", async () => JSON.stringify(await items(b)) === JSON.stringify(["one", "three", "two, renamed"]));
  await relay.start();
  const expected = ["two, renamed", "one", "three"];
  for (const p of [a, b]) {
    await until("both moves and the edit merged", async () => JSON.stringify(await items(p)) === JSON.stringify(expected));
    assert.equal(await p.isChecked(`${item("two, renamed")} input[type=checkbox]`), true, "the check of the moved item survives");
  }
  await shot(a, "10-concurrent-move-and-edit-merged");
  assert.deepEqual([...a.errors, ...b.errors].filter((e) => !/WebSocket connection/.test(e)), [], "no console errors but the relay's absence");
});

test("after the first visit the app reloads with the network off (service worker), with its data; offline edits converge with the other page's", async () => {
  const a = await open();
  await controlled(a);
  const link = await newDoc(a);
  await addItem(a, "offline-proof");
  await until("saved on this device", async () => /saved on this device|sent|stored by/.test(await a.textContent('[data-testid="durability"]')));
  const b = await open(link);
  await until("B to show A's item", async () => JSON.stringify(await items(b)) === JSON.stringify(["offline-proof"]));
  await a.context().setOffline(true);
  await a.reload();
  await ready(a);
  await until("the item after an offline reload", async () => JSON.stringify(await items(a)) === JSON.stringify(["offline-proof"]));
  assert.equal(a.url(), link);
  await addItem(a, "added offline");
  await until("the offline item", async () => (await items(a)).length === 2);
  assert.equal(await status(a), "offline");
  await shot(a, "11-offline-reload");
  // B edits meanwhile, online.
  await addItem(b, "added by B meanwhile");
  await a.context().setOffline(false);
  await until("synced again once the network is back", async () => (await status(a)) === "synced");
  const want = JSON.stringify(["added by B meanwhile", "added offline", "offline-proof"]);
  await until("both pages to converge", async () =>
    JSON.stringify((await items(a)).sort()) === want && JSON.stringify((await items(b)).sort()) === want);
  assert.deepEqual(await items(a), await items(b), "the same items in the same order on both pages");
  assert.equal(await a.inputValue('[data-testid="title"]'), await b.inputValue('[data-testid="title"]'));
});

test("the relay killed and restarted: both pages converge", async () => {
  const a = await open();
  const link = await newDoc(a);
  await addItem(a, "before");
  const b = await open(link);
  await until("B to show A's item", async () => JSON.stringify(await items(b)) === JSON.stringify(["before"]));
  await relay.stop();
  await addItem(a, "from A while the relay is down");
  await addItem(b, "from B while the relay is down");
  await relay.start();
  for (const p of [a, b]) {
    await until("both pages to hold all three items", async () => (await items(p)).length === 3);
  }
  assert.deepEqual(await items(a), await items(b), "identical content");
  await until("A synced after the restart", async () => (await status(a)) === "synced");
  await shot(b, "12-converged-after-relay-restart");
});

test("the bytes between browser and relay never hold a plaintext canary typed into the app (a TCP tap records them)", async () => {
  const tap = new Tap(relay.port);
  await tap.start();
  try {
    const canary = `canary-${random()}`;
    const control = { url: `url-control-${random()}`, ws: `ws-control-${random()}` };
    // Both pages load the app through the tap, so their WebSockets to the relay go through it too.
    const a = await open(`${tap.base}?tap=${control.url}`);
    await until("A synced through the tap", async () => (await status(a)) === "synced");
    const link = await newDoc(a);
    assert.ok(link.startsWith(tap.base), link);
    await a.fill('[data-testid="title"]', canary);
    await a.fill('[data-testid="body"]', `notes: ${canary}`);
    await addItem(a, canary);
    await a.fill('[data-testid="my-name"]', canary); // presence, too
    const b = await open(link);
    await until("B to receive the canary through the tap", async () => JSON.stringify(await items(b)) === JSON.stringify([canary]));
    assert.equal(await b.inputValue('[data-testid="title"]'), canary);
    assert.equal(await b.inputValue('[data-testid="body"]'), `notes: ${canary}`);
    await until("B to see A's name (presence) through the tap", async () => (await peers(b)).includes(canary));
    // A live change while both are connected, and one back the other way.
    await addItem(a, `${canary} live`);
    await addItem(b, `${canary} from B`);
    await until("both ways", async () => (await items(a)).length === 3 && (await items(b)).length === 3);
    await until("A's changes sent", async () => /sent|stored by/.test(await a.textContent('[data-testid="durability"]')));
    await shot(b, "13-canary-synced-through-the-tap");

    // Positive control of the WebSocket decoding: a page sends a string in
    // clear to the relay through the tap (the relay refuses it; the tap saw it).
    await a.evaluate((text) => new Promise((resolve) => {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => { ws.send(new TextEncoder().encode(text)); setTimeout(() => { ws.close(); resolve(); }, 300); };
      ws.onerror = () => resolve();
    }), control.ws);
    await new Promise((r) => setTimeout(r, 200));

    const streams = tap.streams();
    const messages = tap.messages();
    const upBytes = streams.reduce((n, s) => n + s.up.length, 0);
    const downBytes = streams.reduce((n, s) => n + s.down.length, 0);
    const wsBytes = (list) => list.reduce((n, m) => n + m.length, 0);
    console.error(`app: tap recorded ${streams.length} connections, ${upBytes} bytes browser→relay and ${downBytes} relay→browser; ` +
      `${messages.up.length} + ${messages.down.length} WebSocket messages (${wsBytes(messages.up)} + ${wsBytes(messages.down)} payload bytes)`);
    const has = (buffers, needle) => buffers.some((buf) => buf.includes(needle));
    const raw = streams.flatMap((s) => [s.up, s.down]);
    const all = [...raw, ...messages.up, ...messages.down];

    // Positive controls: the tap recorded the traffic, and a search of it finds what is there.
    assert.ok(has(raw, Buffer.from(`GET /?tap=${control.url}`)), "the tap saw the page request with its control string");
    assert.ok(has(messages.up, Buffer.from(control.ws)), "the decoded WebSocket messages hold the string sent in clear");
    assert.ok(!has(raw, Buffer.from(control.ws)), "(which masking hides from the raw bytes: decoding is needed)");
    assert.ok(streams.filter((s) => /^GET \/ws /.test(s.up.subarray(0, 8).toString("latin1"))).length >= 3, "both pages' WebSockets went through the tap");
    assert.ok(messages.up.length >= 4 && messages.down.length >= 4, "sync traffic flowed both ways through the tap");
    assert.ok(wsBytes(messages.up) > 1000 && wsBytes(messages.down) > 1000, "enough bytes to carry the changes");

    // The canary, in every form it could take in clear, is in none of it.
    for (const [form, bytes] of plaintextForms(canary)) {
      assert.ok(!has(all, bytes), `the canary (${form}) crossed the tap in clear`);
    }
    assert.deepEqual([...a.errors, ...b.errors], [], "no console errors");
    // Closed before the tap goes, so they do not keep reconnecting to it.
    await a.context().close();
    await b.context().close();
  } finally {
    await tap.stop();
  }
});

/** A copy of www/dist as another build `name` of the app (the build id in sw.js and index.html changed). */
function buildCopy(name) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `mycel-app-${name}-`));
  cpSync(dist, dir, { recursive: true });
  const sw = readFileSync(path.join(dir, "sw.js"), "utf8");
  const id = sw.match(/const BUILD = "([^"]*)";/)?.[1];
  assert.ok(id, "sw.js holds its build id");
  const build = `${id}-${name}`;
  writeFileSync(path.join(dir, "sw.js"), sw.replace(`const BUILD = "${id}";`, `const BUILD = "${build}";`));
  const html = readFileSync(path.join(dir, "index.html"), "utf8");
  assert.ok(html.includes(`<meta name="mycel-build" content="${id}">`), "index.html holds its build id");
  writeFileSync(path.join(dir, "index.html"), html.replace(`<meta name="mycel-build" content="${id}">`, `<meta name="mycel-build" content="${build}">`));
  return { dir, build };
}

test("a new build of the app is picked up on the next visit, old caches deleted, the open document keeps working", async () => {
  const [A, B] = [buildCopy("a"), buildCopy("b")];
  const server = new Relay(relayBin, await freePort(), ["--www", A.dir]);
  await server.start();
  const pages = [];
  try {
    const a = await open(server.base);
    await controlled(a);
    const link = await newDoc(a);
    await a.fill('[data-testid="title"]', "kept across updates");
    await addItem(a, "before the update");
    const peer = await open(link);
    pages.push(a, peer);
    await until("the peer to show A's item", async () => (await items(peer)).length === 1);
    assert.equal(await build(a), A.build);
    assert.deepEqual(await cacheNames(a), [`mycel-notes-${A.build}`]);

    // The server now serves build B. A's page reconnects to the relay and looks for an update.
    await server.stop();
    server.args = ["--www", B.dir];
    await server.start();
    await a.waitForSelector('[data-testid="update"]', { state: "visible", timeout: WAIT });
    assert.equal(await build(a), A.build, "the open page keeps running the code it loaded");
    await until("only the new build's cache is left", async () => JSON.stringify(await cacheNames(a)) === JSON.stringify([`mycel-notes-${B.build}`]));
    // The open document keeps working under the new service worker.
    await addItem(a, "while the update arrived");
    await until("the peer to see it", async () => (await items(peer)).length === 2);
    await shot(a, "14-update-installed-notice");

    // The next visit runs build B, with the document intact.
    await a.reload();
    await ready(a);
    assert.equal(await build(a), B.build, "the next visit runs the new build");
    assert.equal(await a.textContent("#build"), B.build, "and says so");
    await until("the document intact", async () => JSON.stringify(await items(a)) === JSON.stringify(["before the update", "while the update arrived"]));
    assert.equal(await a.inputValue('[data-testid="title"]'), "kept across updates");
    assert.equal(await a.isVisible('[data-testid="update"]'), false);
    await addItem(a, "after the update");
    await until("the peer to see the new build's edit", async () => (await items(peer)).length === 3);
    await shot(a, "15-next-visit-runs-the-new-build");
    assert.deepEqual(a.errors.filter((e) => !/WebSocket connection/.test(e)), [], "no console errors but the relay's restart");
  } finally {
    // Closed before their server goes, so they do not keep reconnecting to it.
    for (const p of pages) await p.context().close().catch(() => {});
    await server.stop();
    for (const d of [A.dir, B.dir]) rmSync(d, { recursive: true, force: true });
  }
});

test("first load after the wasm is cached: navigation start to the document shown (printed, not asserted)", async () => {
  const a = await open();
  await controlled(a);
  const link = await newDoc(a);
  await a.fill('[data-testid="title"]', "timing");
  for (const t of ["one", "two", "three"]) await addItem(a, t);
  await until("saved on this device", async () => /saved on this device|sent|stored by/.test(await a.textContent('[data-testid="durability"]')));
  const runs = [];
  for (let i = 0; i < 5; i++) {
    await a.reload();
    await a.waitForFunction(() => performance.getEntriesByName("mycel:doc-ready").length > 0, null, { timeout: WAIT });
    const t = await a.evaluate(() => {
      const wasm = performance.getEntriesByType("resource").find((r) => r.name.endsWith(".wasm"));
      return {
        ready: performance.getEntriesByName("mycel:doc-ready")[0].startTime,
        // Served by the service worker (its cache), not the network.
        wasmFromWorker: !!wasm && wasm.workerStart > 0,
      };
    });
    assert.ok(t.wasmFromWorker, "the wasm came through the service worker");
    assert.equal(a.url(), link);
    runs.push(t.ready);
  }
  const sorted = [...runs].sort((x, y) => x - y);
  console.error(`app: first load with the wasm cached (navigation start → document shown), ${runs.length} visits: ` +
    `median ${sorted[Math.floor(sorted.length / 2)].toFixed(0)} ms (${runs.map((r) => r.toFixed(0)).join(", ")} ms)`);
  await shot(a, "16-loaded-from-the-cache");
  assert.deepEqual(a.errors, [], "no console errors");
});

test("who else is here: each page shows the others' names and colours (sealed presence), renames follow, a page that leaves disappears", async () => {
  const a = await open();
  const link = await newDoc(a);
  await a.fill('[data-testid="my-name"]', "Ada");
  const b = await open(link);
  await b.fill('[data-testid="my-name"]', "Bo");
  const t0 = Date.now();
  await until("B to see Ada", async () => JSON.stringify(await peers(b)) === JSON.stringify(["Ada"]));
  await until("A to see Bo", async () => JSON.stringify(await peers(a)) === JSON.stringify(["Bo"]));
  console.error(`app: presence seen both ways ${Date.now() - t0} ms after B opened the link`);
  const colour = await b.$eval('[data-testid="peer"] .dot', (e) => getComputedStyle(e).backgroundColor);
  assert.match(colour, /^rgb\(/, "a colour dot");
  await a.fill('[data-testid="my-name"]', "Ada L.");
  await until("B to see the new name", async () => JSON.stringify(await peers(b)) === JSON.stringify(["Ada L."]));
  await shot(b, "17-who-else-is-here");
  const errors = [...a.errors, ...b.errors];
  await a.close();
  await until("B to see Ada leave", async () => (await peers(b)).length === 0);
  assert.equal(await b.isVisible("#only-you"), true);
  assert.deepEqual([...errors, ...b.errors], [], "no console errors");
});
