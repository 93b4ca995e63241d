// mycel: the browser API over the WebAssembly engine (mycel_wasm.js, made
// by wasm-bindgen from the mycel-wasm crate). Types: index.d.ts.
import init, { Engine } from "./mycel_wasm.js";

/** Every error mycel throws; `name` tells which kind. */
export class MycelError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}
/** A share or pin link that does not parse (incomplete, mangled). */
export class LinkError extends MycelError {}
/** The link's key differs from the key this browser holds for the document. */
export class KeyMismatchError extends MycelError {}
/** The document is not in this repo. */
export class UnknownDocumentError extends MycelError {}
/** IndexedDB failed; after a failed write the repo accepts no more changes. */
export class StorageError extends MycelError {}
/** A change could not be made (a bad path or a value a document cannot hold). */
export class ChangeError extends MycelError {}
/** The relay address is not a WebSocket URL. */
export class RelayError extends MycelError {}
/** The repo was closed. */
export class ClosedError extends MycelError {}
/** No peer answered in time (`doc.synced()`). */
export class UnavailableError extends MycelError {}

const CLASSES = {
  LinkError, KeyMismatchError, UnknownDocumentError, StorageError,
  ChangeError, RelayError, ClosedError, UnavailableError, MycelError,
};

/**
 * `relay` as a list: one WebSocket URL, several (the relays of one
 * deployment, sharing rooms through their backplane: the repo stays on the
 * one it reached and fails over to the next), or none (offline only).
 */
function relayList(relay) {
  if (relay === undefined || relay === null) return [];
  if (typeof relay === "string") return [relay];
  if (Array.isArray(relay) && relay.every((r) => typeof r === "string")) return [...relay];
  throw new RelayError("the relay option must be a WebSocket URL or a list of them");
}

function toMycelError(e) {
  if (e instanceof MycelError) return e;
  const Class = e && typeof e.name === "string" ? CLASSES[e.name] : undefined;
  if (Class) return new Class(e.message);
  if (e instanceof Error) return new MycelError(e.message, { cause: e });
  return new MycelError(String(e));
}

function call(f) {
  try {
    return f();
  } catch (e) {
    throw toMycelError(e);
  }
}

async function callAsync(f) {
  try {
    return await f();
  } catch (e) {
    throw toMycelError(e);
  }
}

let loading = null;
/** Loads the WebAssembly module once (Repo.open calls it). */
export function load(wasm) {
  loading ??= init(wasm === undefined ? undefined : { module_or_path: wasm });
  return loading;
}

// Each open repo takes an author slot with the Web Locks API, so two tabs
// of one origin never sign changes with the same identity and seq.
async function takeSlot(name) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return { slot: 0, release() {} };
  for (let slot = 0; slot < 4096; slot++) {
    let release;
    const held = new Promise((r) => (release = r));
    const got = await new Promise((resolve) => {
      locks
        .request(`mycel:${name}:author:${slot}`, { ifAvailable: true }, (lock) => {
          resolve(lock !== null);
          return lock === null ? undefined : held;
        })
        .catch(() => resolve(false));
    });
    if (got) return { slot, release };
  }
  throw new MycelError("no free author slot: too many tabs hold this repo open");
}

function defaultBase() {
  const loc = globalThis.location;
  return loc ? `${loc.origin}${loc.pathname}` : "";
}

const TEXT = "__mycelText";
const PATH = Symbol("mycel.path");
const OPS = Symbol("mycel.ops");

/** A collaborative text value: `d.body = text("hello")`; edit it with `splice`. */
export function text(value) {
  return { [TEXT]: String(value) };
}

// Text positions count Unicode code points (as in the engine); JS strings
// count UTF-16 units. Text without surrogate pairs needs no conversion.
const SURROGATE = /[\uD800-\uDFFF]/;
function cpOffset(s, from, count) {
  let i = from;
  for (let n = 0; n < count && i < s.length; n++) {
    const c = s.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < s.length ? 2 : 1;
  }
  return i;
}
/**
 * `s` with `deleteCount` code points at code point `index` replaced by
 * `insert`; `plain`: `s` has no surrogate pairs (scanned when not known).
 */
function spliceText(s, index, deleteCount, insert, plain = !SURROGATE.test(s)) {
  if (plain) return s.slice(0, index) + insert + s.slice(index + deleteCount);
  const start = cpOffset(s, 0, index);
  return s.slice(0, start) + insert + s.slice(cpOffset(s, start, deleteCount));
}

/**
 * Edits a text object inside `doc.change`: `splice(d, "body", 0, 0, "Hi ")`
 * inserts at the start of `d.body`.
 */
