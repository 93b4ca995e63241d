// Types of the npm package `mycel` (hand-written; the engine's own
// bindings, mycel_wasm.d.ts, are internal).

/** Every error mycel throws; `name` tells which kind. */
export class MycelError extends Error {}
/** A share or pin link that does not parse (incomplete, mangled). */
export class LinkError extends MycelError {}
/** The link's key differs from the key this browser holds for the document. */
export class KeyMismatchError extends MycelError {}
/** The document is not in this repo. */
export class UnknownDocumentError extends MycelError {}
/** IndexedDB failed; after a failed write the repo accepts no more changes. */
export class StorageError extends MycelError {}
/** A change could not be made (a bad path, or a value a document cannot hold). */
export class ChangeError extends MycelError {}
/** The relay address is not a WebSocket URL. */
export class RelayError extends MycelError {}
/** The repo was closed. */
export class ClosedError extends MycelError {}
/** No peer answered in time (`doc.synced()`). */
export class UnavailableError extends MycelError {}

/** What a document holds: JSON-like values, plus bytes and dates. */
export type Value =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | Date
  | Value[]
  | { [key: string]: Value };

/** A collaborative text value to store: `d.body = text("hello")`. Reads back as a string. */
export interface TextValue {
  readonly __mycelText: string;
}
export function text(value: string): TextValue;
/** Inside `doc.change`: edits the text at `object[key]` (indices count Unicode code points). */
export function splice(object: object, key: string, index: number, deleteCount: number, insert?: string): void;

/**
 * One step of a change, as subscribers see it. `path` ends at the key or
 * index changed (text and list indices count from the state after the
 * patches before it). Applying a change's patches in order to the value
 * before it gives the value after it.
 */
export interface Patch {
  action: "put" | "insert" | "del" | "splice" | "inc" | "conflict" | "mark";
  path: (string | number)[];
  /**
   * The new value (`put`, `inc`), or the inserted text (`splice`, at a
   * position counted in code points). A new object, list or text arrives
   * empty (`{}`, `[]`, `""`) and the patches after it fill it.
   */
  value?: Value;
  /** Inserted list items (`insert`; objects empty, as for `value`). */
  values?: Value[];
  /** How many list items were removed (`del` in a list). */
  length?: number;
}

export interface ChangeEvent<T> {
  value: T;
  patches: Patch[];
  /** True for changes made by this tab, false for changes from peers. */
  local: boolean;
  doc: DocHandle<T>;
}

/** Durability of this tab's changes to a document: every change up to `upto` (this author's seq). */
export interface SavedLocally {
  doc: string;
  upto: number;
}
export interface Sent {
  doc: string;
  upto: number;
}
export interface StoredRemotely {
  doc: string;
  upto: number;
  /** How many pinning nodes hold them. */
  copies: number;
}
export interface PeerSeen {
  doc: string;
  peer: string;
  pinning: boolean;
}

/** A peer's presence in a document; `state` is `null` when it left or was not heard for 30 s. */
export interface PresenceEvent {
  doc: string;
  peer: string;
  state: Value | null;
}

/** A peer here now (see `DocHandle.presence()`). */
export interface PeerPresence {
  peer: string;
  state: Value;
}

export interface DocEvents {
  /** The change is in IndexedDB: a write transaction with strict durability completed. */
  "saved-locally": SavedLocally;
  /** The change left the device (to the relay). */
  sent: Sent;
  /** `copies` pinning nodes hold the change. */
  "stored-remotely": StoredRemotely;
  peer: PeerSeen;
  change: { doc: string; patches: Patch[]; local: boolean };
  /** A peer's presence was set, refreshed (every 10 s), or is gone (`state: null`). */
  presence: PresenceEvent;
}

export interface DocStatus {
  /** Peers met in the document's room. */
  peers: number;
  /** Each side holds everything the other holds. */
  synced: boolean;
  pinningPeers: number;
}

export interface PeerStatus {
  /** Linked directly (an open WebRTC data channel); otherwise through the relay. */
  direct: boolean;
  /** Sealed sync bytes sent to this peer on a direct link, over all shared documents. */
  bytesDirect: number;
  /** The same through the relay (room publishes, counted once, are not in it). */
  bytesRelay: number;
}

export interface RepoStatus {
  /** Connected to a relay. */
  online: boolean;
  /** The relay in use (or being tried); null when offline only. */
  relay: string | null;
  peerId: string;
  docs: Record<string, DocStatus>;
  /** Every peer met in any document, by peer id. */
  peers: Record<string, PeerStatus>;
  /** Bytes this repo sent on direct links (WebRTC data channels) since it opened. */
  bytesDirect: number;
  /** Bytes this repo sent to relays since it opened. */
  bytesRelay: number;
}

/** One document of a repo. */
/** What `doc.compact()` did. */
export interface CompactResult {
  /** Envelopes the snapshot now holds (rebuilt byte for byte when loaded). */
  covered: number;
  /** Envelopes stored whole (not coverable, e.g. a change waiting for another). */
  kept: number;
}

