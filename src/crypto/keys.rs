//! The master key, the subkeys derived from it, and the parameters of the
//! passphrase KDF that wraps it (the wrapping itself is [`super::slots`]).
//!
//! A repository has one random master key; every other key is derived from
//! it with `blake3::derive_key` under a fixed context, so one secret is all
//! that is stored, and no two uses share a key.

use std::ffi::OsStr;
use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};

use super::aead::Key;
use crate::error::{Error, Result};

/// `blake3::derive_key` contexts of the subkeys. Changing one changes every
/// id and makes every encrypted repository unreadable: they are pinned by
/// a test.
pub const CONTEXT_ID: &str = "snapfs 2 chunk id";
pub const CONTEXT_BLOB: &str = "snapfs 2 blob seal";
pub const CONTEXT_TABLE: &str = "snapfs 2 pack table seal";
pub const CONTEXT_CHUNKER: &str = "snapfs 2 chunker gear";
pub const CONTEXT_PAGE: &str = "snapfs 2 page boundary";
pub const CONTEXT_CACHE: &str = "snapfs 2 local cache";

/// The environment variable that lowers the Argon2 memory of new slots, for
/// test suites (see [`KdfParams::from_env_or_default`]).
pub const TEST_KDF_MEMORY_ENV: &str = "SNAPFS_TEST_KDF_MEMORY_KIB";

/// The repository's master key: 32 random bytes, wiped when dropped, never
/// shown by `Debug`, never cloned (derive [`Subkeys`] and share those).
pub struct MasterKey(Key);

impl MasterKey {
    /// A new random master key, for a new repository.
    pub fn generate() -> Result<MasterKey> {
        Ok(MasterKey(Key::random()?))
    }

    /// The master key of these bytes (tests, and a key restored from a backup
    /// of it); the caller wipes its own copy.
    pub fn from_bytes(bytes: [u8; Key::LEN]) -> MasterKey {
        MasterKey(Key::from_bytes(bytes))
    }

    /// Every key the repository uses, each derived under its own context so
    /// that no two uses share a key.
    pub fn subkeys(&self) -> Subkeys {
        Subkeys {
            id: self.derive(CONTEXT_ID),
            blob: self.derive(CONTEXT_BLOB),
            table: self.derive(CONTEXT_TABLE),
            chunker: self.derive(CONTEXT_CHUNKER),
            page: self.derive(CONTEXT_PAGE),
            cache: self.derive(CONTEXT_CACHE),
        }
    }

    pub(super) fn key(&self) -> &Key {
        &self.0
    }

    pub(super) fn from_key(key: Key) -> MasterKey {
        MasterKey(key)
    }

    fn derive(&self, context: &str) -> Key {
        let mut k = Key::from_bytes([0; Key::LEN]);
        *k.as_bytes_mut() = blake3::derive_key(context, self.0.as_bytes());
        k
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The keys derived from the master key, one per use.
#[derive(Clone)]
pub struct Subkeys {
    /// BLAKE3 key of keyed chunk ids: an outsider cannot tell whether a
    /// known file is stored.
    pub id: Key,
    /// AEAD key of chunk frames.
    pub blob: Key,
    /// AEAD key of pack tables.
    pub table: Key,
    /// Key of the chunker's gear table (`format::keying`), so chunk
    /// boundaries are secret too: a whole table drawn from it, not a 64-bit
    /// seed mixed into the public one.
    pub chunker: Key,
    /// BLAKE3 key of catalog page boundaries.
    pub page: Key,
    /// Key that names the catalog's local cache directory (`Keying::cache_tag`).
    pub cache: Key,
}

impl fmt::Debug for Subkeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subkeys(..)")
    }
}

/// Argon2id parameters of a key slot: memory in KiB, passes, lanes.
#[derive(Clone, Copy, Debug)]
pub struct KdfParams {
    m_kib: u32,
    t: u32,
    p: u32,
    origin: Origin,
}

/// Where parameters came from, which decides whether a new slot may use
/// them: a slot read from disk may have less memory than a new one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Checked against the floor of new slots.
    Checked,
    /// Below the floor on purpose: a test suite asked for it.
    Test,
    /// Read from a slot file: checked only against the bounds of reading.
    Slot,
}

