//! Repositories in S3-compatible object storage (AWS S3, Garage, Ceph RGW,
//! MinIO, SeaweedFS): where the bucket is and how to sign for it
//! ([`settings`]), a small synchronous client that retries and moves
//! between a cluster's endpoints ([`client`]), and packs kept as objects
//! under `PREFIX/packs/` ([`S3Packs`]).
//!
//! Pack names are the BLAKE3 of their bytes, so a PUT repeated by a
//! retry, or by two hosts storing the same pack, writes the same object:
//! nothing relies on a conditional PUT (Garage has none).

pub mod client;
pub mod settings;
pub mod throttle;

use std::path::Path;

pub use client::S3Client;
pub use settings::{S3Location, S3Settings};

use crate::error::{Error, IoContext, Result};
use crate::ids::PackName;
use crate::repo::backend::Backend;

/// Packs as objects `PREFIX/packs/<first two hex digits>/<hex>.pack`, the
/// layout of a local repository's `packs/` directory.
pub struct S3Packs {
    client: std::sync::Arc<S3Client>,
}

impl S3Packs {
    pub fn new(client: std::sync::Arc<S3Client>) -> S3Packs {
        S3Packs { client }
    }

    fn name_of(pack: &PackName) -> String {
        let hex = pack.0.to_hex();
        format!("packs/{}/{hex}.pack", &hex[..2])
    }
}

impl Backend for S3Packs {
    fn put(&self, name: &PackName, local: &Path) -> Result<()> {
        let bytes = std::fs::read(local).at(local)?;
        self.client.put(&Self::name_of(name), &bytes)?;
        // The local copy was only the way there.
        std::fs::remove_file(local).at(local)
    }

    fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.client.get_range(&Self::name_of(name), offset, len)
    }

    fn size(&self, name: &PackName) -> Result<u64> {
        let key = Self::name_of(name);
        self.client.head(&key)?.ok_or_else(|| Error::Io {
            path: self.client.shown(&key).into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// Every object named like a pack in its right place; anything else
    /// under `packs/` is named in a warning and skipped.
    fn list(&self) -> Result<Vec<PackName>> {
        let mut out = Vec::new();
        for (key, _) in self.client.list("packs")? {
            let name = key
                .strip_prefix("packs/")
                .and_then(|k| k.split_once('/'))
                .and_then(|(dir, file)| {
                    let n = file.strip_suffix(".pack")?.parse::<PackName>().ok()?;
                    (Self::name_of(&n) == format!("packs/{dir}/{file}")).then_some(n)
                });
            match name {
                Some(n) => out.push(n),
                None => log::warn!("ignoring {} in the pack prefix", self.client.shown(&key)),
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &PackName) -> Result<()> {
        self.client.delete(&Self::name_of(name))
    }

    /// Four uploads at once: enough to hide a round trip's latency behind
    /// the others, with at most four packs (128 MiB) in memory.
    fn parallel_puts(&self) -> usize {
        4
    }

    /// Sixteen readers: a restore of many small files is one ranged GET
    /// each, and its time is the round trips', not the bytes'.
    fn parallel_reads(&self) -> usize {
        16
    }
}
