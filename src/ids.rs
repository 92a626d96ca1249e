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
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() != 64 {
            return Err(Error::invalid(format!("not a 64-digit hex id: {s:?}")));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::invalid(format!("not a hex id: {s:?}")))?;
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
    }
}
