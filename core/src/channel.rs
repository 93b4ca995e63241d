//! Frames over a message channel with a small message limit: a WebRTC
//! data channel between a browser and a peer (DESIGN §7).
//!
//! A node's frame may be up to [`MAX_FRAME`](crate::wire::MAX_FRAME)
//! (1 MiB), but data channels carry messages of 256 KiB at most in
//! Chromium and 64 KiB in some other stacks, and a large message blocks
//! the channel's other traffic while it is sent. So a frame crosses a
//! channel as messages of at most [`CHUNK`] bytes of frame plus one flag
//! byte: `1` on the frame's last message, `0` on the ones before it. The
//! receiver refuses a frame growing beyond its limit before buffering it
//! (the same limit as on the relay path), and an empty message or an
//! unknown flag: the host then closes the channel and the relay takes
//! over.
//!
//! ```
//! use mycel_core::channel::{Reassembler, chunks};
//!
//! let frame = vec![7u8; 40_000];
//! let mut rx = Reassembler::new(1 << 20);
//! let mut out = Vec::new();
//! for msg in chunks(&frame) {
//!     if let Some(f) = rx.push(&msg).unwrap() {
//!         out.push(f);
//!     }
//! }
//! assert_eq!(out, [frame]);
//! ```

use alloc::vec::Vec;

use crate::wire::WireError;

/// Frame bytes per channel message (16 KiB: the size every WebRTC stack
/// delivers without fragmenting it at the application layer).
pub const CHUNK: usize = 16 * 1024;

const MORE: u8 = 0;
const LAST: u8 = 1;

/// The channel messages that carry `frame`, in order.
pub fn chunks(frame: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let count = frame.len().div_ceil(CHUNK).max(1);
    (0..count).map(move |i| {
        let part = &frame[i * CHUNK..((i + 1) * CHUNK).min(frame.len())];
        let mut msg = Vec::with_capacity(part.len() + 1);
        msg.push(if i + 1 == count { LAST } else { MORE });
        msg.extend_from_slice(part);
        msg
    })
}

/// Joins channel messages back into frames, bounded by a frame limit.
#[derive(Debug)]
pub struct Reassembler {
    buf: Vec<u8>,
    max_frame: usize,
}

impl Reassembler {
    pub fn new(max_frame: usize) -> Reassembler {
        Reassembler {
            buf: Vec::new(),
            max_frame,
        }
    }

    /// Takes one channel message; a whole frame once its last message is
    /// in. An error leaves the reassembler empty (the host closes the
    /// channel: what came before the bad message cannot be trusted).
    pub fn push(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        let Some((&flag, part)) = msg.split_first() else {
            self.buf = Vec::new();
            return Err(WireError::Malformed("empty data channel message".into()));
        };
        if flag != MORE && flag != LAST {
            self.buf = Vec::new();
            return Err(WireError::Malformed(alloc::format!(
                "data channel message with unknown flag {flag}"
            )));
        }
        let len = self.buf.len() + part.len();
        if len > self.max_frame {
            self.buf = Vec::new();
            return Err(WireError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if flag == LAST && self.buf.is_empty() {
            return Ok(Some(part.to_vec()));
        }
        self.buf.extend_from_slice(part);
        Ok((flag == LAST).then(|| core::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn roundtrip(frame: &[u8]) -> Vec<Vec<u8>> {
        let mut rx = Reassembler::new(1 << 20);
        chunks(frame)
            .filter_map(|m| {
                assert!(m.len() <= CHUNK + 1);
                rx.push(&m).unwrap()
            })
            .collect()
    }

    #[test]
    fn frames_of_every_size_come_back_whole() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1 << 20] {
            let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                roundtrip(&frame),
                core::slice::from_ref(&frame),
                "len {len}"
            );
        }
    }

    #[test]
    fn bad_messages_are_errors_and_reset() {
        let mut rx = Reassembler::new(2 * CHUNK);
        assert!(rx.push(&[]).is_err());
        assert!(rx.push(&[9, 1, 2]).is_err());
        // A frame growing past the limit is refused before it is buffered.
        let big = vec![0u8; 3 * CHUNK];
        let mut msgs = chunks(&big);
        assert_eq!(rx.push(&msgs.next().unwrap()), Ok(None));
        assert_eq!(rx.push(&msgs.next().unwrap()), Ok(None));
        assert!(matches!(
            rx.push(&msgs.next().unwrap()),
            Err(WireError::TooLarge { .. })
        ));
        // The next frame starts clean.
        assert_eq!(rx.push(&[LAST, 5]), Ok(Some(vec![5])));
    }
}
