// `cargo xtask bench wasm`: the automerge-paper trace in headless Chromium
// (playwright-core driving /usr/bin/chromium; never a browser download),
// (a) through @automerge/automerge and (b), (b') through the npm package
// mycel (wasm/pkg, built by `cargo xtask dist`), in the same browser and run.
//
//   node run.mjs --trace automerge-paper.json.gz [--edits N] [--limit-s S]
//
// Prints each mode's time and the ratios b/a and b'/a, then one JSON line.
// A mode running longer than --limit-s (default 120) stops and reports its
// partial rate in edits/s instead of a total.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, serveStatic } from "../tests/browser/serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkgDir = path.resolve(process.env.MYCEL_PKG_DIR ?? path.join(here, "../pkg"));
const automergeDir = path.join(here, "node_modules/@automerge/automerge");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const usage = "usage: node run.mjs --trace PATH [--edits N] [--limit-s S]";
let trace = process.env.MYCEL_TRACE ?? null;
let edits = null;
let limitS = 120;
const args = process.argv.slice(2);
while (args.length > 0) {
  const a = args.shift();
  const value = () => {
    if (args.length === 0) fail(`${a} needs a value; ${usage}`);
    return args.shift();
  };
  if (a === "--trace") trace = value();
  else if (a === "--edits") edits = Number(value());
  else if (a === "--limit-s") limitS = Number(value());
  else fail(`unknown argument ${a}; ${usage}`);
}
if (edits !== null && !(edits > 0)) fail(`--edits takes a positive number; ${usage}`);
if (!(limitS > 0)) fail(`--limit-s takes a positive number of seconds; ${usage}`);

function fail(message) {
  console.error(`wasm-bench: ${message}`);
  process.exit(1);
}

for (const [what, p] of [["the trace (--trace)", trace ?? ""], ["the npm package (cargo xtask dist)", path.join(pkgDir, "index.js")],
  ["@automerge/automerge (npm ci in wasm/bench)", path.join(automergeDir, "package.json")], ["Chromium", chromiumPath]]) {
  if (!p || !existsSync(p)) fail(`${what} not found at ${p || "(unset)"}`);
}
const automergeVersion = JSON.parse(readFileSync(path.join(automergeDir, "package.json"), "utf8")).version;

// Every mode is bounded by limitS; the whole run by that, three times over, plus setup.
const watchdog = setTimeout(() => fail(`still running after ${limitS * 3 + 180} s; giving up`), (limitS * 3 + 180) * 1000);
watchdog.unref();

const server = await serveStatic({
  files: { "/": path.join(here, "index.html"), "/bench.js": path.join(here, "bench.js"), "/trace.json.gz": trace },
  dirs: { "/pkg/": pkgDir, "/automerge/": automergeDir },
});
const base = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({ executablePath: chromiumPath, timeout: 30_000, args: CHROMIUM_ARGS });

/** A fresh context (own IndexedDB) with the benchmark page loaded and the trace unpacked. */
async function page() {
  const context = await browser.newContext();
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  p.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console.error(`console.${m.type()}: ${m.text()}`); });
  await p.goto(base);
  await p.waitForFunction(() => window.benchReady === true, null, { timeout: 30_000 });
  const n = await p.evaluate(() => window.bench.load());
  return { context, p, n };
}

const limitMs = limitS * 1000;
const version = (() => {
  try {
    return execFileSync(chromiumPath, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "Chromium";
  }
})();
const rate = (r) => r.edits / ((r.appliedMs ?? r.ms) / 1000);
// Per-edit time of r over a's: total over total when both finished, else
// from the rates (edits/s), which flatter a partial run: later edits cost
// more as the document grows.
const ratio = (r, a) => (r.complete && a.complete ? r.ms / a.ms : rate(a) / rate(r));
const secs = (ms) => `${(ms / 1000).toFixed(2)} s`;
function figure(r) {
  if (r.complete) return `${secs(r.ms).padStart(9)}`;
  return `stopped after ${secs(r.ms)}: ${r.edits} of ${r.of} edits, ${rate(r).toFixed(0)} edits/s`;
}

const MODES = [
  ["a", "automerge", {}, `(a)  @automerge/automerge ${automergeVersion}, one change per edit:`],
  ["b", "mycelPackage", { frameMs: null }, "(b)  mycel npm package, one change per edit:   ", "b/a", "unbatched"],
  ["b_frame", "mycelPackage", { frameMs: 16 }, "(b') mycel npm package, one change per 16 ms:  ", "b'/a", "batched"],
];
const results = {};
let header = false;
try {
  for (const [key, fn, opts, label, ratioName] of MODES) {
    const { context, p, n } = await page();
    if (!header) {
      console.log(`wasm-bench: automerge-paper trace, ${edits ? `${Math.min(edits, n)} edits (prefix)` : `${n} edits`}; ${version}, headless; the engine on the page's main thread; each mode stops after ${limitS} s`);
      header = true;
    }
    const r = await p.evaluate(([fn, opts]) => window.bench[fn](opts), [fn, { edits, limitMs, ...opts }]);
    await context.close();
    if (r.correct === false) fail(`mode (${key}): the final text differs from the trace's endContent`);
    if (r.complete && r.flushed === false) r.complete = false;
    results[key] = r;
    if (key === "a") {
      console.log(`${label} ${figure(r)}${r.correct ? "  (final text = endContent)" : ""}`);
      continue;
    }
    const detail = r.complete
      ? `(${r.changes} changes; doc.change ${secs(r.appliedMs)}, then IndexedDB writes ${secs(r.flushMs)}${r.correct ? "; final text = endContent" : ""})`
      : r.edits === r.of ? `(${r.changes} changes; its IndexedDB writes did not finish in time)` : `(${r.changes} changes; partial, so from per-edit rates)`;
    console.log(`${label}${figure(r)}  ${ratioName} = ${ratio(r, results.a).toFixed(2)}  ${detail}`);
  }
} finally {
  await browser.close().catch(() => {});
  server.close();
}

const json = { edits: results.a.of, engine: "main thread", automerge_npm: automergeVersion, limit_s: limitS };
for (const [key, , , , , name] of MODES) {
  const r = results[key];
  const k = key === "a" ? "automerge_npm" : `mycel_${name}${key === "b_frame" ? "_16ms" : ""}`;
  json[`${k}_complete`] = r.complete;
  json[`${k}_s`] = r.complete ? +(r.ms / 1000).toFixed(3) : null;
  json[`${k}_edits`] = r.edits;
  json[`${k}_edits_per_s`] = +rate(r).toFixed(1);
  if (key !== "a") {
    json[`${k}_changes`] = r.changes;
    json[`ratio_${name}`] = +ratio(r, results.a).toFixed(3);
  }
}
console.log(JSON.stringify(json));
