//! AES-256-GCM, the one cipher of mycel, behind one type with two
//! backends chosen at build time:
//!
//! - **ring** (feature `ring`, on by default, every target but wasm32):
//!   BoringSSL's assembly with AES-NI/VAES and carry-less multiply, which
//!   encrypts and authenticates in one pass over the data; about 3× the
//!   throughput of the portable backend on x86-64 (2.4 µs vs 7.8 µs for
//!   16 KiB on the reference machine), which is most of the cost of
//!   sealing and opening a large envelope.
//! - **RustCrypto `aes-gcm`** everywhere else (wasm32, `no_std` targets
//!   without ring): pure Rust, two passes (CTR, then GHASH).
//!
//! Both produce the same bytes for the same key, nonce, AAD and plaintext
//! (a test holds them to it), so envelopes sealed by one open with the other.

#[cfg(not(all(feature = "ring", not(target_arch = "wasm32"))))]
use aes_gcm::aead::{AeadInOut, KeyInit};

/// Why an AEAD operation failed: on open, the key, nonce, AAD, ciphertext
/// or tag do not match; on seal, the plaintext is beyond what GCM allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadError;

/// An expanded AES-256-GCM key (the round keys and the GHASH key), kept
/// because expansion costs more than sealing a keystroke.
#[derive(Clone)]
pub struct GcmKey {
    #[cfg(all(feature = "ring", not(target_arch = "wasm32")))]
    inner: ring::aead::LessSafeKey,
    #[cfg(not(all(feature = "ring", not(target_arch = "wasm32"))))]
    inner: aes_gcm::Aes256Gcm,
}

impl core::fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("GcmKey(..)")
    }
}

impl GcmKey {
    /// Expands a 256-bit key.
    pub fn new(key: &[u8; 32]) -> Self {
        #[cfg(all(feature = "ring", not(target_arch = "wasm32")))]
        let inner = ring::aead::LessSafeKey::new(
            // A 32-byte key is always accepted by AES_256_GCM.
            match ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key) {
                Ok(k) => k,
                Err(_) => unreachable!("AES-256-GCM takes any 32-byte key"),
            },
        );
        #[cfg(not(all(feature = "ring", not(target_arch = "wasm32"))))]
        let inner = aes_gcm::Aes256Gcm::new(&(*key).into());
        Self { inner }
    }

    /// The name of the backend in use, for benchmarks and logs.
    pub fn backend() -> &'static str {
        if cfg!(all(feature = "ring", not(target_arch = "wasm32"))) {
            "ring"
        } else {
            "rustcrypto"
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; 16], AeadError> {
        #[cfg(all(feature = "ring", not(target_arch = "wasm32")))]
        {
            let tag = self
                .inner
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(*nonce),
                    ring::aead::Aad::from(aad),
                    buf,
                )
                .map_err(|_| AeadError)?;
            let mut out = [0u8; 16];
            out.copy_from_slice(tag.as_ref());
            Ok(out)
        }
        #[cfg(not(all(feature = "ring", not(target_arch = "wasm32"))))]
        {
            let tag = self
                .inner
                .encrypt_inout_detached(&(*nonce).into(), aad, buf.into())
                .map_err(|_| AeadError)?;
            Ok(tag.into())
        }
    }

    /// Checks `tag` and decrypts `buf` in place. On failure `buf` holds no
    /// plaintext the caller may use.
    pub fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), AeadError> {
        #[cfg(all(feature = "ring", not(target_arch = "wasm32")))]
        {
            self.inner
                .open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(*nonce),
                    ring::aead::Aad::from(aad),
                    ring::aead::Tag::from(*tag),
                    buf,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| AeadError)
        }
        #[cfg(not(all(feature = "ring", not(target_arch = "wasm32"))))]
        {
            self.inner
                .decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &(*tag).into())
                .map_err(|_| AeadError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInOut, KeyInit};

    /// The backend in use and the portable one agree byte for byte, and each
    /// opens what the other sealed.
    #[test]
    fn the_backends_agree() {
        let key = [7u8; 32];
        let nonce = [9u8; 12];
        let portable = aes_gcm::Aes256Gcm::new(&key.into());
        let ours = GcmKey::new(&key);
        for len in [0usize, 1, 15, 16, 17, 255, 4096, 16 * 1024 + 3] {
            let plain: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mut a = plain.clone();
            let tag_a = ours.seal_in_place(&nonce, b"header", &mut a).unwrap();
            let mut b = plain.clone();
            let tag_b: [u8; 16] = portable
                .encrypt_inout_detached(&nonce.into(), b"header", b.as_mut_slice().into())
                .unwrap()
                .into();
            assert_eq!((&a, tag_a), (&b, tag_b), "len {len}");
            ours.open_in_place(&nonce, b"header", &mut b, &tag_b)
                .unwrap();
            assert_eq!(b, plain);
            assert_eq!(
                ours.open_in_place(&nonce, b"other", &mut a, &tag_a),
                Err(AeadError)
            );
        }
    }
}