export function splice(object, key, index, deleteCount, insert = "") {
  const path = object?.[PATH];
  const ops = object?.[OPS];
  if (!path || !ops) throw new ChangeError("splice() takes an object of the draft inside doc.change()");
  ops.push(["text", [...path, key], index, deleteCount, String(insert)]);
  const target = object[TARGET];
  const old = target[key];
  const ins = String(insert);
  if (old !== null && typeof old === "object" && typeof old[TEXT] === "string") {
    // Text made earlier in the same change.
    target[key] = { [TEXT]: spliceText(old[TEXT], index, deleteCount, ins) };
    return;
  }
  // An editor splices one text many times in a change: scan it for
  // surrogate pairs once, then only what each splice inserts.
  let known = plainTexts.get(target);
  const text = String(old ?? "");
  const plain = known?.has(key) || !SURROGATE.test(text);
  target[key] = spliceText(text, index, deleteCount, ins, plain);
  if (plain && !SURROGATE.test(ins)) {
    if (!known) plainTexts.set(target, (known = new Set()));
    known.add(key);
  } else {
    known?.delete(key);
  }
}
// Per draft container: the keys whose text is known to hold no surrogate
// pairs (forgotten when the container is otherwise edited).
const plainTexts = new WeakMap();
const TARGET = Symbol("mycel.target");

// A plain copy of a value (drafts included) for storing.
function plain(v) {
  if (v === null || typeof v !== "object") return v;
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (v instanceof Date) return new Date(v.getTime());
  if (typeof v[TEXT] === "string") return { [TEXT]: v[TEXT] };
  if (Array.isArray(v)) return Array.from(v, plain);
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
}

function isContainer(v) {
  return v !== null && typeof v === "object" && !(v instanceof Uint8Array) && !(v instanceof Date);
}

// A mutable deep copy of a (frozen) value; strings are shared, not copied.
function thaw(v) {
  if (v === null || typeof v !== "object") return v;
  if (v instanceof Uint8Array) return new Uint8Array(v);
  if (v instanceof Date) return new Date(v.getTime());
  if (Array.isArray(v)) return Array.from(v, thaw);
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, thaw(x)]));
}

// One level of a container, copied.
function shallow(v) {
  return Array.isArray(v) ? v.slice() : { ...v };
}

/**
 * The frozen value `root` with the patches of one change event applied
 * (see Patch in index.d.ts: objects arrive empty and later patches fill
 * them). Only the containers on the patched paths are copied, once per
 * event; everything else is shared with `root`. Throws on a patch that
 * does not fit the value (the caller then reloads it from the engine).
 */
function applyPatches(root, patches) {
  const fresh = new Set();
  const unsorted = new Set();
  const writable = (v) => {
    if (!isContainer(v)) throw new Error("a patch path runs through a non-object");
    if (fresh.has(v)) return v;
    const c = shallow(v);
    fresh.add(c);
    return c;
  };
  // Values from patches are copied: subscribers get the patches too.
  const adopt = (v) => {
    if (!isContainer(v)) return thaw(v);
    const c = Array.isArray(v) ? [] : {};
    fresh.add(c);
    return c;
  };
  root = writable(root);
  for (const { action, path, value, values, length } of patches) {
    if (action === "conflict" || action === "mark" || path.length === 0) continue;
    const at = path[path.length - 1];
    // `target`: what holds `at`, made writable on the way (a text is a
    // string, replaced in `holder[key]`).
    let target = root;
    let holder = null;
    let key = null;
    for (let i = 0; i < path.length - 1; i++) {
      holder = target;
      key = path[i];
      const next = target[key];
      if (typeof next === "string" && i === path.length - 2) {
        target = next;
      } else {
        target = writable(next);
        holder[key] = target;
      }
    }
    if (typeof target === "string") {
      if (action === "splice") holder[key] = spliceText(target, at, 0, String(value));
      else if (action === "del") holder[key] = spliceText(target, at, length ?? 1, "");
      else if (action === "put") holder[key] = spliceText(target, at, 1, String(value));
    } else if (Array.isArray(target)) {
      if (action === "insert") {
        const items = values.map(adopt);
        if (items.length < 1000) target.splice(at, 0, ...items);
        else {
          // Without spreading a long list into arguments.
          const rest = target.splice(at);
          for (const x of items) target.push(x);
          for (const x of rest) target.push(x);
        }
      } else if (action === "del") target.splice(at, length ?? 1);
      else if (action === "put") target[at] = adopt(value);
      else if (action === "inc") target[at] += value;
    } else if (action === "put") {
      // A new key goes where the engine lists it (keys in order).
      if (!Object.hasOwn(target, at)) unsorted.add(target);
      target[at] = adopt(value);
    } else if (action === "del") delete target[at];
    else if (action === "inc") target[at] += value;
  }
  for (const o of unsorted) sortKeys(o);
  for (const c of fresh) Object.freeze(c);
  return root;
}

