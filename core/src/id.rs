//! Identifiers and links.
//!
//! Every id has one text form: unpadded base64url (RFC 4648 §5), the same
//! alphabet the share links use, so an id can be pasted into a URL as is.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use crate::crypto::DocKey;

/// Why a text id or a link could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is not unpadded base64url.
    Encoding { what: &'static str },
    /// The text decodes, but to the wrong number of bytes.
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A link has no `#` fragment (the key and ids live only there).
    NoFragment,
    /// A link's fragment lacks a required parameter.
    Missing { param: &'static str },
    /// A link's fragment names a parameter twice.
    Duplicate { param: &'static str },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Encoding { what } => write!(f, "{what} is not valid base64url text"),
            ParseError::Length {
                what,
                expected,
                actual,
            } => write!(f, "{what} must be {expected} bytes, got {actual}"),
            ParseError::NoFragment => {
                f.write_str("the link has no '#' part: it is incomplete (copy the whole link)")
            }
            ParseError::Missing { param } => {
                write!(f, "the link lacks '{param}=' after '#': it is incomplete")
            }
            ParseError::Duplicate { param } => write!(f, "the link names '{param}=' twice"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseError {}

/// The base64url alphabet (RFC 4648 §5).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

/// Decodes unpadded base64url text into exactly `N` bytes. Strict, as the
/// `base64` crate's `URL_SAFE_NO_PAD` was (a test checks they agree): no
/// padding, no other characters, and the unused low bits of a last partial
/// group must be zero, so every byte string has one text form. (Hand-written
/// to keep the `base64` crate out of the browser build.)
pub(crate) fn decode_fixed<const N: usize>(
    what: &'static str,
    text: &str,
) -> Result<[u8; N], ParseError> {
    // base64 of N bytes is at most 4 * ceil(N/3) chars; refuse long input early.
    if text.len() > (N.div_ceil(3)) * 4 {
        return Err(ParseError::Length {
            what,
            expected: N,
            actual: text.len() * 3 / 4,
        });
    }
    let text = text.as_bytes();
    let bad = ParseError::Encoding { what };
    // A last group of one character carries no whole byte.
    if text.len() % 4 == 1 {
        return Err(bad);
    }
    let len = text.len() / 4 * 3 + (text.len() % 4).saturating_sub(1);
    let mut out = [0u8; N];
    let mut at = 0;
    for group in text.chunks(4) {
        let mut bits = 0u32;
        for &c in group {
            bits = bits << 6 | sextet(c).ok_or_else(|| bad.clone())?;
        }
        // Left-align the group's 6 × len bits in 24 and take its whole bytes.
        bits <<= 6 * (4 - group.len());
        let bytes = group.len() - 1;
        if bits & (0x00ff_ffff >> (8 * bytes)) != 0 {
            return Err(bad);
        }
        for (i, b) in bits.to_be_bytes()[1..=bytes].iter().enumerate() {
            if let Some(slot) = out.get_mut(at + i) {
                *slot = *b;
            }
        }
        at += bytes;
    }
    if len != N {
        return Err(ParseError::Length {
            what,
            expected: N,
            actual: len,
        });
    }
    Ok(out)
}

/// Unpadded base64url text of `bytes`.
pub(crate) fn encode_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let mut buf = [0u8; 4];
        buf[1..=group.len()].copy_from_slice(group);
        let bits = u32::from_be_bytes(buf);
        for i in 0..=group.len() {
            out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&encode_text(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short prefix: enough to tell ids apart in logs.
                let text = encode_text(&self.0);
                write!(f, concat!(stringify!($name), "({})"), &text[..8])
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                decode_fixed::<$len>($what, s).map($name)
            }
        }

        impl<C> minicbor::Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.bytes(&self.0)?;
                Ok(())
            }
        }

        impl<'b, C> minicbor::Decode<'b, C> for $name {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                let bytes = d.bytes()?;
                <[u8; $len]>::try_from(bytes)
                    .map($name)
                    .map_err(|_| minicbor::decode::Error::message(concat!($what, " has the wrong length")))
            }
        }
    };
}

