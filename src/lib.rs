//! # snapfs
//!
//! Deduplicated backups in which every snapshot is a read-only directory.
//!
//! # Layout
//! Folders by layer; each depends only on those listed before it (the
//! layering test, `tests/layers.rs`, checks it):
//! - `error`, `ids`, `time`, `units`: the error type, hash and row-id
//!   newtypes, UTC times, sizes for people — used by every layer
//! - `format`: the on-disk format, byte for byte (chunker, blob frames,
//!   packs, trees, snapshot records, the varint codec, entry names)
//! - `repo`: a repository: its directory, config, writer lock and reader
//!   leases, where packs live (`backend`), the SQLite `catalog`, rows made
//!   from packs (`import`), paths and history across snapshots, snapshot
//!   references (`latest~2`)
//! - `commands`: one module per command (ingest, restore, diff, find, log,
//!   stats, forget, gc, verify, rebuild, copy with its ssh transport)
//! - `mount`: the FUSE mount: process set-up, the adapter, and
//!   `snapshot_fs` (snapshots as directories: namespace, inode numbers,
//!   the data path and its frame cache)
//! - `app`: the program: command-line syntax, one function per command,
//!   what is printed for people or as JSON

pub mod crypto;
pub mod error;
pub mod format;
pub mod ids;
pub(crate) mod time;
pub(crate) mod units;

pub(crate) mod repo;

pub(crate) mod commands;

pub(crate) mod mount;

pub mod app;

pub use error::{Error, Result};

/// The decoders of bytes from outside that live above `format` (the config
/// file, the copy protocol's frames, packs received by a copy): public for
/// the fuzz targets in `fuzz/`, not an interface.
#[doc(hidden)]
pub mod untrusted {
    pub use crate::commands::copy::remote::{Request, decode_request};
    pub use crate::commands::copy::verify_pack;
    pub use crate::repo::Config;
}
