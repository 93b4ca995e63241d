// mycel notes: a collaborative notes-and-checklist app on the npm package
// `mycel` (served beside it in pkg/). Plain ES module, no framework.
import { Repo, text, splice, LinkError, KeyMismatchError } from "./pkg/index.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: document.querySelector('[data-testid="sync-status"]'),
  error: $("error") ?? document.querySelector('[data-testid="error"]'),
  home: $("home"), editor: $("editor"), newDoc: $("new-doc"), docList: $("doc-list"), noDocs: $("no-docs"),
  share: $("share-link"), copy: $("copy-link"), durability: $("durability") ?? document.querySelector('[data-testid="durability"]'),
  title: $("title"), body: $("body"), addForm: $("add-form"), itemInput: $("item-input"), items: $("items"),
  myName: $("my-name"), peers: $("peers"), onlyYou: $("only-you"),
  fields: $("doc-fields"), loading: $("loading"), update: document.querySelector('[data-testid="update"]'), reload: $("reload"),
};
// The build this page runs (stamped by `cargo xtask dist`, also in sw.js's cache name).
const BUILD = document.querySelector('meta[name="mycel-build"]')?.content ?? "dev";
$("build").textContent = BUILD;

const relayUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const base = location.origin + location.pathname;
let repo = null;
let current = null; // { doc, unsubscribe: [] }
let lastOnline = Date.now();
let openSeq = 0;

// ---- the service worker: offline app shell, updates ---------------------
//
// A new build installs in the background (its own cache) and takes over at
// once; this page keeps running the code it loaded (all of it is loaded at
// start), so open documents are not disturbed. The next visit runs the new
// build; a notice says so.
function checkForUpdate() {
  navigator.serviceWorker?.getRegistration().then((r) => r?.update()).catch(() => {});
}
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("sw.js").catch((e) => console.warn(`service worker not registered: ${e.message}`));
  let controlled = !!navigator.serviceWorker.controller;
  navigator.serviceWorker.addEventListener("controllerchange", () => {
    // The first install takes control too: that is no update.
    if (controlled) ui.update.hidden = false;
    controlled = true;
  });
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") checkForUpdate(); });
  setInterval(checkForUpdate, 30 * 60 * 1000);
}
ui.reload.addEventListener("click", () => location.reload());

function showError(message) {
  closeCurrent();
  ui.editor.hidden = true;
  ui.home.hidden = true;
  ui.items.replaceChildren();
  ui.title.value = "";
  ui.body.value = "";
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function closeCurrent() {
  if (!current) return;
  leave();
  for (const off of current.unsubscribe) off();
  current = null;
}

// ---- who else is here (presence) -----------------------------------------
//
// Each browser has a name and a colour (kept in localStorage); an open
// document announces them to its peers through the engine: sealed under the
// document's key, signed, never stored, forgotten 30 s after the last word.

const PALETTE = ["#2f6b4f", "#8a4baf", "#b5452b", "#1f6fb2", "#a66a00", "#c0307a", "#3d7d8c", "#5f6b1f"];
const ME_KEY = "mycel-notes:me";
function me() {
  let v = null;
  try { v = JSON.parse(localStorage.getItem(ME_KEY)); } catch { v = null; }
  if (!v || typeof v.name !== "string" || !PALETTE.includes(v.colour)) {
    const [r] = crypto.getRandomValues(new Uint16Array(1));
    v = { name: `Guest ${r.toString(16).padStart(4, "0")}`, colour: PALETTE[r % PALETTE.length] };
    try { localStorage.setItem(ME_KEY, JSON.stringify(v)); } catch { /* private mode: a new name per visit */ }
  }
  return v;
}

function announce() {
  try { current?.doc.setPresence(me()); } catch (e) { console.warn(`presence not sent: ${e.message}`); }
}

function leave() {
  try { current?.doc.setPresence(null); } catch { /* closed */ }
}

function renderPresence() {
  if (!current) return;
  const peers = current.doc.presence().filter((p) => p.state && typeof p.state.name === "string");
  ui.peers.replaceChildren(...peers.map(({ peer, state }) => {
    const li = document.createElement("li");
    li.dataset.testid = "peer";
    li.dataset.peer = peer;
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.setAttribute("aria-hidden", "true");
    dot.style.background = PALETTE.includes(state.colour) ? state.colour : "#999";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = state.name.slice(0, 40) || "(no name)";
    li.append(dot, name);
    return li;
  }));
  ui.onlyYou.hidden = peers.length > 0;
}

ui.myName.addEventListener("input", () => {
  const name = ui.myName.value.trim().slice(0, 40);
  try { localStorage.setItem(ME_KEY, JSON.stringify({ ...me(), name })); } catch { /* not kept */ }
  announce();
});
addEventListener("pagehide", leave);

// ---- sync indicator ----------------------------------------------------

function updateStatus() {
  let state;
  const online = repo?.status.online ?? false;
  if (online) {
    lastOnline = Date.now();
    const st = current && repo.status.docs[current.doc.id];
    state = !st || st.synced || st.peers === 0 ? "synced" : "syncing";
  } else if (!navigator.onLine || Date.now() - lastOnline > 8000) {
    state = "offline";
  } else {
    state = "connecting";
  }
  if (ui.status.dataset.state !== state) {
    ui.status.dataset.state = state;
    ui.status.textContent = state;
  }
}
setInterval(updateStatus, 500);
addEventListener("online", updateStatus);
addEventListener("offline", updateStatus);

// ---- documents on this device -----------------------------------------

function renderHome() {
  closeCurrent();
  clearError();
  ui.editor.hidden = true;
  ui.home.hidden = false;
  const docs = repo.documents();
  ui.docList.replaceChildren(...docs.map((doc) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = doc.shareLink(base);
    const v = doc.value();
    a.textContent = (typeof v.title === "string" && v.title.trim()) || "Untitled";
    const n = Array.isArray(v.items) ? v.items.length : 0;
    li.append(a, document.createTextNode(n ? ` · ${n} item${n === 1 ? "" : "s"}` : ""));
    return li;
  }));
  ui.noDocs.hidden = docs.length > 0;
  updateStatus();
}

