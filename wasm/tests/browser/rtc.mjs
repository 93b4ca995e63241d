// Direct links (WebRTC data channels, docs/protocol.md §5.3) between two
// browser profiles in real headless Chromium, with a real relay for the
// signaling:
//
//   unshare -n sh -c 'ip link set lo up; MYCEL_RELAY_BIN=… node rtc.mjs'
//
// `cargo xtask test` runs it so, in a network namespace of its own where
// loopback is the only interface: the browsers' host candidates are
// 127.0.0.1 (`--allow-loopback-in-peer-connection`; the microphone
// permission makes Chromium show host addresses instead of mDNS names),
// and nothing leaves the machine. Every wait is bounded.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Relay, freePort } from "./relay.mjs";
import { CHROMIUM_ARGS, serveStatic, suiteSetup } from "./serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const { pkgDir, relayBin, chromiumPath } = suiteSetup("direct-link tests", here);
const WAIT = 20_000; // the longest any single wait may take

let browser, server, base;
const contexts = [];
const relays = [];

before(async () => {
  server = await serveStatic({ files: { "/": path.join(here, "index.html") }, dirs: { "/pkg/": pkgDir } });
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({
    executablePath: chromiumPath,
    timeout: WAIT,
    args: [...CHROMIUM_ARGS, "--allow-loopback-in-peer-connection"],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close().catch(() => {});
  for (const r of relays) await r.stop();
  server?.close();
});

async function startRelay() {
  const r = new Relay(relayBin, await freePort(), []);
  relays.push(r);
  await r.start();
  return r;
}

/**
 * A fresh browser profile with the test page loaded and a repo open on
 * `relayUrl` as window.repo. Every RTCPeerConnection the page makes is kept
 * in window.pcs (the test closes one from outside); window.times records
 * when (ms since the page's navigation start) the first peer was met and
 * the first direct link was open (status polled every 10 ms).
 */
async function peer(relayUrl) {
  const context = await browser.newContext();
  contexts.push(context);
  await context.grantPermissions(["microphone"]);
  const p = await context.newPage();
  p.setDefaultTimeout(WAIT);
  p.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  p.on("console", (m) => { if (m.type() === "error") console.error(`console.error: ${m.text()}`); });
  await p.addInitScript(() => {
    window.pcs = [];
    const Native = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends Native {
      constructor(...args) {
        super(...args);
        window.pcs.push(this);
      }
    };
  });
  await p.goto(base);
  await p.waitForFunction(() => window.mycelReady === true, null, { timeout: WAIT });
  await p.evaluate(async (relay) => {
    window.times = {};
    window.warnings = [];
    window.repo = await window.mycel.Repo.open({ relay });
    window.repo.on("peer", () => { window.times.peer ??= performance.now(); });
    window.repo.on("warning", (e) => window.warnings.push(e.message));
    const poll = setInterval(() => {
      if (Object.values(window.repo.status.peers).some((p) => p.direct)) {
        window.times.direct = performance.now();
        clearInterval(poll);
      }
    }, 10);
  }, relayUrl);
  return p;
}

/** Waits (bounded) until `fn(arg)` is truthy in the page. */
function until(p, fn, arg, what, timeout = WAIT) {
  return p.waitForFunction(fn, arg, { timeout, polling: 25 }).catch((e) => {
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}`);
  });
}

/** A shares a new document with B; both wait for the direct link. */
async function shareAndLink(a, b) {
  const link = await a.evaluate(async () => {
    window.doc = await window.repo.create();
    window.doc.change((d) => { d.title = "direct"; d.a = []; d.b = []; });
    return window.doc.shareLink();
  });
  await b.evaluate(async (link) => {
    window.doc = await window.repo.find(link);
  }, link);
  const [idA, idB] = [await a.evaluate(() => window.repo.peerId), await b.evaluate(() => window.repo.peerId)];
  await until(a, (id) => window.repo.status.peers[id]?.direct === true, idB, "A's direct link to B");
  await until(b, (id) => window.repo.status.peers[id]?.direct === true, idA, "B's direct link to A");
  for (const [p, who] of [[a, "A"], [b, "B"]]) {
    await until(p, () => window.times.direct !== undefined, null, `${who}'s link time`);
    const t = await p.evaluate(() => window.times);
    console.log(`# ${who}: page load to first direct link open ${Math.round(t.direct)} ms (peer met at ${Math.round(t.peer)} ms, linked ${Math.round(t.direct - t.peer)} ms later)`);
  }
  await until(b, () => window.doc.value().title === "direct", null, "B to hold A's document");
}

async function bytes(p, who) {
  const s = await p.evaluate(() => window.repo.status);
  const total = s.bytesDirect + s.bytesRelay;
  console.log(`# ${who}: ${s.bytesDirect} B sent direct, ${s.bytesRelay} B to the relay (${total ? Math.round((100 * s.bytesDirect) / total) : 0} % direct)`);
  return s;
}

test("two browsers sync over a data channel, and go on syncing over it with the relay stopped", async () => {
  const relay = await startRelay();
  const [a, b] = [await peer(relay.url), await peer(relay.url)];
  await shareAndLink(a, b);

  await relay.stop();
  for (const p of [a, b]) await until(p, () => !window.repo.status.online, null, "the relay link to drop");
  // Edits on both sides, each a few changes, converge over the channel.
  await a.evaluate(() => { for (let i = 0; i < 5; i++) window.doc.change((d) => { d.a.push(`a${i}`); }); });
  await b.evaluate(() => { for (let i = 0; i < 5; i++) window.doc.change((d) => { d.b.push(`b${i}`); }); });
  for (const p of [a, b]) {
    await until(p, () => window.doc.value().a.length === 5 && window.doc.value().b.length === 5, null, "both sides' edits over the channel");
  }
  const [va, vb] = [await a.evaluate(() => window.doc.value()), await b.evaluate(() => window.doc.value())];
  assert.deepEqual(va, vb);
  assert.deepEqual(va.a, ["a0", "a1", "a2", "a3", "a4"]);
  for (const p of [a, b]) {
    const s = await p.evaluate(() => window.repo.status);
    assert.equal(s.online, false, "the relay is gone");
    assert.ok(Object.values(s.peers).some((x) => x.direct), "still linked directly");
  }
  const s = await bytes(a, "A");
  assert.ok(s.bytesDirect > 0, "A sent on the data channel");
  await bytes(b, "B");
  for (const p of [a, b]) await p.evaluate(() => window.repo.close());
});

test("a data channel killed mid-sync falls back to the relay without loss", async () => {
  const relay = await startRelay();
  const [a, b] = [await peer(relay.url), await peer(relay.url)];
  await shareAndLink(a, b);
  const idB = await b.evaluate(() => window.repo.peerId);

  // A large batch of changes (about 2 MB); once 256 KB of it went on the
  // channel, A's connection is closed from the page, with the rest in
  // flight or still to send.
  // Each side records any moment without the link: gossip may want the
  // peer again and link anew at once, so "not direct" can be brief.
  const idA = await a.evaluate(() => window.repo.peerId);
  for (const [p, other] of [[a, idB], [b, idA]]) {
    await p.evaluate((id) => {
      const watch = setInterval(() => {
        if (window.repo.status.peers[id]?.direct !== true) { window.dropped = true; clearInterval(watch); }
      }, 5);
    }, other);
  }
  const before = await a.evaluate(() => window.repo.status.bytesDirect);
  await a.evaluate(() => {
    const chunk = "x".repeat(4000);
    for (let i = 0; i < 500; i++) window.doc.change((d) => { d.a.push(`${i}:${chunk}`); });
  });
  await until(a, (before) => {
    if (window.repo.status.bytesDirect - before < 256 * 1024) return false;
    window.killedAt = window.repo.status.bytesDirect;
    window.pcs.forEach((pc) => pc.close());
    return true;
  }, before, "256 KB of the batch on the channel");
  assert.ok((await a.evaluate(() => window.pcs.length)) >= 1, "A had a connection to close");
  await until(a, () => window.dropped === true, null, "A to drop the direct link");
  await until(b, () => window.dropped === true, null, "B to drop the direct link");
  await until(b, () => window.doc.value().a.length === 500, null, "B to receive every change through the relay", 60_000);
  const [va, vb] = [await a.evaluate(() => window.doc.value()), await b.evaluate(() => window.doc.value())];
  assert.deepEqual(va, vb, "documents equal after the fallback");
  const killedAt = await a.evaluate(() => window.killedAt);
  const after = await a.evaluate(() => window.repo.status.bytesDirect);
  console.log(`# A: channel closed after ${killedAt - before} B of the batch went direct (${after - killedAt} B more direct after)`);
  await bytes(a, "A");
  await bytes(b, "B");
  for (const p of [a, b]) await p.evaluate(() => window.repo.close());
});

test("eight browsers form a mesh of bounded degree and converge, with the document's bytes sent directly", async () => {
  const relay = await startRelay();
  const peers = [];
  for (let i = 0; i < 8; i++) peers.push(await peer(relay.url));
  const link = await peers[0].evaluate(async () => {
    window.doc = await window.repo.create();
    window.doc.change((d) => { d.items = []; });
    return window.doc.shareLink();
  });
  for (const p of peers.slice(1)) await p.evaluate(async (link) => { window.doc = await window.repo.find(link); }, link);
  const ids = [];
  for (const p of peers) ids.push(await p.evaluate(() => window.repo.peerId));
  // The mesh: every peer linked, at most 5 links each (the gossip active
  // view), and connected (every peer reaches every other over links).
  const links = async () => Promise.all(peers.map((p) => p.evaluate(() =>
    Object.entries(window.repo.status.peers).filter(([, s]) => s.direct).map(([id]) => id))));
  const deadline = Date.now() + 60_000;
  let graph;
  for (;;) {
    graph = await links();
    const reached = new Set([ids[0]]);
    for (let grew = true; grew;) {
      grew = false;
      graph.forEach((l, i) => {
        if (!reached.has(ids[i])) return;
        for (const id of l) if (!reached.has(id)) { reached.add(id); grew = true; }
      });
    }
    if (reached.size === 8 && graph.every((l) => l.length > 0)) break;
    if (Date.now() > deadline) throw new Error(`no connected mesh in 60 s: ${JSON.stringify(graph.map((l) => l.length))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const degrees = graph.map((l) => l.length);
  console.log(`# mesh of 8: links per peer ${degrees.join(" ")}`);
  for (const [i, p] of peers.entries()) {
    const t = await p.evaluate(() => window.times);
    console.log(`# peer ${i}: page load to first direct link ${Math.round(t.direct)} ms`);
  }
  assert.ok(degrees.every((d) => d <= 5), `degree bounded by the active view: ${degrees}`);

  // Every peer edits; the bytes each sends from now on are counted.
  const before = await Promise.all(peers.map((p) => p.evaluate(() => ({ d: window.repo.status.bytesDirect, r: window.repo.status.bytesRelay }))));
  await Promise.all(peers.map((p, i) => p.evaluate((i) => {
    const chunk = "y".repeat(1000);
    for (let k = 0; k < 20; k++) window.doc.change((d) => { d.items.push(`${i}.${k}:${chunk}`); });
  }, i)));
  for (const p of peers) await until(p, () => window.doc.value().items.length === 160, null, "all 160 items", 60_000);
  const values = await Promise.all(peers.map((p) => p.evaluate(() => JSON.stringify(window.doc.value()))));
  assert.ok(values.every((v) => v === values[0]), "all eight hold the same document");
  const after = await Promise.all(peers.map((p) => p.evaluate(() => ({ d: window.repo.status.bytesDirect, r: window.repo.status.bytesRelay }))));
  let direct = 0, viaRelay = 0;
  after.forEach((a, i) => { direct += a.d - before[i].d; viaRelay += a.r - before[i].r; });
  const share = direct / (direct + viaRelay);
  console.log(`# mesh of 8: ${direct} B sent direct, ${viaRelay} B to the relay: ${(100 * share).toFixed(1)} % direct`);
  assert.ok(share >= 0.9, `at least 90 % of the bytes direct, got ${(100 * share).toFixed(1)} %`);
  for (const p of peers) await p.evaluate(() => window.repo.close());
});