impl KdfParams {
    /// 64 MiB and 3 passes, the memory and passes of the second
    /// recommended option of RFC 9106 (section 4), about 0.15 s of one
    /// core. One lane, not four: without the argon2 crate's `parallel`
    /// feature lanes run one after another, and more of them buy nothing.
    pub const DEFAULT_M_KIB: u32 = 64 << 10;
    pub const DEFAULT_T: u32 = 3;
    pub const DEFAULT_P: u32 = 1;
    /// Least memory of a new slot: less makes guessing passphrases on
    /// graphics cards cheap.
    pub const MIN_M_KIB: u32 = 64 << 10;
    /// Least memory of a slot read from disk (slots made by test suites).
    pub const MIN_READ_M_KIB: u32 = 8 << 10;
    /// Most memory of any slot: what an unlock may be made to allocate.
    pub const MAX_M_KIB: u32 = 4 << 20;
    pub const MAX_T: u32 = 20;
    pub const MAX_P: u32 = 16;

    /// Parameters for a new slot: at least [`Self::MIN_M_KIB`] of memory,
    /// and within the bounds every reader accepts.
    pub fn new(m_kib: u32, t: u32, p: u32) -> Result<KdfParams> {
        check_params(m_kib, t, p, Self::MIN_M_KIB).map_err(Error::invalid)?;
        Ok(KdfParams {
            m_kib,
            t,
            p,
            origin: Origin::Checked,
        })
    }

    /// The default parameters, unless the environment variable
    /// `SNAPFS_TEST_KDF_MEMORY_KIB` sets the memory (in KiB, at least 8192),
    /// which is then used below the floor of new slots, with a warning.
    ///
    /// Why it exists: the integration tests make hundreds of repositories,
    /// each with a slot that every command unlocks; at 64 MiB and 3 passes
    /// an unlock costs about 0.15 s of a core, at 8 MiB a tenth of that.
    /// A variable and not a test-only constructor, because those tests run
    /// the program, which is not built with `cfg(test)`. Slots made with it
    /// are cheap to attack, which is why its name says "test" and every use
    /// is logged.
    pub fn from_env_or_default() -> Result<KdfParams> {
        Self::from_test_memory(std::env::var_os(TEST_KDF_MEMORY_ENV).as_deref())
    }

    /// [`Self::from_env_or_default`] with the variable's value given.
    fn from_test_memory(value: Option<&OsStr>) -> Result<KdfParams> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(KdfParams::default());
        };
        let m_kib = value
            .to_str()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|m| (Self::MIN_READ_M_KIB..=Self::MAX_M_KIB).contains(m))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{TEST_KDF_MEMORY_ENV}={value:?}: not a number of KiB in {}..={}",
                    Self::MIN_READ_M_KIB,
                    Self::MAX_M_KIB
                ))
            })?;
        log::warn!(
            "{TEST_KDF_MEMORY_ENV} is set: new key slots use {m_kib} KiB for Argon2id (the default is {} KiB); meant for test suites only",
            Self::DEFAULT_M_KIB
        );
        Ok(KdfParams {
            m_kib,
            origin: Origin::Test,
            ..KdfParams::default()
        })
    }

    /// The least Argon2 work a slot can be read with: for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> KdfParams {
        KdfParams {
            m_kib: Self::MIN_READ_M_KIB,
            t: 1,
            p: 1,
            origin: Origin::Test,
        }
    }

    pub fn m_kib(&self) -> u32 {
        self.m_kib
    }

    pub fn t(&self) -> u32 {
        self.t
    }

    pub fn p(&self) -> u32 {
        self.p
    }

    /// Parameters read from a slot file, if they are within the bounds of
    /// reading: below them Argon2 is too weak to trust, above them an
    /// unlock could be made to allocate or loop without end.
    pub(super) fn from_slot(m_kib: u32, t: u32, p: u32) -> Result<KdfParams, String> {
        check_params(m_kib, t, p, Self::MIN_READ_M_KIB)?;
        Ok(KdfParams {
            m_kib,
            t,
            p,
            origin: Origin::Slot,
        })
    }

    /// Whether a new slot may use these parameters: parameters read from a
    /// slot may be below the floor of new ones (a slot made by a test suite).
    pub(super) fn check_for_new_slot(&self) -> Result<()> {
        let floor = match self.origin {
            Origin::Test => Self::MIN_READ_M_KIB,
            Origin::Checked | Origin::Slot => Self::MIN_M_KIB,
        };
        check_params(self.m_kib, self.t, self.p, floor)
            .map_err(|why| Error::invalid(format!("a new key slot cannot use {self}: {why}")))
    }

    /// The key-encryption key of `passphrase` and `salt`: one Argon2id run.
    pub(super) fn kek(&self, passphrase: &[u8], salt: &[u8]) -> Result<Key> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(Key::LEN))
            .map_err(|e| Error::invalid(format!("Argon2id refuses {self}: {e}")))?;
        let mut kek = Key::from_bytes([0; Key::LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, kek.as_bytes_mut())
            .map_err(|e| Error::invalid(format!("Argon2id ({self}) failed: {e}")))?;
        Ok(kek)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_kib: Self::DEFAULT_M_KIB,
            t: Self::DEFAULT_T,
            p: Self::DEFAULT_P,
            origin: Origin::Checked,
        }
    }
}

