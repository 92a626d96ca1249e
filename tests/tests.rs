//! End-to-end tests of the `snapfs` binary: one integration test binary
//! (see `Cargo.toml`), split by concern.
//!
//! - `util/`: the harness, every shared helper defined once: running the
//!   binary and tools (`process`), the [`Repo`](util::Repo) fixture and
//!   its commands (`repo`, `json`), tree builders (`tree`, `fixture`),
//!   comparators (`compare`, `work`), the mount guard and tmpfs (`mount`),
//!   the kill-at-every-moment loop (`kill`), a loopback sshd (`sshd`), the
//!   catalog seen from outside (`catalog`) and crafted or damaged
//!   repository bytes (`craft`); see its module doc
//! - `ingest`: round trips, deduplication, incremental ingest, the CLI contract
//! - `sparse`: sparse files found by SEEK_DATA/SEEK_HOLE, kept sparse on the way out
//! - `faults`: bad input, full disks, kills and concurrent writers
//! - `mount`: the FUSE mount read with real tools, real mounts
//! - `history`: the mount's history/ view, log, find, GMT names and Samba
//! - `everyday`: diff, stats, the change alarm, JSON shapes, snapshot
//!   references, progress, completions, man pages, systemd units
//! - `copy`: off-site copies to a second repository, locally and over ssh
//! - `maintenance`: forget, gc, verify and rebuild-catalog on real repositories
//! - `rebuild`: rebuild-catalog never leaves a worse catalog than it found
//! - `damage`: a damaged catalog or tree named in every error
//! - `readers`: reader leases that gc honours, open files held by the mount
//! - `security_*`: what a hostile local user, repository or copy peer tries:
//!   `security_local` (repository privacy, locks, the mount), `security_restore`,
//!   `security_format` (damaged and crafted bytes), `security_copy` (the receiver)
//! - `object_storage*`: repositories in a bucket of a real Garage cluster;
//!   `object_storage_faults`: over a link that drops, refuses and delays
//!   requests (a fault-injecting proxy), nodes killed mid-transfer
//! - `ssh_store`: repositories at ssh://, the keyless `serve` behind them,
//!   hostile clients and servers
//!
//! A helper used by one file lives in that file; one used by two moves to
//! `util/`.

mod util;

mod attack_format2;
mod attack_upgrade;
mod catalog_format;
mod copy;
mod damage;
mod encryption;
mod everyday;
mod faults;
mod format_doc;
mod history;
mod ingest;
mod layers;
mod maintenance;
mod mount;
mod object_storage;
mod object_storage_faults;
mod object_storage_reads;
mod readers;
mod rebuild;
mod security_copy;
mod security_format;
mod security_local;
mod security_restore;
mod sparse;
mod ssh_store;
mod upgrade;
