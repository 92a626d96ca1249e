//! End-to-end tests of the `snapfs` binary: one integration test binary
//! (see `Cargo.toml`), split by concern.
//!
//! - `util`: fixtures (repositories, trees, comparison helpers)
//! - `ingest`: round trips, deduplication, incremental ingest, the CLI contract
//! - `faults`: bad input, full disks, kills and concurrent writers
//! - `mount`: the FUSE mount read with real tools, real mounts
//! - `history`: the mount's history/ view, log, find, GMT names and Samba
//! - `everyday`: diff, stats, the change alarm, JSON shapes, snapshot
//!   references, progress, completions, man pages, systemd units
//! - `copy`: off-site copies to a second repository, locally and over ssh
//! - `maintenance`: forget, gc, verify and rebuild-catalog on real repositories
//! - `readers`: reader leases that gc honours, open files held by the mount
//! - `security_*`: what a hostile local user, repository or copy peer tries:
//!   `security_local` (repository privacy, locks, the mount), `security_restore`,
//!   `security_format` (damaged and crafted bytes), `security_copy` (the receiver)

mod util;

mod copy;
mod damage;
mod everyday;
mod faults;
mod format_doc;
mod history;
mod ingest;
mod maintenance;
mod mount;
mod readers;
mod rebuild;
mod security_copy;
mod security_format;
mod security_local;
mod security_restore;
mod sparse;
