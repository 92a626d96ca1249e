//! Repositories reached over ssh (`--repo ssh://[user@]host[:port]/path`):
//! `snapfs serve` on the far side keeps the repository's objects as files
//! and holds no key ([`serve`]); this side reaches it through
//! [`SshStore`], an [`ObjectStore`](super::store::ObjectStore) like a
//! bucket, so everything else (the local state directory, the catalog,
//! encryption) is what an `s3://` repository has.
//!
//! - `wire`: frames, ssh destinations, the store requests and the object
//!   names either side accepts
//! - `serve`: the keyless far side, on a directory
//! - `client`: the near side, a small pool of ssh connections

mod client;
pub mod serve;
pub mod wire;

pub use client::{SshStore, set_programs};
