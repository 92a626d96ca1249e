//! The harness of the end-to-end tests: every helper that more than one
//! test file needs is defined here, once; a helper only one file needs
//! stays in that file.
//!
//! - `process`: running the binary and real tools, time limits, signals,
//!   another user (`setpriv`), loopback ports
//! - `repo`: [`Repo`], a repository driven through the binary, and the
//!   commands run on it with their `--json` answers parsed
//! - `json`: typed accessors for those answers
//! - `tree`: temporary directories, seeded random data, metadata setters,
//!   sparse files, walking a tree
//! - `fixture`: the tree with every kind of entry a backup must keep
//! - `compare`: trees compared with rsync and a metadata walk, round trips
//! - `work`: a changing source with frozen copies of each snapshot's state
//! - `mount`: the [`Mount`] guard, the mount table, fusermount3, a
//!   [`PausedReader`] holding a file open, [`Tmpfs`]
//! - `kill`: SIGKILL at random moments ([`Killer`])
//! - `sshd`: a real sshd on loopback ([`Sshd`])
//! - `serve`: `snapfs serve` spoken to directly by a test playing its
//!   client ([`ServeProcess`])
//! - `garage`: a real three-node Garage cluster on loopback ([`Garage`])
//! - `fault_proxy`: an HTTP proxy in front of one S3 endpoint that drops
//!   connections, answers 503 or 403, or delays, by a seeded policy
//!   ([`FaultProxy`])
//! - `catalog`: the catalog read and edited with python3's sqlite3
//! - `craft`: packs, blobs, trees and records crafted or damaged by hand
//!
//! Everything is re-exported: a test file says `use crate::util::*;`.

mod catalog;
mod compare;
mod craft;
mod fault_proxy;
mod fixture;
mod garage;
mod json;
mod kill;
mod mount;
mod process;
mod repo;
mod serve;
mod sshd;
mod tree;
mod work;

pub(crate) use catalog::*;
pub(crate) use compare::*;
pub(crate) use craft::*;
pub(crate) use fault_proxy::*;
pub(crate) use fixture::*;
pub(crate) use garage::*;
pub(crate) use json::*;
pub(crate) use kill::*;
pub(crate) use mount::*;
pub(crate) use process::*;
pub(crate) use repo::*;
pub(crate) use serve::*;
pub(crate) use sshd::*;
pub(crate) use tree::*;
pub(crate) use work::*;

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * KIB;
pub(crate) const GIB: u64 = 1024 * MIB;
