// The service worker of mycel notes: the app shell and the wasm are cached
// on the first visit, so the app loads with the network off. Served from
// the cache at once and refreshed in the background (stale-while-revalidate),
// so an update of the app is picked up on the next visit.
const CACHE = "mycel-notes-v1";
const SHELL = [
  "./", "index.html", "app.js", "app.css", "icon.svg", "manifest.webmanifest",
  "pkg/index.js", "pkg/mycel_wasm.js", "pkg/mycel_wasm_bg.wasm", "pkg/worker.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== location.origin) return;
  if (["/ws", "/healthz", "/metrics"].includes(url.pathname)) return;
  const key = req.mode === "navigate" ? new URL("./", location.href).href : req;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const cached = await cache.match(key, { ignoreSearch: true });
    const network = fetch(req).then((res) => {
      if (res.ok) cache.put(key, res.clone()).catch(() => {});
      return res;
    });
    if (cached) {
      event.waitUntil(network.catch(() => {}));
      return cached;
    }
    return network;
  })());
});
