//! The server side of RFC 6455 framing, written for the relay's memory
//! budget: no buffer is kept while a connection is idle, frames are parsed
//! in place from a stack buffer, and outgoing frames are a 2–10 byte header
//! plus the shared payload (`Bytes`), written with `writev` — never copied
//! into a per-connection buffer. (A general WebSocket library keeps a read
//! and a write buffer per connection, and keeps their largest size forever:
//! one 1 MiB message would pin 1 MiB per connection.)

use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A parsed frame header (client → server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Payload length.
    pub len: u64,
    /// Header length in bytes.
    pub size: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Invalid framing; the connection is closed with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

/// Parses a client frame header from the start of `buf`; `Ok(None)` if
/// more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        // No extension was negotiated, so no RSV bit may be set.
        return Err(ProtocolError("reserved bits set"));
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(ProtocolError("unknown opcode"));
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(ProtocolError("client frames must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_be_bytes(a);
            if len >> 63 != 0 {
                return Err(ProtocolError("frame length has its top bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let head = Head {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        len,
        size: at + 4,
    };
    if head.is_control() && (!fin || len > 125) {
        return Err(ProtocolError(
            "control frames must be final and at most 125 bytes",
        ));
    }
    Ok(Some(head))
}

/// Removes the client's mask in place. `offset` is the position of
/// `data[0]` within the frame's payload (for payloads unmasked in parts).
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that it lines up with `data[0]`, then XOR eight
    // bytes at a time: the safe-code equivalent of the usual word loop.
    let r = offset % 4;
    let key = [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ];
    let key8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ key8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// One outgoing (server → client, unmasked) frame: its header and payload.
#[derive(Debug, Clone)]
pub struct Out {
    head: [u8; 10],
    head_len: u8,
    pub body: Bytes,
}

impl Out {
    pub fn new(opcode: u8, body: Bytes) -> Out {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode;
        let len = body.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Out {
            head,
            head_len,
            body,
        }
    }

    pub fn binary(body: Bytes) -> Out {
        Out::new(OP_BINARY, body)
    }

    pub fn close(code: u16, reason: &str) -> Out {
        let mut b = Vec::with_capacity(2 + reason.len());
        b.extend_from_slice(&code.to_be_bytes());
        // Control payloads are at most 125 bytes.
        b.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        Out::new(OP_CLOSE, Bytes::from(b))
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn heads() {
        // RFC 6455 §5.7: masked "Hello".
        let f = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = parse_head(&f).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len, h.size), (true, OP_TEXT, 5, 6));
        let mut p = f[6..].to_vec();
        unmask(&mut p, h.mask, 0);
        assert_eq!(p, b"Hello");
        for n in 0..6 {
            assert_eq!(parse_head(&f[..n]), Ok(None));
        }
        // 16- and 64-bit lengths.
        let h = parse_head(&[0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!((h.len, h.size), (256, 8));
        let h = parse_head(&[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!((h.len, h.size), (1 << 32, 14));
        // Errors.
        assert!(parse_head(&[0x82, 0x05]).is_err(), "unmasked");
        assert!(parse_head(&[0xC2, 0x80]).is_err(), "rsv1");
        assert!(parse_head(&[0x83, 0x80]).is_err(), "opcode 3");
        assert!(
            parse_head(&[0x09, 0x80, 1, 2, 3, 4]).is_err(),
            "fragmented ping"
        );
        assert!(
            parse_head(&[0x89, 0xFE, 0, 200, 1, 2, 3, 4]).is_err(),
            "long ping"
        );
        assert!(parse_head(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn unmask_in_parts_matches_whole() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        unmask(&mut whole, mask, 0);
        let mut parts = data.clone();
        let (a, b) = parts.split_at_mut(37);
        unmask(a, mask, 0);
        unmask(b, mask, 37);
        assert_eq!(whole, parts);
        let naive: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, naive);
    }

    #[test]
    fn out_headers() {
        assert_eq!(Out::binary(Bytes::from(vec![0; 5])).head(), &[0x82, 5]);
        assert_eq!(
            Out::binary(Bytes::from(vec![0; 300])).head(),
            &[0x82, 126, 1, 44]
        );
        let big = Out::binary(Bytes::from(vec![0; 70_000]));
        assert_eq!(big.head()[..2], [0x82, 127]);
        assert_eq!(big.len(), 70_010);
        assert_eq!(
            Out::close(1001, "bye").body.as_ref(),
            &[0x03, 0xE9, b'b', b'y', b'e']
        );
    }

    #[test]
    fn parse_never_panics_on_short_or_odd_input() {
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            let mut buf = [0u8; 16];
            let n = (x % 17) as usize;
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let _ = parse_head(&buf[..n]);
        }
    }
}