// Orders an object's keys as the engine does (by code point).
function sortKeys(o) {
  const entries = Object.entries(o).sort(([a], [b]) => compareCodePoints(a, b));
  for (const [k] of entries) delete o[k];
  for (const [k, v] of entries) o[k] = v;
}
function compareCodePoints(a, b) {
  for (let i = 0, j = 0; i < a.length && j < b.length; ) {
    const x = a.codePointAt(i);
    const y = b.codePointAt(j);
    if (x !== y) return x - y;
    i += x > 0xffff ? 2 : 1;
    j += y > 0xffff ? 2 : 1;
  }
  return a.length === b.length ? 0 : [...a].length - [...b].length;
}

// The draft: a proxy over the document's value that records every edit as
// an operation for the engine and applies it to a private copy, so that
// later reads inside the same change see it. Each container is copied (one
// level) when the draft first reaches it, so a change costs what it
// touches, not the size of the document.
function draftOf(value, ops) {
  const owned = new WeakSet();
  const own = (v) => {
    const c = shallow(v);
    owned.add(c);
    return c;
  };
  const root = own(value);
  return { root, draft: draft(root, [], ops, (t, key) => {
    const v = t[key];
    if (!isContainer(v) || owned.has(v)) return v;
    const c = own(v);
    t[key] = c;
    return c;
  }) };
}

function draft(target, path, ops, reach) {
  const child = (key) => {
    const v = reach(target, key);
    return isContainer(v) ? draft(v, [...path, Array.isArray(target) ? Number(key) : key], ops, reach) : v;
  };
  const listMethods = Array.isArray(target) && {
    push: (...items) => {
      ops.push(["splice", path, target.length, 0, items.map(plain)]);
      return target.push(...items.map(plain));
    },
    unshift: (...items) => {
      ops.push(["splice", path, 0, 0, items.map(plain)]);
      return target.unshift(...items.map(plain));
    },
    pop: () => {
      if (target.length === 0) return undefined;
      ops.push(["splice", path, target.length - 1, 1, []]);
      return target.pop();
    },
    shift: () => {
      if (target.length === 0) return undefined;
      ops.push(["splice", path, 0, 1, []]);
      return target.shift();
    },
    splice: (start, deleteCount, ...items) => {
      const len = target.length;
      let s = start === undefined ? 0 : Math.trunc(start);
      s = s < 0 ? Math.max(len + s, 0) : Math.min(s, len);
      const d = deleteCount === undefined ? len - s : Math.min(Math.max(Math.trunc(deleteCount), 0), len - s);
      ops.push(["splice", path, s, d, items.map(plain)]);
      return target.splice(s, d, ...items.map(plain));
    },
    insertAt: (index, ...items) => {
      ops.push(["splice", path, index, 0, items.map(plain)]);
      target.splice(index, 0, ...items.map(plain));
    },
    deleteAt: (index, count = 1) => {
      ops.push(["splice", path, index, count, []]);
      target.splice(index, count);
    },
  };
  return new Proxy(target, {
    get(t, key, receiver) {
      if (key === PATH) return path;
      if (key === OPS) return ops;
      if (key === TARGET) return t;
      if (typeof key === "symbol") return Reflect.get(t, key, receiver);
      if (listMethods && Object.hasOwn(listMethods, key)) {
        plainTexts.delete(t);
        return listMethods[key];
      }
      if (Array.isArray(t) && key !== "length" && !/^\d+$/.test(key)) return Reflect.get(t, key, receiver);
      return child(key);
    },
    set(t, key, value) {
      if (typeof key === "symbol") throw new ChangeError("symbol keys cannot be stored");
      plainTexts.delete(t);
      if (Array.isArray(t)) {
        if (key === "length") {
          const n = Number(value);
          if (n < t.length) ops.push(["splice", path, n, t.length - n, []]);
          t.length = Math.min(n, t.length);
          return true;
        }
        if (!/^\d+$/.test(key)) throw new ChangeError(`a list has no property ${JSON.stringify(key)} to set`);
        ops.push(["put", [...path, Number(key)], plain(value)]);
      } else {
        ops.push(["put", [...path, key], plain(value)]);
      }
      t[key] = plain(value);
      return true;
    },
    deleteProperty(t, key) {
      if (typeof key === "symbol") return true;
      plainTexts.delete(t);
      if (Array.isArray(t)) {
        ops.push(["splice", path, Number(key), 1, []]);
        t.splice(Number(key), 1);
      } else {
        ops.push(["del", [...path, key]]);
        delete t[key];
      }
      return true;
    },
  });
}

