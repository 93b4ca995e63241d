// A real mycel-relay on 127.0.0.1 for the browser suites (run.mjs, app.mjs).
import { spawn } from "node:child_process";
import net from "node:net";

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1", () => { c.end(); resolve(true); });
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the relay did not listen on 127.0.0.1:${port} within ${ms} ms`);
}

/** The relay binary `bin` on `port`, with `args` (e.g. `--www DIR`); restartable, killed with SIGKILL. */
export class Relay {
  constructor(bin, port, args = []) { this.bin = bin; this.port = port; this.args = args; this.proc = null; }
  get url() { return `ws://127.0.0.1:${this.port}/ws`; }
  get base() { return `http://127.0.0.1:${this.port}/`; }
  async start() {
    this.proc = spawn(this.bin, ["--listen", `127.0.0.1:${this.port}`, ...this.args], { stdio: ["ignore", "ignore", "pipe"] });
    this.log = "";
    this.proc.stderr.on("data", (d) => { this.log += d; });
    await waitForPort(this.port, 10_000);
  }
  async stop() {
    // Already gone (exited, or killed by an earlier stop): nothing to wait for.
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGKILL");
    await exited;
  }
}

/** Debian's `nats-server` on 127.0.0.1 (the relays' backplane); killed with SIGKILL. */
export class Nats {
  constructor(port) { this.port = port; this.proc = null; }
  get url() { return `nats://127.0.0.1:${this.port}`; }
  async start() {
    this.proc = spawn(process.env.NATS_SERVER ?? "nats-server", ["-a", "127.0.0.1", "-p", String(this.port)], { stdio: ["ignore", "ignore", "pipe"] });
    this.log = "";
    this.proc.stderr.on("data", (d) => { this.log += d; });
    await waitForPort(this.port, 10_000);
  }
  async stop() { await Relay.prototype.stop.call(this); }
}
