// The engine of a `Repo.open({ worker: true })`: runs in a module Worker and
// answers the page's requests `{ id, method, args }` with `{ id, result }` or
// `{ id, error: { name, message } }`; pushes `{ type: "event", kind, payload,
// value }` for every repo event, and the repo status with every message. A
// "change" event carries its patches, which cost what the change did; the
// document's whole value comes only with a `reset` (patches could not be
// recorded), so a large document's change stays cheap on the page.
import { Repo } from "./index.js";

let repo = null;
let ticker = null;
const KINDS = ["saved-locally", "sent", "stored-remotely", "peer", "change", "presence", "status", "warning", "error"];

const status = () => (repo ? repo.status : undefined);
const describe = (h) => ({ id: h.id, shareLink: h.shareLink(), pinLink: h.pinLink(), value: h.value() });

async function handle(method, args) {
  switch (method) {
    case "open": {
      const { relay, name, base, wasm } = args[0];
      repo = await Repo.open({ relay, name, base, wasm });
      for (const kind of KINDS) {
        repo.on(kind, (payload) => {
          const value = kind === "change" && payload.reset ? repo._handle(payload.doc).value() : undefined;
          postMessage({ type: "event", kind, payload, value, status: status() });
        });
      }
      // The page reads status synchronously: keep its copy fresh.
      ticker = setInterval(() => repo && postMessage({ status: status() }), 200);
      return { peerId: repo.peerId, docs: repo.documents().map(describe) };
    }
    case "create":
      return describe(await repo.create());
    case "find":
      return describe(await repo.find(args[0]));
    case "change":
      repo._handle(args[0])._applyOps(args[1]);
      return null;
    case "value":
      return repo._handle(args[0]).value();
    case "setPresence":
      repo._handle(args[0]).setPresence(args[1] === "" ? null : JSON.parse(args[1]));
      return null;
    case "compact":
      return repo._handle(args[0]).compact();
    case "flush":
      return repo.flush();
    case "close":
      clearInterval(ticker);
      await repo?.close();
      repo = null;
      return null;
    default:
      throw new Error(`unknown request ${method}`);
  }
}

onmessage = async ({ data }) => {
  const { id, method, args } = data;
  try {
    const result = await handle(method, args);
    postMessage({ id, result, status: status() });
  } catch (e) {
    postMessage({ id, error: { name: e?.name ?? "MycelError", message: e?.message ?? String(e) }, status: status() });
  }
};
