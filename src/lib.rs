//! # snapfs
//!
//! Deduplicated backups in which every snapshot is a read-only directory.
//!
//! # Layout
//! - `cli`: command-line syntax (clap types only); `report`: what commands print;
//!   `progress`: progress bars on a terminal
//! - `error`: the error type and its errno mapping; `ids`: hash and row id newtypes
//! - `tree`: entries, metadata, and the encoded forms of trees and chunk lists
//! - `codec`: the varint encoding of metadata stored in packs
//! - `chunker`: content-defined chunking (FastCDC)
//! - `store`: chunk ids, framed zstd compression, verification
//! - `pack`: the pack file format; `backend`: where packs live
//! - `catalog`: the SQLite catalog (the only module with SQL)
//! - `repo`: a repository on disk: config, lock, catalog, packs
//! - `ingest`: the walk and the chunk→store pipeline
//! - `restore`: snapshots back out to a directory
//! - `forget`, `gc`, `verify`, `rebuild`: retention, space, integrity, recovery
//! - `diff`, `stats`: what changed between snapshots; sizes and ratios
//! - `snapshot_fs`: snapshots as directories (lookup, readdir, read), no FUSE types
//! - `mount`: the thin FUSE adapter over `snapshot_fs`
//! - `snapshot`: snapshot references (`latest~2`, id prefixes)
//! - `time`: UTC timestamps

pub mod backend;
pub mod catalog;
pub mod chunker;
pub mod cli;
pub mod codec;
pub mod copy;
pub mod diff;
pub mod error;
pub mod find;
pub mod forget;
pub mod gc;
pub mod history;
pub mod ids;
pub mod import;
pub mod ingest;
pub mod mount;
pub mod pack;
pub mod progress;
pub mod rebuild;
pub mod remote;
pub mod repo;
pub mod report;
pub mod restore;
pub mod snapshot;
pub mod snapshot_fs;
pub mod stats;
pub mod store;
pub mod time;
pub mod tree;
pub mod verify;

pub use error::{Error, Result};
