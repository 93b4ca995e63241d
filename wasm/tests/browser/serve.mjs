// A static file server on 127.0.0.1 and the Chromium flags, shared by the
// browser tests (run.mjs) and the wasm benchmark (wasm/bench/run.mjs).
import { createServer } from "node:http";
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
