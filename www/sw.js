// The service worker of mycel notes. Each build of the app is cached whole,
// in a cache named after the build (`cargo xtask dist` stamps BUILD with a
// hash of the app's files), on the first visit: the app then loads from
// that cache, with or without the network, and never mixes files of two
// builds. A new build changes this file, so the browser installs the new
// worker in the background (on a visit, or when the page asks: after a
// reconnection, on becoming visible, every 30 minutes); it fills its own
// cache, takes over and deletes the old caches. A page already open keeps
// running the code it loaded (all of it is loaded at start), so open
// documents are not disturbed; the next visit runs the new build.
const BUILD = "dev";
const PREFIX = "mycel-notes-";
const CACHE = PREFIX + BUILD;
// Unbuilt (www/ served as is): the network first, so edits show at once.
const DEV = BUILD === "dev";
const SHELL = [
  "./", "app.js", "app.css", "icon.svg", "manifest.webmanifest",
  "pkg/index.js", "pkg/mycel_wasm.js", "pkg/mycel_wasm_bg.wasm", "pkg/worker.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // Past the HTTP cache: every file of this build, fresh from the server.
    await cache.addAll(SHELL.map((url) => new Request(url, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== location.origin) return;
  if (["/ws", "/healthz", "/metrics"].includes(url.pathname)) return;
  // Every page of the app is the shell (`./`); documents are in the fragment.
  const key = req.mode === "navigate" ? new URL("./", location.href).href : req;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    if (DEV) {
      try {
        const res = await fetch(req);
        if (res.ok) await cache.put(key, res.clone());
        return res;
      } catch (e) {
        const cached = await cache.match(key, { ignoreSearch: true });
        if (cached) return cached;
        throw e;
      }
    }
    const cached = await cache.match(key, { ignoreSearch: true });
    return cached ?? fetch(req);
  })());
});