// ---- one document ------------------------------------------------------

async function openDoc(link) {
  const seq = ++openSeq;
  closeCurrent();
  let doc;
  try {
    doc = await repo.find(link);
  } catch (e) {
    if (seq !== openSeq) return;
    if (e instanceof KeyMismatchError) showError("This link's key is wrong: it does not open this document. Ask for the link again.");
    else if (e instanceof LinkError) showError(`This link is damaged and opens nothing (${e.message}). Ask for the link again.`);
    else showError(`This document cannot be opened: ${e.message}`);
    return;
  }
  if (seq !== openSeq) return;
  clearError();
  ui.home.hidden = true;
  ui.editor.hidden = false;
  ui.share.value = doc.shareLink(base);
  const durability = { pending: false, saved: 0, sent: 0, stored: 0, copies: 0 };
  current = { doc, durability, unsubscribe: [], loaded: false };
  const on = (kind, cb) => current.unsubscribe.push(doc.on(kind, cb));
  on("saved-locally", (e) => { durability.saved = Math.max(durability.saved, e.upto); durability.pending = false; renderDurability(); });
  on("sent", (e) => { durability.sent = Math.max(durability.sent, e.upto); renderDurability(); });
  on("stored-remotely", (e) => {
    if (e.upto >= durability.stored) { durability.stored = e.upto; durability.copies = e.copies; }
    renderDurability();
  });
  on("presence", renderPresence);
  ui.myName.value = me().name;
  renderPresence();
  announce();
  current.unsubscribe.push(doc.subscribe((e) => {
    if (e.local) return;
    render(e.value);
    if (Object.keys(e.value).length) setLoaded(doc);
  }));
  render(doc.value());
  renderDurability();
  updateStatus();
  if (Object.keys(doc.value()).length) {
    setLoaded(doc);
  } else {
    // Not on this device yet: nothing is editable until it arrives (an edit
    // made on an empty document would start a second checklist beside the
    // real one). Wait for a peer holding it; a wrong key meets nobody.
    setLoading();
    doc.synced({ timeout: 10000 }).then(() => setLoaded(doc), () => {
      if (current?.doc === doc && !Object.keys(doc.value()).length) {
        showError("No one holding this document answered. The link may be wrong or damaged, or nobody who has it is online.");
      }
    });
  }
}

function setLoading() {
  ui.fields.disabled = true;
  ui.loading.hidden = false;
  ui.editor.setAttribute("aria-busy", "true");
}

function setLoaded(doc) {
  if (current?.doc !== doc || current.loaded) return;
  current.loaded = true;
  ui.fields.disabled = false;
  ui.loading.hidden = true;
  ui.editor.removeAttribute("aria-busy");
  // How long this visit took to show a document (read by the end-to-end tests).
  if (!performance.getEntriesByName("mycel:doc-ready").length) performance.mark("mycel:doc-ready");
}

