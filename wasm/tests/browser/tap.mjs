// A wiretap for the app tests: a TCP proxy on 127.0.0.1 between the browser
// and the relay that forwards every connection unchanged and records every
// byte in both directions. Part of the test, not of the relay.
//
// WebSocket frames from a browser are masked (XORed with a random key per
// frame), so a plaintext string sent by a page never shows in the raw
// bytes: `messages()` parses the upgraded connections and gives every
// message's payload unmasked, which is what a search must look at.
import net from "node:net";

export class Tap {
  /** Forwards to 127.0.0.1:`targetPort`. */
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.conns = []; // { up: Buffer[], down: Buffer[] } per connection, up = browser → relay
    this.sockets = new Set();
  }

  async start() {
    this.server = net.createServer((client) => {
      const rec = { up: [], down: [] };
      this.conns.push(rec);
      const upstream = net.connect(this.targetPort, "127.0.0.1");
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      client.on("data", (d) => { rec.up.push(Buffer.from(d)); upstream.write(d); });
      upstream.on("data", (d) => { rec.down.push(Buffer.from(d)); client.write(d); });
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
  }

  get base() { return `http://127.0.0.1:${this.port}/`; }

  async stop() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Every connection's bytes so far: `{ up, down }` as one Buffer each. */
  streams() {
    return this.conns.map((c) => ({ up: Buffer.concat(c.up), down: Buffer.concat(c.down) }));
  }

  /** The payloads of the WebSocket messages of every upgraded connection: `{ up: Buffer[], down: Buffer[] }`. */
  messages() {
    const out = { up: [], down: [] };
    for (const { up, down } of this.streams()) {
      const reqEnd = up.indexOf("\r\n\r\n");
      const resEnd = down.indexOf("\r\n\r\n");
      if (reqEnd < 0 || resEnd < 0) continue;
      const request = up.subarray(0, reqEnd).toString("latin1");
      const response = down.subarray(0, resEnd).toString("latin1");
      if (!/^GET /.test(request) || !/^upgrade:\s*websocket/im.test(request) || !/^HTTP\/1\.1 101/.test(response)) continue;
      // An extension (permessage-deflate) would compress payloads; none may be negotiated for this search to hold.
      if (/^sec-websocket-extensions:/im.test(response)) throw new Error(`the relay negotiated a WebSocket extension: ${response}`);
      out.up.push(...wsMessages(up.subarray(reqEnd + 4)));
      out.down.push(...wsMessages(down.subarray(resEnd + 4)));
    }
    return out;
  }
}

/** The messages of a stream of WebSocket frames (RFC 6455 §5.2), unmasked and reassembled; a cut-off last frame is left out. */
export function wsMessages(buf) {
  const messages = [];
  let parts = [];
  let i = 0;
  while (i + 2 <= buf.length) {
    const fin = (buf[i] & 0x80) !== 0;
    const opcode = buf[i] & 0x0f;
    const masked = (buf[i + 1] & 0x80) !== 0;
    let len = buf[i + 1] & 0x7f;
    let p = i + 2;
    if (len === 126) {
      if (p + 2 > buf.length) break;
      len = buf.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      if (p + 8 > buf.length) break;
      len = Number(buf.readBigUInt64BE(p));
      p += 8;
    }
    let key = null;
    if (masked) {
      if (p + 4 > buf.length) break;
      key = buf.subarray(p, p + 4);
      p += 4;
    }
    if (p + len > buf.length) break;
    const payload = Buffer.from(buf.subarray(p, p + len));
    if (key) for (let j = 0; j < len; j++) payload[j] ^= key[j & 3];
    i = p + len;
    if (opcode >= 0x8) {
      messages.push(payload); // control frames (close, ping, pong) stand alone
      continue;
    }
    parts.push(payload);
    if (fin) {
      messages.push(Buffer.concat(parts));
      parts = [];
    }
  }
  return messages;
}

/**
 * The byte forms in which a string could appear on the wire if it were
 * sent in clear: UTF-8 (also what JSON, CBOR and Automerge's columns hold
 * for it), UTF-16 both ways, hex, and base64 / base64url at each of the
 * three alignments (the part of the encoding that only the string decides).
 */
export function plaintextForms(s) {
  const utf8 = Buffer.from(s, "utf8");
  const utf16le = Buffer.from(s, "utf16le");
  const utf16be = Buffer.from(utf16le).swap16();
  const forms = [["UTF-8", utf8], ["UTF-16LE", utf16le], ["UTF-16BE", utf16be],
    ["hex", Buffer.from(utf8.toString("hex"))], ["HEX", Buffer.from(utf8.toString("hex").toUpperCase())]];
  for (let shift = 0; shift < 3; shift++) {
    const b64 = Buffer.concat([Buffer.alloc(shift), utf8]).toString("base64").replace(/=+$/, "");
    const core = b64.slice(shift ? 4 : 0, -4);
    forms.push([`base64 (+${shift})`, Buffer.from(core)]);
    forms.push([`base64url (+${shift})`, Buffer.from(core.replace(/\+/g, "-").replace(/\//g, "_"))]);
  }
  return forms;
}
