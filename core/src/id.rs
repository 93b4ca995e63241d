//! Identifiers and links.
//!
//! Every id has one text form: unpadded base64url (RFC 4648 §5), the same
//! alphabet the share links use, so an id can be pasted into a URL as is.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ParseError::Encoding { what })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| ParseError::Length {
        what,
        expected: N,
        actual: bytes.len(),
    })
}

pub(crate) fn encode_text(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
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