function renderDurability() {
  if (!current) return;
  const d = current.durability;
  let msg = "";
  if (d.pending) msg = "Saving…";
  else if (d.saved === 0) msg = "";
  else if (d.copies > 0 && d.stored >= d.saved) msg = `Last change: stored by ${d.copies} pin${d.copies === 1 ? "" : "s"}`;
  else if (d.sent >= d.saved) msg = "Last change: sent";
  else msg = "Last change: saved on this device";
  ui.durability.textContent = msg;
}

function change(fn) {
  if (!current?.loaded) return;
  current.durability.pending = true;
  try {
    current.doc.change(fn);
  } catch (e) {
    current.durability.pending = false;
    console.warn(`change refused: ${e.message}`);
  }
  renderDurability();
}

function render(v) {
  if (document.activeElement !== ui.title) ui.title.value = typeof v.title === "string" ? v.title : "";
  const body = typeof v.body === "string" ? v.body : "";
  if (ui.body.value !== body) {
    const { selectionStart, selectionEnd } = ui.body;
    const focused = document.activeElement === ui.body;
    ui.body.value = body;
    if (focused) ui.body.setSelectionRange(Math.min(selectionStart, body.length), Math.min(selectionEnd, body.length));
  }
  renderItems(Array.isArray(v.items) ? v.items : []);
}

// ---- the checklist's order ------------------------------------------------
//
// Items stay in one Automerge list (added and removed with list
// operations); their order on screen is by a number each carries, `pos`
// (ties by id; an item without one counts its list index). Moving an item
// puts one new `pos` on it, between its new neighbours: a single map
// write, so a concurrent edit of the same item (its text, its check) or a
// concurrent move of another item both survive the merge. A move done as
// delete + re-insert would drop a concurrent edit of the moved item and
// duplicate it when two people move it at once (Automerge 0.12 has no
// move operation).
const posOf = (it, i) => (typeof it.pos === "number" && Number.isFinite(it.pos) ? it.pos : i);
function ordered(items) {
  return Array.from(items, (it, i) => ({ it, k: posOf(it, i) }))
    .sort((a, b) => a.k - b.k || (String(a.it.id) < String(b.it.id) ? -1 : String(a.it.id) > String(b.it.id) ? 1 : 0))
    .map((x) => x.it);
}
const nextPos = (items) => Array.from(items, posOf).reduce((m, k) => Math.max(m, k + 1), 0);

function move(id, delta) {
  change((d) => {
    if (!Array.isArray(d.items)) return;
    const order = ordered(d.items);
    const keys = order.map((it) => posOf(it, d.items.findIndex((x) => x.id === it.id)));
    const at = order.findIndex((it) => it.id === id);
    const to = at + delta;
    if (at < 0 || to < 0 || to >= order.length) return;
    // The keys of the neighbours the item lands between.
    const lo = delta < 0 ? (to > 0 ? keys[to - 1] : keys[to] - 1) : keys[to];
    const hi = delta < 0 ? keys[to] : (to + 1 < order.length ? keys[to + 1] : keys[to] + 1);
    const mid = (lo + hi) / 2;
    if (lo < mid && mid < hi && order.every((it) => typeof it.pos === "number")) {
      order[at].pos = mid;
    } else {
      // No room between them (equal keys, or halved too often), or items
      // without a key: number them all in the new order.
      const [it] = order.splice(at, 1);
      order.splice(to, 0, it);
      order.forEach((x, i) => { if (x.pos !== i) x.pos = i; });
    }
  });
}