async function waitSynced(id, status, { timeout = 10_000, peers = 1 } = {}) {
  const until = Date.now() + timeout;
  for (;;) {
    const s = status();
    const d = s.docs[id] ?? { peers: 0, synced: true };
    if (d.peers >= peers && d.synced) return;
    if (Date.now() >= until) {
      throw new UnavailableError(
        s.online
          ? `no peer holding document ${id} answered within ${timeout} ms: the link's key may be wrong, or nobody who has the document is online`
          : `the relay could not be reached within ${timeout} ms, so document ${id} could not sync`,
      );
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

const DOC_EVENTS = new Set(["saved-locally", "sent", "stored-remotely", "peer", "change", "presence"]);

// Presence states travel as text (JSON); an empty or unreadable one is "gone" (null).
function presenceState(text) {
  if (typeof text !== "string" || text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
function presenceText(state) {
  return state === null || state === undefined ? "" : JSON.stringify(state);
}

class Listeners {
  #map = new Map();
  on(kind, cb) {
    if (typeof cb !== "function") throw new TypeError("a listener must be a function");
    if (!this.#map.has(kind)) this.#map.set(kind, new Set());
    this.#map.get(kind).add(cb);
    return () => this.#map.get(kind)?.delete(cb);
  }
  fire(kind, payload) {
    for (const cb of [...(this.#map.get(kind) ?? [])]) {
      try {
        cb(payload);
      } catch (e) {
        // One failing listener must not stop the others or the engine.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/** One document of a repo. Get it from `repo.create()` or `repo.find(link)`. */
export class DocHandle {
  #repo;
  #id;
  #listeners = new Listeners();
  // The document's value, frozen, read from the engine once and then kept
  // up to date from the patches of its change events (null: read it again).
  #cache = null;

  constructor(repo, id) {
    this.#repo = repo;
    this.#id = id;
  }

  /** The document id (base64url). */
  get id() {
    return this.#id;
  }

  #current() {
    const engine = this.#repo._engine();
    this.#cache ??= deepFreeze(call(() => engine.value(this.#id)));
    return this.#cache;
  }

  /** The document as a plain object (a fresh copy on every call). */
  value() {
    return thaw(this.#current());
  }

  /**
   * Changes the document: `fn` gets a draft to edit like a plain object
   * (`d.title = "x"`, `delete d.old`, `d.items.push(1)`). Every edit of one
   * call becomes one change, sealed, saved, then sent. Returns the new
   * value (frozen: read-only).
   */
  change(fn) {
    if (typeof fn !== "function") throw new ChangeError("change() takes a function that edits a draft");
    const engine = this.#repo._engine();
    const ops = [];
    fn(draftOf(this.#current(), ops).draft);
    // The engine's change event updates the cached value before this returns.
    if (ops.length > 0) call(() => engine.change(this.#id, ops));
    return this.#current();
  }

  // The patches of a change event, as the engine emits it (before any
  // listener runs, so the next change() or value() sees the new state).
  _patched({ patches, reset }) {
    if (this.#cache === null) return;
    if (reset) {
      this.#cache = null;
      return;
    }
    try {
      this.#cache = applyPatches(this.#cache, patches);
    } catch (e) {
      this.#cache = null;
      this.#repo._warn(this.#id, `a change's patches did not fit the document's value, which is read again: ${e.message}`);
    }
  }

  /** Calls `cb({ value, patches, local })` after every change, local or remote. Returns an unsubscribe function. */
  subscribe(cb) {
    return this.#listeners.on("change", (e) => cb({ value: this.value(), patches: e.patches, local: e.local, doc: this }));
  }

  /**
   * Compacts the document's storage in this browser into an encrypted
   * snapshot; resolves to `{ covered, kept }`. Peers still receive every
   * change. Rejects with StorageError if this build has no snapshots.
   */
  async compact() {
    const engine = this.#repo._engine();
    // Builds without the wasm feature `snapshots` (the published package) have no compact().
    if (typeof engine.compact !== "function") {
      throw new StorageError("this build of mycel cannot compact: it was built without the `snapshots` feature of mycel-wasm");
    }
    return callAsync(() => engine.compact(this.#id));
  }

  /**
   * Sets this tab's presence in the document ("who is here"): any JSON
   * value, e.g. `{ name, colour }`, at most 1 KiB as JSON; `null` to leave.
   * Sealed under the document key, signed, sent to the document's peers,
   * never stored. Sent at most once a second (the latest wins), refreshed
   * every 10 s; peers forget it 30 s after they last heard it.
   */
  setPresence(state) {
    call(() => this.#repo._engine().setPresence(this.#id, presenceText(state)));
  }

  /** The peers here (heard from in the last 30 s): `[{ peer, state }]`. */
  presence() {
    return call(() => this.#repo._engine().presence(this.#id))
      .map(({ peer, state }) => ({ peer, state: presenceState(state) }))
      .filter((p) => p.state !== null);
  }

  // Operations recorded elsewhere (a page whose engine runs in a worker).
  _applyOps(ops) {
    call(() => this.#repo._engine().change(this.#id, ops));
  }

  /** Listens to durability and peer events of this document; returns an unsubscribe function. */
  on(event, cb) {
    if (!DOC_EVENTS.has(event)) throw new TypeError(`unknown document event ${JSON.stringify(event)}`);
    return this.#listeners.on(event, cb);
  }

  /** The link that opens this document elsewhere: the key is in the `#` fragment. */
  shareLink(base = this.#repo.base) {
    return call(() => this.#repo._engine().shareLink(this.#id, base));
  }

  /** The link for blind pinning: a node can store and serve it, never read it. */
  pinLink(base = this.#repo.base) {
    return call(() => this.#repo._engine().pinLink(this.#id, base));
  }

  /** Sync state with the peers met for this document. */
  get status() {
    return this.#repo.status.docs[this.#id] ?? { peers: 0, synced: true, pinningPeers: 0 };
  }

  /**
   * Resolves once at least `peers` peers were met and each side holds what
   * the other holds; rejects with UnavailableError after `timeout` ms.
   */
  async synced(options) {
    return waitSynced(this.#id, () => this.#repo.status, options);
  }

  _fire(kind, payload) {
    this.#listeners.fire(kind, payload);
  }
}

/** A set of documents stored in this browser (IndexedDB) and synced through a relay. */
export class Repo {
  #engine = null;
  #slot = null;
  #handles = new Map();
  #listeners = new Listeners();
  #queue = [];
  #scheduled = false;
  /** The address share links start with. */
  base;

  constructor(token) {
    if (token !== OPEN) throw new TypeError("use Repo.open(options)");
  }

  /**
   * Opens (or creates) the repo. `relay`: the relay's WebSocket URL, or a
   * list of relays of one deployment to fail over between (omit to work
   * offline only); `name`: the IndexedDB database
   * (default "mycel"); `base`: what share links start with (default: this
   * page's address); `wasm`: where the .wasm file is, if not beside this
   * module; `direct`: link directly with peers over WebRTC (default true),
   * with `iceServers` (default none: host candidates).
   */
  static async open({ relay, name = "mycel", base = defaultBase(), wasm, worker = false, direct = true, iceServers = [] } = {}) {
    const relays = relayList(relay);
    // A Worker has no RTCPeerConnection: its repo uses the relay alone.
    const rtc = direct && typeof RTCPeerConnection === "function" ? { iceServers } : null;
    if (worker) return WorkerRepo.open({ relay: relays, name, base, wasm });
    await callAsync(() => load(wasm));
    const repo = new Repo(OPEN);
    repo.base = base;
    repo.#slot = await takeSlot(name);
    try {
      repo.#engine = await callAsync(() =>
        Engine.open(name, repo.#slot.slot, relays, (kind, payload) => repo.#enqueue(kind, payload), rtc, rtc && rtcGlue((link, kind, v) => repo.#rtcEvent(link, kind, v))),
      );
    } catch (e) {
      repo.#slot.release();
      throw e;
    }
    return repo;
  }

  _engine() {
    if (!this.#engine) throw new ClosedError("the repo is closed");
    return this.#engine;
  }

  // A direct link's event, to the engine while the repo is open (a closed
  // repo's connections are closed; a late event is dropped here).
  #rtcEvent(link, kind, value) {
    try {
      this.#engine?.rtcEvent(link, kind, value);
    } catch (e) {
      this._warn(undefined, `a direct link's event failed: ${e.message}`);
    }
  }

  // Events from the engine are dispatched in a microtask: listeners may
  // call the repo again, which they could not while the engine runs.
  #enqueue(kind, payload) {
    if (kind === "change") this.#handles.get(payload.doc)?._patched(payload);
    this.#queue.push([kind, payload]);
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.#dispatch());
    }
  }

  #dispatch() {
    this.#scheduled = false;
    const events = this.#queue;
    this.#queue = [];
    for (let [kind, payload] of events) {
      if (kind === "presence") payload = { ...payload, state: presenceState(payload.state) };
      if (payload && typeof payload.doc === "string") {
        this.#handles.get(payload.doc)?._fire(kind, payload);
      }
      this.#listeners.fire(kind, payload);
    }
  }

  _handle(id) {
    return this.#handle(id);
  }

  _warn(doc, message) {
    this.#enqueue("warning", { doc, message });
  }

  #handle(id) {
    let h = this.#handles.get(id);
    if (!h) {
      h = new DocHandle(this, id);
      this.#handles.set(id, h);
    }
    return h;
  }

  /** This tab's author id. */
  get peerId() {
    return call(() => this._engine().peerId());
  }

  /**
   * `{ online, relay, peerId, docs: { [id]: { peers, synced, pinningPeers } },
   * peers: { [peerId]: { direct } }, bytesDirect, bytesRelay }`
   */
  get status() {
    return call(() => this._engine().status());
  }

  /** Creates a document (registered on disk before this resolves). */
  async create() {
    const id = await callAsync(() => this._engine().create());
    return this.#handle(id);
  }

  /** Opens the document of a share link. */
  async find(link) {
    const id = await callAsync(() => this._engine().find(String(link)));
    return this.#handle(id);
  }

  /** Every document of the repo. */
  documents() {
    return call(() => this._engine().docs()).map((id) => this.#handle(id));
  }

  /** Listens to repo events: "status", "warning", "error", and every document event. */
  on(event, cb) {
    return this.#listeners.on(event, cb);
  }

  /** Resolves when every write begun so far is on disk. */
  async flush() {
    await callAsync(() => this._engine().flushed());
  }

  /** Compacts every document's storage in turn (see `DocHandle.compact`). */
  async compact() {
    for (const doc of this.documents()) await doc.compact();
  }

  /** Waits for pending writes, then closes the relay link and the database. */
  async close() {
    if (!this.#engine) return;
    await this.flush().catch(() => {});
    const engine = this.#engine;
    this.#engine = null;
    call(() => engine.close());
    engine.free();
    this.#slot?.release();
  }
}
const OPEN = Symbol("mycel.open");

// ---- direct links (WebRTC) --------------------------------------------------
//
// The engine makes and drives each RTCPeerConnection and its data channel
// (mycel-wasm's rtc module, through web-sys); listening to them is done
// here, which keeps the .wasm within its size budget. `glue(link, what, x)`
// is called by the engine: what 0 = a connection to listen to, 1 = its data
// channel, 2 = a negotiation promise whose rejection fails the connection.
// Each event goes back as `event(link, kind, value)`, kinds as in rtc.rs.
const RTC_CONNECT_MS = 20_000; // not open by then: failed (protocol.md §5.3)
const [CANDIDATE, SIGNALING, CHANNEL, OPENED, MESSAGE, CLOSED, FAILED] = [0, 1, 2, 3, 4, 5, 6];
function rtcGlue(event) {
  const channel = (link, dc) => {
    dc.binaryType = "arraybuffer";
    dc.onopen = () => event(link, OPENED);
    // A text message becomes an empty one, which the engine refuses.
    dc.onmessage = (e) => event(link, MESSAGE, new Uint8Array(typeof e.data === "string" ? 0 : e.data));
    dc.onclose = dc.onerror = () => event(link, CLOSED);
  };
  return (link, what, x) => {
    if (what === 2) {
      x.catch(() => event(link, FAILED));
    } else if (what === 1) {
      channel(link, x);
    } else {
      const pc = x;
      // Ignored by the engine once the channel is open.
      setTimeout(() => event(link, FAILED), RTC_CONNECT_MS);
      // toJSON() forms (JSON.stringify calls it): protocol.md §5.3.
      pc.onicecandidate = (e) => e.candidate && event(link, CANDIDATE, JSON.stringify(e.candidate));
      pc.onsignalingstatechange = () =>
        event(link, SIGNALING, pc.localDescription ? JSON.stringify(pc.localDescription) : null);
      pc.ondatachannel = (e) => {
        if (e.channel.label !== "mycel") return;
        channel(link, e.channel);
        event(link, CHANNEL, e.channel);
        // Announced already open: no open event will follow.
        if (e.channel.readyState === "open") event(link, OPENED);
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed" || pc.connectionState === "closed") event(link, CLOSED);
      };
    }
  };
}

// ---- the engine in a dedicated Worker --------------------------------------
//
// `Repo.open({ worker: true })` runs the engine (wasm, IndexedDB, sockets) in
// a module Worker (worker.js), so a large document never blocks the page.
// The page keeps a copy of each document's value: `value()` reads it,
// `change(fn)` records operations on it and posts them to the worker (a
// change the engine refuses is reported by the repo's "error" event, and
// the copy is refreshed), and every change event brings its patches.
//
// The page's value is the worker's document (`#confirmed`, kept from the
// patches of every change event with the same applyPatches as the direct
// mode) with the page's own changes the worker has not reported yet
// (`#pending`, their recorded operations) replayed on top: a remote change
// arriving meanwhile never undoes an optimistic local edit, and a local
// change's own event replaces its replayed operations.

// Values from the worker are frozen and shared: copying a large document
// for every read would itself block the page.
function deepFreeze(v) {
  if (v === null || typeof v !== "object" || ArrayBuffer.isView(v) || Object.isFrozen(v)) return v;
  Object.freeze(v);
  for (const k of Object.keys(v)) deepFreeze(v[k]);
  return v;
}

function remoteError(e) {
  const Class = CLASSES[e?.name] ?? MycelError;
  return new Class(e?.message ?? String(e));
}

// The recorded operations of a change (see value.rs), replayed on a frozen
// value: the containers on their paths are copied, the rest is shared. An
// operation that no longer fits (a remote change removed its target) is
// skipped: the worker's answer to it arrives with the change's own event.
function replay(root, ops) {
  const fresh = new Set();
  const own = (v) => {
    if (!isContainer(v)) throw new Error("not an object");
    if (fresh.has(v)) return v;
    const c = shallow(v);
    fresh.add(c);
    return c;
  };
  root = own(root);
  for (const [kind, path, a, b, c] of ops) {
    try {
      const last = kind === "splice" ? path.length : path.length - 1;
      let t = root;
      for (let i = 0; i < last; i++) t = t[path[i]] = own(t[path[i]]);
      const key = path[last];
      const old = t[key];
      if (kind === "put") t[key] = thaw(a);
      else if (kind === "del") Array.isArray(t) ? t.splice(key, 1) : delete t[key];
      else if (kind === "splice") t.splice(a, b, ...c.map(thaw));
      else if (kind === "text") t[key] = spliceText(typeof old?.[TEXT] === "string" ? old[TEXT] : String(old ?? ""), a, b, c);
    } catch {
      // skipped: see above
    }
  }
  return deepFreeze(root);
}

class WorkerDocHandle {
  #repo;
  #id;
  #links;
  #value;
  #confirmed;
  #pending = [];
  #stale = false;
  #presence = new Map();
  #listeners = new Listeners();

  constructor(repo, info) {
    this.#repo = repo;
    this.#id = info.id;
    this.#links = { share: info.shareLink, pin: info.pinLink };
    this.#value = this.#confirmed = deepFreeze(info.value);
  }
  get id() {
    return this.#id;
  }
  /** The document, frozen (read-only) and shared between calls in a worker repo. */
  value() {
    return this.#value;
  }
  change(fn) {
    if (typeof fn !== "function") throw new ChangeError("change() takes a function that edits a draft");
    const ops = [];
    const { root, draft } = draftOf(this.#value, ops);
    fn(draft);
    if (ops.length > 0) {
      this.#value = deepFreeze(root);
      this.#pending.push(ops);
      // A change that made an event was settled by it (the worker posts the
      // event before its answer); one that made none (refused, or no
      // effect) is dropped from the replayed ones here.
      const settle = () => {
        const i = this.#pending.indexOf(ops);
        if (i >= 0) {
          this.#pending.splice(i, 1);
          this.#rebase();
        }
      };
      this.#repo._request("change", [this.#id, ops]).then(settle, (e) => {
        this.#repo._fire("error", { doc: this.#id, name: e.name, message: e.message });
        settle();
      });
    }
    return this.#value;
  }
  #rebase() {
    let v = this.#confirmed;
    for (const ops of this.#pending) v = replay(v, ops);
    this.#value = v;
  }
  // A change event: its patches update the worker's document here.
  #patched(payload, value) {
    if (payload.local) this.#pending.shift();
    if (value !== undefined) {
      this.#confirmed = deepFreeze(value);
      this.#stale = false;
    } else if (!this.#stale) {
      try {
        this.#confirmed = applyPatches(this.#confirmed, payload.patches);
      } catch (e) {
        // Read it again; events until the answer are in the value read.
        this.#stale = true;
        this.#repo._request("value", [this.#id]).then((v) => this.#patched({}, v), () => {});
        this.#repo._fire("warning", { doc: this.#id, message: `a change's patches did not fit the document's value, which is read again: ${e.message}` });
      }
    }
    this.#rebase();
  }
  async compact() {
    return this.#repo._request("compact", [this.#id]);
  }
  subscribe(cb) {
    return this.#listeners.on("change", (e) => cb({ value: this.value(), patches: e.patches, local: e.local, doc: this }));
  }
  setPresence(state) {
    const text = presenceText(state);
    this.#repo._request("setPresence", [this.#id, text]).catch((e) => {
      this.#repo._fire("error", { doc: this.#id, name: e.name, message: e.message });
    });
  }
  presence() {
    return [...this.#presence].map(([peer, state]) => ({ peer, state }));
  }
  on(event, cb) {
    if (!DOC_EVENTS.has(event)) throw new TypeError(`unknown document event ${JSON.stringify(event)}`);
    return this.#listeners.on(event, cb);
  }
  shareLink(base) {
    const l = this.#links.share;
    return base === undefined ? l : base + l.slice(l.indexOf("#"));
  }
  pinLink(base) {
    const l = this.#links.pin;
    return base === undefined ? l : base + l.slice(l.indexOf("#"));
  }
  get status() {
    return this.#repo.status.docs[this.#id] ?? { peers: 0, synced: true, pinningPeers: 0 };
  }
  async synced(options) {
    return waitSynced(this.#id, () => this.#repo.status, options);
  }
  _fire(kind, payload, value) {
    if (kind === "change") this.#patched(payload, value);
    if (kind === "presence") {
      if (payload.state === null) this.#presence.delete(payload.peer);
      else this.#presence.set(payload.peer, payload.state);
    }
    this.#listeners.fire(kind, payload);
  }
}

class WorkerRepo {
  #worker;
  #pending = new Map();
  #next = 1;
  #handles = new Map();
  #listeners = new Listeners();
  #status;
  #peerId;
  base;

  constructor(token, worker, base) {
    if (token !== OPEN) throw new TypeError("use Repo.open({ worker: true })");
    this.#worker = worker;
    this.base = base;
    worker.onmessage = ({ data }) => this.#receive(data);
    worker.onerror = (e) => {
      const error = new MycelError(`the mycel worker failed: ${e.message ?? e}`);
      for (const { reject } of this.#pending.values()) reject(error);
      this.#pending.clear();
    };
  }

  static async open({ relay, name, base, wasm }) {
    const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: `mycel:${name}` });
    const repo = new WorkerRepo(OPEN, worker, base);
    try {
      const info = await repo._request("open", [{ relay, name, base, wasm: wasm === undefined ? undefined : String(wasm) }]);
      repo.#peerId = info.peerId;
      for (const d of info.docs) repo.#handle(d);
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return repo;
  }

  _request(method, args = []) {
    if (!this.#worker) return Promise.reject(new ClosedError("the repo is closed"));
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ id, method, args });
    });
  }

  #receive(m) {
    if (m.status) this.#status = m.status;
    if (m.id !== undefined) {
      const p = this.#pending.get(m.id);
      this.#pending.delete(m.id);
      if (m.error) p?.reject(remoteError(m.error));
      else p?.resolve(m.result);
      return;
    }
    if (m.type === "event") {
      if (m.payload && typeof m.payload.doc === "string") this.#handles.get(m.payload.doc)?._fire(m.kind, m.payload, m.value);
      this.#listeners.fire(m.kind, m.payload);
    }
  }

  _fire(kind, payload) {
    this.#listeners.fire(kind, payload);
  }

  #handle(info) {
    let h = this.#handles.get(info.id);
    if (!h) {
      h = new WorkerDocHandle(this, info);
      this.#handles.set(info.id, h);
    }
    return h;
  }

  get peerId() {
    return this.#peerId;
  }
  get status() {
    return this.#status;
  }
  async create() {
    return this.#handle(await this._request("create"));
  }
  async find(link) {
    return this.#handle(await this._request("find", [String(link)]));
  }
  documents() {
    return [...this.#handles.values()];
  }
  on(event, cb) {
    return this.#listeners.on(event, cb);
  }
  async flush() {
    await this._request("flush");
  }
  async compact() {
    for (const doc of this.documents()) await doc.compact();
  }
  async close() {
    if (!this.#worker) return;
    await this._request("close").catch(() => {});
    this.#worker.terminate();
    this.#worker = null;
  }
}
