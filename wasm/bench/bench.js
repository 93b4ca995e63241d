// The automerge-paper trace in the browser (loaded by index.html, driven by
// run.mjs): (a) @automerge/automerge applied directly, one change per
// keystroke; (b) the npm package mycel, one doc.change per keystroke, and
// (b') one doc.change per 16 ms frame of typing. Everything runs on the
// page's main thread (the repo is opened without `worker`).
import * as Automerge from "/automerge/dist/mjs/entrypoints/slim.js";
import * as mycel from "/pkg/index.js";

let patches = null;
let endContent = null;

/** Fetches and unpacks the trace (not timed); returns its number of keystrokes. */
export async function load() {
  const res = await fetch("/trace.json.gz");
  if (!res.ok) throw new Error(`the trace could not be fetched: HTTP ${res.status}`);
  const json = await new Response(res.body.pipeThrough(new DecompressionStream("gzip"))).text();
  const trace = JSON.parse(json);
  patches = trace.txns.flatMap((t) => t.patches);
  endContent = trace.endContent;
  await Automerge.initializeWasm(fetch("/automerge/dist/automerge.wasm"));
  await mycel.load();
  return patches.length;
}

/** Applies the first `edits` keystrokes; stops early after `limitMs`. */
function limits(edits) {
  const n = Math.min(edits ?? patches.length, patches.length);
  return { n, full: n === patches.length };
}

/** (a) one Automerge.change per keystroke, splicing into a text field. */
export function automerge({ edits, limitMs }) {
  const { n, full } = limits(edits);
  const t0 = performance.now();
  let doc = Automerge.from({ text: "" });
  let i = 0;
  while (i < n) {
    const [pos, del, ins] = patches[i];
    doc = Automerge.change(doc, (d) => Automerge.splice(d, ["text"], pos, del, ins));
    i += 1;
    if ((i & 63) === 0 && performance.now() - t0 > limitMs) break;
  }
  const ms = performance.now() - t0;
  return { edits: i, of: n, complete: i === n, ms, changes: i, correct: i === n && full ? doc.text === endContent : null };
}

/**
 * (b) with `frameMs` null: one doc.change per keystroke; (b') with
 * `frameMs`: keystrokes keep going into one change while the frame lasts
 * (at least one per change), as an editor batches input per animation
 * frame; the same definition as core-bench's (b'). Then waits for every
 * IndexedDB write (repo.flush()), within what is left of `limitMs`.
 */
export async function mycelPackage({ edits, limitMs, frameMs }) {
  const { n, full } = limits(edits);
  const repo = await mycel.Repo.open({ name: `mycel-bench-${frameMs ?? "edit"}-${Date.now()}` });
  const doc = await repo.create();
  const t0 = performance.now();
  doc.change((d) => { d.text = mycel.text(""); });
  let i = 0;
  let changes = 0;
  while (i < n) {
    if (frameMs == null) {
      const [pos, del, ins] = patches[i];
      doc.change((d) => mycel.splice(d, "text", pos, del, ins));
      i += 1;
    } else {
      const frameStart = performance.now();
      doc.change((d) => {
        const first = i;
        while (i < n && (i === first || performance.now() - frameStart < frameMs)) {
          const [pos, del, ins] = patches[i];
          mycel.splice(d, "text", pos, del, ins);
          i += 1;
        }
      });
    }
    changes += 1;
    if (performance.now() - t0 > limitMs) break;
  }
  const applied = performance.now() - t0;
  const left = Math.max(limitMs - applied, 1_000);
  const flushed = await Promise.race([
    repo.flush().then(() => true),
    new Promise((r) => setTimeout(() => r(false), left)),
  ]);
  const ms = performance.now() - t0;
  const correct = i === n && full ? doc.value().text === endContent : null;
  if (flushed) await repo.close();
  return { edits: i, of: n, complete: i === n, ms, appliedMs: applied, flushMs: ms - applied, flushed, changes: changes + 1, correct };
}

/** What the page runs on. */
export function environment() {
  return { userAgent: navigator.userAgent, automerge: Automerge.wasmReleaseInfo?.()?.gitHead ?? null };
}