function renderItems(unordered) {
  const items = ordered(unordered);
  const focusedId = document.activeElement?.closest?.("li")?.dataset.id;
  const focusedRole = document.activeElement?.dataset?.role;
  ui.items.replaceChildren(...items.map((item, i) => {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    li.classList.toggle("done", !!item.done);
    const label = typeof item.text === "string" ? item.text : "";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !!item.done;
    box.dataset.role = "check";
    box.setAttribute("aria-label", `Done: ${label}`);
    box.addEventListener("change", () => change((d) => { const it = find(d, item.id); if (it) it.done = box.checked; }));
    const input = document.createElement("input");
    input.className = "text";
    input.value = label;
    input.dataset.role = "text";
    input.setAttribute("aria-label", `Item ${i + 1}`);
    input.addEventListener("change", () => {
      const t = input.value.trim();
      change((d) => { const it = find(d, item.id); if (it) it.text = t; });
    });
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") input.blur(); });
    // The item's text as plain text (the stable test hook); the input beside it is what people read and edit.
    const hidden = document.createElement("span");
    hidden.className = "sr-only";
    hidden.dataset.testid = "item";
    hidden.setAttribute("aria-hidden", "true");
    hidden.textContent = label;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.dataset.role = "remove";
    remove.setAttribute("aria-label", `Remove ${label}`);
    remove.addEventListener("click", () => change((d) => {
      const at = d.items.findIndex((it) => it.id === item.id);
      if (at >= 0) d.items.splice(at, 1);
    }));
    const moveButton = (role, text, where, disabled) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "move";
      b.textContent = text;
      b.dataset.role = role;
      b.disabled = disabled;
      b.setAttribute("aria-label", `Move ${label} ${where}`);
      b.title = `Move ${where}`;
      b.addEventListener("click", () => move(item.id, role === "up" ? -1 : 1));
      return b;
    };
    const up = moveButton("up", "↑", "up", i === 0);
    const down = moveButton("down", "↓", "down", i === items.length - 1);
    li.append(box, input, hidden, up, down, remove);
    return li;
  }));
  if (focusedId && focusedRole) {
    const li = ui.items.querySelector(`li[data-id="${CSS.escape(focusedId)}"]`);
    // Keep the keyboard on the item that moved; at either end, on the move button still usable.
    let target = li?.querySelector(`[data-role="${focusedRole}"]`);
    if (target?.disabled) target = li.querySelector(`[data-role="${focusedRole === "up" ? "down" : "up"}"]`);
    if (target && !target.disabled) target.focus();
  }
}

const find = (d, id) => (Array.isArray(d.items) ? d.items.find((it) => it.id === id) : undefined);
const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");

ui.title.addEventListener("input", () => change((d) => { d.title = ui.title.value; }));
ui.body.addEventListener("input", () => {
  const next = ui.body.value;
  change((d) => {
    if (typeof d.body !== "string") { d.body = text(next); return; }
    const prev = d.body;
    // The smallest splice from the old text to the new one, so concurrent
    // edits elsewhere in the text merge (indices count code points).
    const a = Array.from(prev), b = Array.from(next);
    let start = 0;
    while (start < a.length && start < b.length && a[start] === b[start]) start++;
    let endA = a.length, endB = b.length;
    while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
    splice(d, "body", start, endA - start, b.slice(start, endB).join(""));
  });
});
ui.addForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = ui.itemInput.value.trim();
  if (!t || !current?.loaded) return;
  change((d) => {
    if (!Array.isArray(d.items)) d.items = [];
    d.items.push({ id: newId(), text: t, done: false, pos: nextPos(d.items) });
  });
  ui.itemInput.value = "";
  ui.itemInput.focus();
  render(current.doc.value());
});
// Local changes of items re-render at once (remote ones through subscribe).
ui.items.addEventListener("change", () => queueMicrotask(() => current && renderItems(current.doc.value().items ?? [])));
ui.items.addEventListener("click", (e) => {
  if (["remove", "up", "down"].includes(e.target.dataset.role)) queueMicrotask(() => current && renderItems(current.doc.value().items ?? []));
});
ui.copy.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(ui.share.value);
    ui.copy.textContent = "Copied";
  } catch {
    ui.share.select();
    ui.copy.textContent = "Select and copy";
  }
  setTimeout(() => { ui.copy.textContent = "Copy link"; }, 1500);
});
ui.newDoc.addEventListener("click", async () => {
  ui.newDoc.disabled = true;
  try {
    const doc = await repo.create();
    doc.change((d) => { d.title = ""; d.body = text(""); d.items = []; });
    location.hash = new URL(doc.shareLink(base)).hash;
  } catch (e) {
    showError(`Could not create a document: ${e.message}`);
  } finally {
    ui.newDoc.disabled = false;
  }
});

function route() {
  if (location.hash.length > 1) openDoc(location.href);
  else renderHome();
}

async function main() {
  try {
    // Direct links (WebRTC) show this device's addresses to the people it
    // shares with; `localStorage["mycel.direct"] = "off"` keeps every
    // byte on the relay.
    const direct = localStorage.getItem("mycel.direct") !== "off";
    repo = await Repo.open({ relay: relayUrl, base, direct });
  } catch (e) {
    showError(`This browser cannot run mycel notes: ${e.message}`);
    return;
  }
  repo.on("status", updateStatus);
  // Back online after a disconnection (the relay, so maybe the app, may have been updated): look for a new build.
  let online = null;
  repo.on("status", ({ online: now }) => {
    if (online === false && now) checkForUpdate();
    online = now;
  });
  repo.on("error", (e) => console.warn(`mycel: ${e.name}: ${e.message}`));
  addEventListener("hashchange", route);
  route();
  document.documentElement.dataset.ready = "true";
}
main();
