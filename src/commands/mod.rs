//! What the user asks for, one module per command (or family of commands),
//! over the repository layer. Each returns a result type that `app::report`
//! prints for people or as JSON; none parses arguments or prints results.

pub(crate) mod copy;
pub(crate) mod diff;
pub(crate) mod find;
pub(crate) mod forget;
pub(crate) mod gc;
pub(crate) mod ingest;
pub(crate) mod key;
pub(crate) mod log;
pub(crate) mod owners;
pub(crate) mod progress;
pub(crate) mod rebuild;
pub(crate) mod restore;
pub(crate) mod stats;
pub(crate) mod upgrade;
pub(crate) mod verify;
