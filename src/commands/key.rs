//! `snapfs key`: the key slots of an encrypted repository — list, add,
//! remove, change a passphrase.
//!
//! Every change holds the writer lock, and adding comes before removing,
//! so a crash leaves at least one slot that opens the repository.

use std::path::Path;

use serde::Serialize;

use crate::crypto::{
    KdfParams, MasterKey, SlotId, create_slot, list_slots, read_another_passphrase, remove_slot,
};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// One key slot as `key list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SlotRow {
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    pub host: String,
    pub kdf: String,
    /// The slot whose passphrase opened the repository for this command.
    pub current: bool,
}

/// The key slots (opening the repository proves the passphrase).
pub fn list(root: &Path) -> Result<Vec<SlotRow>> {
    let (_repo, _master, current) = Repository::open_with_master(root)?;
    Ok(list_slots(root)?
        .into_iter()
        .map(|s| SlotRow {
            current: s.id == current,
            id: s.id.to_string(),
            created: s.created,
            host: s.host,
            kdf: s.params.to_string(),
        })
        .collect())
}

/// A new slot for a new passphrase; returns its id.
pub fn add(root: &Path, new_file: Option<&Path>) -> Result<String> {
    let (repo, master, _) = Repository::open_with_master(root)?;
    let _lock = repo.lock("key add")?;
    Ok(new_slot(&repo, &master, new_file)?.to_string())
}

/// Remove slot `id`; never the last one that opens the repository.
pub fn remove(root: &Path, id: &str) -> Result<()> {
    let id: SlotId = id
        .parse()
        .map_err(|_| Error::invalid(format!("{id:?} is not a key slot id (16 hex digits)")))?;
    let (repo, _, _) = Repository::open_with_master(root)?;
    let _lock = repo.lock("key remove")?;
    remove_slot(root, &id)
}

/// Replace the passphrase of the slot that opened the repository: a new
/// slot first, then the old one removed. Returns the new slot's id.
pub fn passwd(root: &Path, new_file: Option<&Path>) -> Result<String> {
    let (repo, master, old) = Repository::open_with_master(root)?;
    let _lock = repo.lock("key passwd")?;
    let id = new_slot(&repo, &master, new_file)?;
    remove_slot(root, &old)?;
    Ok(id.to_string())
}

/// A slot for a new passphrase (asked for now) wrapping `master`.
fn new_slot(repo: &Repository, master: &MasterKey, new_file: Option<&Path>) -> Result<SlotId> {
    let new = read_another_passphrase(new_file, "new passphrase: ")?;
    let id = repo
        .config
        .id
        .ok_or_else(|| Error::invalid("the repository has no id"))?;
    let params = KdfParams::from_env_or_default()?;
    Ok(create_slot(&repo.root, &id.0, master, &new, params)?.id)
}
