//! Identifiers that cross module boundaries, as newtypes so that a chunk id is
//! never passed where a tree hash is expected.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A 32-byte BLAKE3 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const LEN: usize = 32;

    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Hash> {
        Some(Hash(b.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl FromStr for Hash {
    type Err = Error;
    /// Works on bytes, never slicing the `str`: a 64-byte name with a
    /// multi-byte character in it (a stray file under `packs/`) once made
    /// slicing panic at a non-character boundary.
    fn from_str(s: &str) -> Result<Self, Error> {
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(Error::invalid(format!("not a 64-digit hex id: {s:?}")));
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => hi << 4 | lo,
                _ => return Err(Error::invalid(format!("not a hex id: {s:?}"))),
            };
        }
        Ok(Hash(out))
    }
}

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
        pub struct $name(pub Hash);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                s.parse().map($name)
            }
        }
    };
}

hash_newtype!(
    /// Identity of a stored chunk: BLAKE3 over the BLAKE3 digests of its frames
    /// (see `store`), so a single frame can be verified without the whole chunk.
    ChunkId
);
hash_newtype!(
    /// Identity of a file's content: BLAKE3 of its encoded chunk list.
    ContentHash
);
hash_newtype!(
    /// Identity of a directory tree: the chunk id of its encoded form.
    TreeHash
);
hash_newtype!(
    /// Name of a pack file: BLAKE3 of the whole file.
    PackName
);

/// Catalog row id of a snapshot; also the high bits of the mount's inode numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SnapshotId(pub i64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Catalog row id of a tree.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TreeId(pub i64);

/// Catalog row id of a file content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ContentId(pub i64);

/// Catalog row id of a pack.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PackId(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let h = Hash::of(b"snapfs");
        let back: Hash = h.to_hex().parse().expect("valid hex");
        assert_eq!(h, back);
        assert!("zz".parse::<Hash>().is_err());
        assert_eq!(h.to_hex().to_uppercase().parse::<Hash>().unwrap(), h);
    }

    #[test]
    fn non_ascii_64_byte_name_is_an_error_not_a_panic() {
        // 63 bytes of hex and one two-byte character: 65 bytes; one hex
        // digit fewer makes it 64 bytes with a character across a pair.
        let s = format!("{}é{}", "a".repeat(31), "b".repeat(31));
        assert_eq!(s.len(), 64);
        assert!(s.parse::<Hash>().is_err());
        assert!("+1".repeat(32).parse::<Hash>().is_err());
    }
}