impl PartialEq for KdfParams {
    fn eq(&self, other: &Self) -> bool {
        (self.m_kib, self.t, self.p) == (other.m_kib, other.t, other.p)
    }
}

impl Eq for KdfParams {}

impl fmt::Display for KdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} KiB, t={}, p={}", self.m_kib, self.t, self.p)
    }
}

/// Why Argon2 parameters are out of bounds, if they are.
fn check_params(m_kib: u32, t: u32, p: u32, min_m_kib: u32) -> Result<(), String> {
    let max_m = KdfParams::MAX_M_KIB;
    if !(min_m_kib..=max_m).contains(&m_kib) {
        return Err(format!(
            "Argon2 memory of {m_kib} KiB is outside {min_m_kib}..={max_m} KiB"
        ));
    }
    if !(1..=KdfParams::MAX_T).contains(&t) {
        return Err(format!(
            "Argon2 passes t={t} is outside 1..={}",
            KdfParams::MAX_T
        ));
    }
    if !(1..=KdfParams::MAX_P).contains(&p) {
        return Err(format!(
            "Argon2 lanes p={p} is outside 1..={}",
            KdfParams::MAX_P
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample() -> MasterKey {
        let mut b = [0u8; Key::LEN];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        MasterKey::from_bytes(b)
    }

    /// The subkeys of one master key, byte for byte: a change to a context
    /// fails here before it makes
    /// every encrypted repository unreadable.
    #[test]
    fn subkeys_are_pinned() {
        let s = sample().subkeys();
        let pinned = [
            (
                "id",
                &s.id,
                "1038ebe5c09b5915ffc93f52573ae69df560225b92d864ce74d111b4c9ff2de0",
            ),
            (
                "blob",
                &s.blob,
                "780ccb63e8baa4cbdb7b229a03e4c70f149152d17be3d78c1cfb605fc2d2c1af",
            ),
            (
                "table",
                &s.table,
                "8901d2878efc8ef5508c4f658f0afd5d7f25f0ed57dd6a7db0ac63478cd7c2be",
            ),
            (
                "page",
                &s.page,
                "d8b154d952d50e88bd7d3314d1be8ba4db247bb8e2e9fd3e371fb44bda545fb4",
            ),
            (
                "cache",
                &s.cache,
                "e569a27b436c371bd21359f02dba9812811a2089374207dcf158d8f69c6f4b59",
            ),
        ];
        for (name, key, want) in pinned {
            assert_eq!(hex(key.as_bytes()), want, "{name}");
        }
        assert_eq!(
            hex(s.chunker.as_bytes()),
            "7f949a9b39b76059d22fb54ec4a6deb88e0f067c8887e659a998f9874445bd11",
            "chunker"
        );
    }

    #[test]
    fn subkeys_use_the_documented_contexts() {
        let m = sample();
        let s = m.subkeys();
        let derive = |c| blake3::derive_key(c, m.key().as_bytes());
        assert_eq!(s.id.as_bytes(), &derive("snapfs 2 chunk id"));
        assert_eq!(s.blob.as_bytes(), &derive("snapfs 2 blob seal"));
        assert_eq!(s.table.as_bytes(), &derive("snapfs 2 pack table seal"));
        assert_eq!(s.page.as_bytes(), &derive("snapfs 2 page boundary"));
        assert_eq!(s.cache.as_bytes(), &derive("snapfs 2 local cache"));
        assert_eq!(s.chunker.as_bytes(), &derive("snapfs 2 chunker gear"));
        let all = [&s.id, &s.blob, &s.table, &s.page, &s.cache, &s.chunker];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a.as_bytes(), m.key().as_bytes());
            for b in &all[i + 1..] {
                assert_ne!(a.as_bytes(), b.as_bytes());
            }
        }
    }

    #[test]
    fn generated_master_keys_differ() {
        let (a, b) = (
            MasterKey::generate().unwrap(),
            MasterKey::generate().unwrap(),
        );
        assert_ne!(a.key().as_bytes(), b.key().as_bytes());
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let m = sample();
        assert_eq!(format!("{m:?}"), "MasterKey(..)");
        assert_eq!(format!("{:?}", m.subkeys()), "Subkeys(..)");
    }

    /// Argon2id with these parameters, pinned: swapping `t` and `p`, or
    /// another algorithm or version, would lock out every existing slot.
    #[test]
    fn the_kek_is_pinned() {
        let kek = KdfParams::for_tests()
            .kek(b"correct horse", &[7u8; 32])
            .unwrap();
        assert_eq!(
            hex(kek.as_bytes()),
            "2cf71d8514908c1853dc2a8e6701f6f3419bae859a6cab7099f60414f83250a9"
        );
        let p2 = KdfParams {
            t: 2,
            ..KdfParams::for_tests()
        };
        assert_ne!(
            p2.kek(b"correct horse", &[7u8; 32]).unwrap().as_bytes(),
            kek.as_bytes()
        );
    }

    #[test]
    fn new_slots_need_the_memory_floor() {
        assert_eq!(KdfParams::default(), KdfParams::new(65536, 3, 1).unwrap());
        assert!(KdfParams::default().check_for_new_slot().is_ok());
        for (m, t, p) in [
            (65535, 3, 1),
            (8192, 3, 1),
            (KdfParams::MAX_M_KIB + 1, 3, 1),
            (65536, 0, 1),
            (65536, 21, 1),
            (65536, 3, 0),
            (65536, 3, 17),
        ] {
            let e = KdfParams::new(m, t, p).unwrap_err().to_string();
            assert!(e.contains("outside"), "{m} {t} {p}: {e}");
        }
        // Read from a slot made by a test suite: readable, but no template
        // for a new slot.
        let read = KdfParams::from_slot(8192, 1, 1).unwrap();
        assert!(read.check_for_new_slot().is_err());
        assert!(KdfParams::for_tests().check_for_new_slot().is_ok());
    }

    #[test]
    fn slots_from_disk_are_bounded_before_argon2_runs() {
        for (m, t, p) in [
            (8191, 1, 1),
            (u32::MAX, 1, 1),
            (100 << 20, 1, 1),
            (8192, 0, 1),
            (8192, u32::MAX, 1),
            (8192, 1, 0),
            (8192, 1, 0xFF_FFFF),
        ] {
            assert!(KdfParams::from_slot(m, t, p).is_err(), "{m} {t} {p}");
        }
        assert!(KdfParams::from_slot(KdfParams::MAX_M_KIB, 20, 16).is_ok());
    }

    #[test]
    fn the_test_variable_lowers_memory_only_when_set() {
        let from = |v: Option<&str>| KdfParams::from_test_memory(v.map(OsStr::new));
        assert_eq!(from(None).unwrap(), KdfParams::default());
        assert_eq!(from(Some("")).unwrap(), KdfParams::default());
        let low = from(Some("8192")).unwrap();
        assert_eq!((low.m_kib(), low.t(), low.p()), (8192, 3, 1));
        assert!(low.check_for_new_slot().is_ok());
        for bad in ["8191", "0", "-1", "64M", "99999999999", " 8192"] {
            let e = from(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(TEST_KDF_MEMORY_ENV), "{bad}: {e}");
        }
    }
}
