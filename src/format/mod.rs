//! The on-disk format: what the bytes of a repository mean, byte for byte
//! (docs/FORMAT.md). Encoding and decoding only, over byte slices, readers
//! and writers: nothing here knows the catalog, the repository directory or
//! a command. Users' data depends on these files staying readable by every
//! later release, so a change here is a format change.
//!
//! Public: tests (and anyone writing a reader) build and take apart
//! repository objects with it.

pub mod blob;
pub mod chunker;
pub mod codec;
pub mod keying;
pub mod names;
pub mod pack;
pub mod page;
pub mod record;
pub mod tree;
pub mod v1;
