// A static file server on 127.0.0.1 and the Chromium flags, shared by the
// browser tests (run.mjs) and the wasm benchmark (wasm/bench/run.mjs).
import { createServer } from "node:http";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";

/** Headless Chromium without any network of its own (TOOLCHAIN.md). */
export const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".html": "text/html", ".wasm": "application/wasm", ".json": "application/json", ".ts": "text/plain" };

/**
 * Serves `files` (exact URL path → file) and `dirs` (URL prefix ending in
 * "/" → directory, nothing outside it) from a free port on 127.0.0.1, never
 * cached. Resolves to the listening http.Server.
 */
export function serveStatic({ files = {}, dirs = {} }) {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    let file = Object.hasOwn(files, url.pathname) ? files[url.pathname] : null;
    if (!file) {
      for (const [prefix, dir] of Object.entries(dirs)) {
        if (!url.pathname.startsWith(prefix)) continue;
        const root = path.resolve(dir);
        const candidate = path.resolve(root, decodeURIComponent(url.pathname.slice(prefix.length)));
        if (candidate.startsWith(root + path.sep)) file = candidate;
        break;
      }
    }
    if (url.pathname === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/**
 * What a browser suite needs, checked before anything starts (a clear
 * message and exit 1 when missing), and a watchdog that fails the whole
 * run after `limitS` seconds: a hang is a failure, never a stuck CI.
 */
export function suiteSetup(name, here, limitS = 300) {
  const pkgDir = path.resolve(process.env.MYCEL_PKG_DIR ?? path.join(here, "../../pkg"));
  const relayBin = process.env.MYCEL_RELAY_BIN;
  const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  const watchdog = setTimeout(() => {
    console.error(`${name}: still running after ${limitS} s; giving up`);
    process.exit(1);
  }, limitS * 1000);
  watchdog.unref();
  for (const [what, p] of [["the npm package (cargo xtask dist)", path.join(pkgDir, "index.js")], ["mycel-relay (MYCEL_RELAY_BIN)", relayBin ?? ""], ["Chromium", chromiumPath]]) {
    if (!p || !existsSync(p)) {
      console.error(`${name}: ${what} not found at ${p || "(unset)"}`);
      process.exit(1);
    }
  }
  return { pkgDir, relayBin, chromiumPath };
}