byte_id!(
    /// A replica's identity: its Ed25519 public key.
    PeerId, 32, "peer id"
);
byte_id!(
    /// A document, chosen at random when it is created.
    DocId, 16, "document id"
);
byte_id!(
    /// The relay room of a document: derived from its key and id, so the
    /// relay learns nothing about the document (see [`crate::crypto::room_id`]).
    RoomId, 32, "room id"
);
byte_id!(
    /// BLAKE3 of an encoded envelope.
    EnvelopeId, 32, "envelope id"
);

/// Parsed `#k=v&k=v` fragment parameters; unknown parameters are ignored so
/// newer links still open in older builds.
fn fragment_params<'a>(
    link: &'a str,
    wanted: &[&'static str],
    out: &mut [Option<&'a str>],
) -> Result<&'a str, ParseError> {
    let (base, fragment) = link.split_once('#').ok_or(ParseError::NoFragment)?;
    for pair in fragment.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(i) = wanted.iter().position(|w| *w == k) {
            if out[i].is_some() {
                return Err(ParseError::Duplicate { param: wanted[i] });
            }
            out[i] = Some(v);
        }
    }
    for (i, v) in out.iter().enumerate() {
        if v.is_none() {
            return Err(ParseError::Missing { param: wanted[i] });
        }
    }
    Ok(base)
}

/// A link that opens a document: the key travels only in the URL fragment,
/// which browsers never send to a server.
///
/// ```
/// use mycel_core::id::{DocId, ShareLink};
/// use mycel_core::crypto::DocKey;
/// let link = ShareLink { base: "http://127.0.0.1:8080/".into(), doc: DocId([7; 16]), key: DocKey::from_bytes([9; 32]) };
/// let text = link.to_string();
/// assert!(text.starts_with("http://127.0.0.1:8080/#d="));
/// assert_eq!(text.parse::<ShareLink>().unwrap(), link);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ShareLink {
    /// Everything before `#`, kept as given.
    pub base: String,
    pub doc: DocId,
    pub key: DocKey,
}

impl ShareLink {
    /// The link for blind pinning: same document, no key.
    pub fn pin_link(&self) -> PinLink {
        PinLink {
            base: self.base.clone(),
            doc: self.doc,
            room: crate::crypto::room_id(&self.key, &self.doc),
        }
    }
}

impl fmt::Debug for ShareLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareLink")
            .field("base", &self.base)
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ShareLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#d={}&k={}",
            self.base,
            self.doc,
            encode_text(self.key.as_bytes())
        )
    }
}

impl FromStr for ShareLink {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut v = [None, None];
        let base = fragment_params(s.trim(), &["d", "k"], &mut v)?;
        let doc = decode_fixed::<16>("document id", v[0].unwrap_or_default())?;
        let key = decode_fixed::<32>("document key", v[1].unwrap_or_default())?;
        Ok(ShareLink {
            base: base.into(),
            doc: DocId(doc),
            key: DocKey::from_bytes(key),
        })
    }
}

/// A link that lets a node store and serve a document's envelopes without
/// being able to read them: document id and room id, no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLink {
    pub base: String,
    pub doc: DocId,
    pub room: RoomId,
}

impl fmt::Display for PinLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#d={}&r={}", self.base, self.doc, self.room)
    }
}

impl FromStr for PinLink {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut v = [None, None];
        let base = fragment_params(s.trim(), &["d", "r"], &mut v)?;
        let doc = decode_fixed::<16>("document id", v[0].unwrap_or_default())?;
        let room = decode_fixed::<32>("room id", v[1].unwrap_or_default())?;
        Ok(PinLink {
            base: base.into(),
            doc: DocId(doc),
            room: RoomId(room),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn ids_round_trip_through_text() {
        let p = PeerId([0xab; 32]);
        assert_eq!(p.to_string().parse::<PeerId>().unwrap(), p);
        assert_eq!(p.to_string().len(), 43);
        let d = DocId([1; 16]);
        assert_eq!(d.to_string().parse::<DocId>().unwrap(), d);
    }

    /// A deterministic stream of bytes (xorshift), for the codec tests.
    fn noise(seed: u64) -> impl FnMut() -> u8 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        }
    }

