//! Envelopes from the network: decoding, signature checks and opening
//! return errors, never panic, and nothing but the author's exact signed
//! bytes ever opens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mycel_core::crypto::{DocKey, DocKeys, Identity, Rng, verify_envelope};
use mycel_core::id::DocId;
use mycel_core::wire::{Envelope, EnvelopeKind};

const PLAINTEXT: &[u8] = b"an automerge change";

fn keys() -> DocKeys {
    DocKeys::new(DocId([1; 16]), DocKey::from_bytes([2; 32]))
}

/// A valid envelope that `keys()` opens.
fn valid() -> &'static Envelope {
    static VALID: OnceLock<Envelope> = OnceLock::new();
    VALID.get_or_init(|| {
        let mut rng = Rng::from_seed([3; 32]);
        let author = Identity::generate(&mut rng);
        keys()
            .seal(&author, EnvelopeKind::Change, 1, PLAINTEXT, &mut rng)
            .expect("sealing a small change")
    })
}

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary bytes.
    if let Ok(env) = Envelope::decode(data) {
        let _ = verify_envelope(&env);
        let mut keys = keys();
        let _ = keys.open(&env);
        let _ = keys.decrypt_verified(&env);
    }

    // 2. A valid envelope damaged by the input, read as (position, xor)
    //    triples: random bytes rarely get past the room and signature
    //    checks, this reaches the code behind them.
    let original = valid();
    let mut bytes = original.bytes().to_vec();
    for c in data.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([c[0], c[1]])) % bytes.len();
        bytes[at] ^= c[2];
    }
    if let Ok(env) = Envelope::decode(&bytes) {
        let mut keys = keys();
        let opened = keys.open(&env);
        if bytes == original.bytes() {
            assert_eq!(opened.as_deref(), Ok(PLAINTEXT));
        } else if let Ok(plaintext) = opened {
            // Only a re-framing of the very same signed parts may open.
            assert_eq!(env.header_bytes(), original.header_bytes());
            assert_eq!(env.body(), original.body());
            assert_eq!(env.signature(), original.signature());
            assert_eq!(plaintext, PLAINTEXT);
        }
        let _ = keys.decrypt_verified(&env);
    }
});