export class DocHandle<T = { [key: string]: Value }> {
  private constructor();
  /** The document id (base64url). */
  readonly id: string;
  /**
   * The document as a plain object: a fresh copy on every call, or, in a
   * repo opened with `worker: true`, a frozen (read-only) object shared
   * between calls until the next change.
   */
  value(): T;
  /**
   * Changes the document: edit the draft like a plain object
   * (`d.title = "x"`, `delete d.old`, `d.items.push(1)`). All edits of one
   * call become one change: sealed, saved, then sent. Returns the new
   * value, frozen (read-only). Costs what the edits touch, not the size of
   * the document.
   */
  change(fn: (draft: T) => void): T;
  /** Calls `cb` after every change, local or remote. Returns an unsubscribe function. */
  subscribe(cb: (event: ChangeEvent<T>) => void): () => void;
  /**
   * Compacts this document's storage in this browser into an encrypted
   * snapshot (the envelopes it covers are replaced in one durable
   * IndexedDB transaction; peers still receive every change byte for
   * byte). Rejects with StorageError in a build without the `snapshots`
   * feature (the published package: it would cost ~79 KB of .wasm).
   */
  compact(): Promise<CompactResult>;
  /**
   * Sets this tab's presence ("who is here"): a JSON value such as
   * `{ name, colour }`, at most 1 KiB as JSON; `null` to leave. Sealed
   * under the document key, signed, sent to the document's peers, never
   * stored; sent at most once a second (the latest wins), refreshed every
   * 10 s, forgotten by peers 30 s after they last heard it.
   */
  setPresence(state: Value | null): void;
  /** The peers here (heard from in the last 30 s). */
  presence(): PeerPresence[];
  on<K extends keyof DocEvents>(event: K, cb: (event: DocEvents[K]) => void): () => void;
  /** The link that opens this document elsewhere; the key is in the `#` fragment. */
  shareLink(base?: string): string;
  /** The link for blind pinning: a node can store and serve the document, never read it. */
  pinLink(base?: string): string;
  readonly status: DocStatus;
  /** Resolves once `peers` peers were met and both sides hold the same; rejects with UnavailableError after `timeout` ms. */
  synced(options?: { timeout?: number; peers?: number }): Promise<void>;
}

export interface RepoOptions {
  /**
   * The relay's WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`, or several
   * relays of one deployment (sharing rooms through a backplane): the repo
   * stays on the one it reached and fails over to the next at once,
   * resuming sync by vector exchange. Omit to work offline only.
   */
  relay?: string | string[];
  /** The IndexedDB database name (default `"mycel"`). */
  name?: string;
  /** What share links start with (default: this page's address). */
  base?: string;
  /** Where the `.wasm` file is, if not beside this module (a URL when `worker` is set). */
  wasm?: string | URL | Response | BufferSource | WebAssembly.Module;
  /**
   * Run the engine (WebAssembly, IndexedDB, sockets) in a dedicated module
   * Worker, so a large document never blocks the page. The page then keeps
   * a copy of each document's value; a change the engine refuses is
   * reported by the repo's `error` event instead of a throw.
   */
  worker?: boolean;
  /**
   * Link directly with the peers of a document (a WebRTC data channel per
   * peer, negotiated through the relay, which stays the fallback): default
   * true. Off where the browser has no `RTCPeerConnection` (a Worker).
   */
  direct?: boolean;
  /**
   * ICE servers for direct links (`RTCConfiguration.iceServers`), e.g.
   * `[{ urls: "stun:stun.example.org" }]`; default none: host candidates
   * only, which link peers on one network.
   */
  iceServers?: RTCIceServer[];
}

export interface RepoEvents extends DocEvents {
  status: { online: boolean };
  /** A direct link to `peer` opened (`direct: true`) or closed. */
  link: { peer: string; direct: boolean };
  warning: { doc?: string; message: string };
  error: { name: string; message: string; doc?: string };
}

/** A set of documents stored in this browser (IndexedDB) and synced through a relay. */
export class Repo {
  private constructor();
  static open(options?: RepoOptions): Promise<Repo>;
  /** What share links start with. */
  base: string;
  /** This tab's author id. */
  readonly peerId: string;
  readonly status: RepoStatus;
  /** Creates a document (registered on disk before this resolves). */
  create<T = { [key: string]: Value }>(): Promise<DocHandle<T>>;
  /** Opens the document of a share link. Throws LinkError or KeyMismatchError. */
  find<T = { [key: string]: Value }>(link: string): Promise<DocHandle<T>>;
  /** Every document of the repo. */
  documents(): DocHandle[];
  on<K extends keyof RepoEvents>(event: K, cb: (event: RepoEvents[K]) => void): () => void;
  /** Resolves when every write begun so far is on disk. */
  flush(): Promise<void>;
  /** Compacts every document's storage in turn (see `DocHandle.compact`). */
  compact(): Promise<void>;
  /** Waits for pending writes, then closes the relay link and the database. */
  close(): Promise<void>;
}

/** Loads the WebAssembly module (Repo.open does it). */
export function load(wasm?: RepoOptions["wasm"]): Promise<unknown>;
