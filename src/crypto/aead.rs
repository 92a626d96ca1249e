//! Sealing with XChaCha20-Poly1305: `nonce[24] ‖ ciphertext ‖ tag[16]`.
//!
//! The nonce is 24 random bytes for every seal. With 192-bit nonces random
//! ones never repeat in practice (a collision is expected after about 2^96
//! seals under one key), so no counter has to be kept, persisted or shared
//! between processes that write with the same key.
//!
//! Callers bind what a sealed object is (its id, its kind, the repository)
//! into the associated data: a sealed object copied to another place then
//! fails to open instead of being read as something else.

use std::fmt;

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Bytes of the random nonce in front of every sealed object.
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// What sealing adds to the plaintext's length.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A 32-byte secret key: an AEAD key, or a BLAKE3 key for keyed hashing.
///
/// Wiped when dropped. `Debug` shows no byte of it, so a key inside a
/// struct that is logged or shown in a panic message stays secret.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; Key::LEN]>);

impl Key {
    pub const LEN: usize = 32;

    /// A key of these bytes. The caller's copy is its own to wipe; keys
    /// made here (random, derived, unwrapped) never leave one behind.
    pub fn from_bytes(bytes: [u8; Key::LEN]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// A fresh random key.
    pub fn random() -> Result<Key> {
        let mut k = Key(Zeroizing::new([0; Key::LEN]));
        super::random_bytes(&mut k.0[..])?;
        Ok(k)
    }

    /// The key's bytes, for a keyed BLAKE3 hash or a key derivation.
    pub fn as_bytes(&self) -> &[u8; Key::LEN] {
        &self.0
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8; Key::LEN] {
        &mut self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.as_bytes().into())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Append `nonce ‖ ciphertext ‖ tag` of `plaintext` to `out`.
///
/// The plaintext is copied once, into `out`, and encrypted there: nothing
/// else is allocated. On an error `out` is left as it was (no plaintext is
/// left behind in it).
pub fn seal_into(key: &Key, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let total = plaintext
        .len()
        .checked_add(OVERHEAD)
        .ok_or_else(|| Error::invalid("too large to seal"))?;
    let mut nonce = [0u8; NONCE_LEN];
    super::random_bytes(&mut nonce)?;
    out.reserve(total);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let body = start + NONCE_LEN;
    match key
        .cipher()
        .encrypt_inout_detached((&nonce).into(), aad, (&mut out[body..]).into())
    {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(Error::invalid(format!(
                "cannot seal {} bytes (more than XChaCha20-Poly1305 takes in one message)",
                plaintext.len()
            )))
        }
    }
}

/// The plaintext of a sealed object, if it authenticates under `key` and
/// `aad`. See [`open_into`].
pub fn open(key: &Key, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_into(key, aad, sealed, &mut out)?;
    Ok(out)
}

/// Append the plaintext of a sealed object to `out`.
///
/// The tag is checked before anything is decrypted; a failure (a damaged
/// or truncated object, another key, other associated data) is
/// [`Error::Corrupt`] and leaves `out` as it was. The message does not name
/// the object: the caller adds what it was opening. With enough capacity
/// reserved in `out`, nothing is allocated (so a caller unwrapping a key
/// into a `Zeroizing` buffer leaves no copy behind).
/// Open `sealed` into `out`, which must be exactly as long as its
/// plaintext: a reader decrypts straight into the buffer it returns. On an
/// error `out` holds no plaintext that did not authenticate (it is zeroed).
pub fn open_to(key: &Key, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<()> {
    let body_len = sealed
        .len()
        .checked_sub(OVERHEAD)
        .filter(|n| *n == out.len());
    let Some(body_len) = body_len else {
        return Err(Error::corrupt(format!(
            "sealed object of {} bytes does not hold {} bytes of plaintext: it does not authenticate",
            sealed.len(),
            out.len()
        )));
    };
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(body_len);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let tag: &[u8; TAG_LEN] = tag.try_into().expect("TAG_LEN bytes remain");
    let buf = InOutBuf::new(body, out).expect("output sized to the input");
    if key
        .cipher()
        .decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
        .is_err()
    {
        out.fill(0);
        return Err(Error::corrupt(
            "sealed object does not authenticate (wrong key, or damaged)",
        ));
    }
    Ok(())
}

pub fn open_into(key: &Key, aad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let Some(body_len) = sealed.len().checked_sub(OVERHEAD) else {
        return Err(Error::corrupt(format!(
            "sealed object of {} bytes is shorter than a nonce and a tag ({OVERHEAD} bytes): it does not authenticate",
            sealed.len()
        )));
    };
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(body_len);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let tag: &[u8; TAG_LEN] = tag.try_into().expect("TAG_LEN bytes remain");
    let start = out.len();
    out.resize(start + body_len, 0);
    let buf = InOutBuf::new(body, &mut out[start..]).expect("output sized to the input");
    if key
        .cipher()
        .decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
        .is_err()
    {
        out.truncate(start);
        return Err(Error::corrupt(
            "sealed object does not authenticate (wrong key, or damaged)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; Key::LEN])
    }

    #[test]
    fn sealed_objects_open_to_their_plaintext() {
        let k = key(7);
        for len in [0, 1, 15, 16, 17, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = b"prefix".to_vec();
            seal_into(&k, b"aad", &plain, &mut out).unwrap();
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(out.len(), 6 + len + OVERHEAD);
            assert_eq!(open(&k, b"aad", &out[6..]).unwrap(), plain);
            let mut back = b"kept".to_vec();
            open_into(&k, b"aad", &out[6..], &mut back).unwrap();
            assert_eq!(&back[..4], b"kept");
            assert_eq!(&back[4..], &plain[..]);
        }
    }

    #[test]
    fn every_seal_takes_a_new_nonce() {
        let k = key(1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        seal_into(&k, b"", b"same", &mut a).unwrap();
        seal_into(&k, b"", b"same", &mut b).unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    /// The layout is `nonce ‖ ciphertext ‖ tag` of XChaCha20-Poly1305 as
    /// draft-irtf-cfrg-xchacha defines it (its AEAD test vector): other
    /// tools can open what snapfs seals.
    #[test]
    fn opens_the_xchacha20_poly1305_draft_vector() {
        let k = Key::from_bytes(
            unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .try_into()
                .unwrap(),
        );
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let sealed = unhex(
            "404142434445464748494a4b4c4d4e4f5051525354555657
             bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
             21f9664c97637da9768812f615c68b13b52e
             c0875924c1c7987947deafd8780acf49",
        );
        let plain = open(&k, &aad, &sealed).unwrap();
        assert_eq!(
            plain,
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
        );
    }

    #[test]
    fn any_change_makes_a_sealed_object_fail_to_open() {
        let k = key(3);
        let mut sealed = Vec::new();
        seal_into(&k, b"chunk 1", b"secret bytes", &mut sealed).unwrap();
        for i in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                let mut out = b"x".to_vec();
                let e = open_into(&k, b"chunk 1", &bad, &mut out).unwrap_err();
                assert!(matches!(e, Error::Corrupt(_)), "{e}");
                assert!(e.to_string().contains("does not authenticate"), "{e}");
                assert_eq!(out, b"x", "output left as it was");
            }
        }
        assert!(open(&k, b"chunk 2", &sealed).is_err());
        assert!(open(&key(4), b"chunk 1", &sealed).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&k, b"chunk 1", &longer).is_err());
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let k = key(9);
        for len in 0..=OVERHEAD {
            let e = open(&k, b"", &vec![0u8; len]).unwrap_err();
            assert!(e.to_string().contains("does not authenticate"), "{e}");
        }
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        assert_eq!(format!("{:?}", key(0xab)), "Key(..)");
    }
}