    fn base64_crate(text: &str) -> Option<alloc::vec::Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    }

    #[test]
    fn the_codec_agrees_with_the_base64_crate() {
        use base64::Engine as _;
        let mut next = noise(7);
        for n in 0..=40 {
            for _ in 0..50 {
                let bytes: alloc::vec::Vec<u8> = (0..n).map(|_| next()).collect();
                let text = encode_text(&bytes);
                assert_eq!(
                    text,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
                );
                if n == 16 {
                    assert_eq!(decode_fixed::<16>("x", &text).unwrap().as_slice(), bytes);
                }
            }
        }
        // Random texts over the alphabet, '=' and a stray character: accepted
        // or refused exactly as the crate does, with the same bytes.
        let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ ";
        for _ in 0..200_000 {
            let len = 19 + next() as usize % 6;
            let text: String = (0..len)
                .map(|_| {
                    let r = next() as usize;
                    // Mostly the alphabet, sometimes a character outside it.
                    if r.is_multiple_of(16) {
                        chars[64 + r / 16 % 4] as char
                    } else {
                        chars[r % 64] as char
                    }
                })
                .collect();
            let ours = decode_fixed::<16>("x", &text);
            match base64_crate(&text) {
                Some(b) if b.len() == 16 => assert_eq!(ours.unwrap().as_slice(), b, "{text}"),
                Some(b) => assert_eq!(
                    ours,
                    Err(ParseError::Length {
                        what: "x",
                        expected: 16,
                        actual: b.len()
                    }),
                    "{text}"
                ),
                None => assert!(ours.is_err(), "{text}"),
            }
        }
        // Unused low bits must be zero: one text per byte string.
        assert!(decode_fixed::<16>("x", &("A".repeat(21) + "B")).is_err());
        assert!(decode_fixed::<16>("x", &("A".repeat(21) + "Q")).is_ok());
        assert!(decode_fixed::<16>("x", &("A".repeat(21) + "R")).is_err());
    }

    #[test]
    fn malformed_text_ids_are_typed_errors() {
        assert_eq!(
            "!!".parse::<DocId>(),
            Err(ParseError::Encoding {
                what: "document id"
            })
        );
        assert!(matches!(
            "AAAA".parse::<DocId>(),
            Err(ParseError::Length { expected: 16, .. })
        ));
        assert!(matches!(
            "A".repeat(1000).parse::<PeerId>(),
            Err(ParseError::Length { .. })
        ));
    }

    #[test]
    fn share_link_errors_name_the_problem() {
        let good = ShareLink {
            base: "https://x/".into(),
            doc: DocId([3; 16]),
            key: DocKey::from_bytes([4; 32]),
        }
        .to_string();
        assert_eq!(
            "https://x/".parse::<ShareLink>(),
            Err(ParseError::NoFragment)
        );
        let no_key = good.split("&k=").next().unwrap();
        assert_eq!(
            no_key.parse::<ShareLink>(),
            Err(ParseError::Missing { param: "k" })
        );
        let twice = alloc::format!("{good}&d=AAAA");
        assert_eq!(
            twice.parse::<ShareLink>(),
            Err(ParseError::Duplicate { param: "d" })
        );
        let short_key = &good[..good.len() - 2];
        assert!(matches!(
            short_key.parse::<ShareLink>(),
            Err(ParseError::Length {
                what: "document key",
                ..
            }) | Err(ParseError::Encoding { .. })
        ));
        // Unknown parameters are tolerated.
        let newer = alloc::format!("{good}&v=2");
        assert!(newer.parse::<ShareLink>().is_ok());
    }

    #[test]
    fn pin_link_carries_no_key() {
        let share = ShareLink {
            base: "https://x/".into(),
            doc: DocId([3; 16]),
            key: DocKey::from_bytes([4; 32]),
        };
        let pin = share.pin_link();
        let text = pin.to_string();
        assert!(!text.contains(&encode_text(share.key.as_bytes())));
        assert_eq!(text.parse::<PinLink>().unwrap(), pin);
        assert!(text.parse::<ShareLink>().is_err());
    }
}
