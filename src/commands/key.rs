//! `snapfs key`: the key slots of an encrypted repository — list, add,
//! remove, change a passphrase — and a paper copy of its master key
//! (export, and import into a new slot).
//!
//! Every change holds the writer lock, and adding comes before removing,
//! so a crash leaves at least one slot that opens the repository.

use std::path::Path;

use serde::Serialize;

use crate::crypto::{
    KdfParams, MasterKey, SlotId, create_slot, list_slots, read_another_passphrase, remove_slot,
};
use std::io::IsTerminal;

use crate::error::{Error, IoContext, Result};
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
    Ok(list_slots(&_repo.root)?
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
    let id = new_slot(&repo, &master, new_file)?;
    repo.push_keys(std::slice::from_ref(&id), &[])?;
    Ok(id.to_string())
}

/// Remove slot `id`; never the last one that opens the repository.
pub fn remove(root: &Path, id: &str) -> Result<()> {
    let id: SlotId = id
        .parse()
        .map_err(|_| Error::invalid(format!("{id:?} is not a key slot id (16 hex digits)")))?;
    let (repo, _, _) = Repository::open_with_master(root)?;
    let _lock = repo.lock("key remove")?;
    remove_slot(&repo.root, &id)?;
    repo.push_keys(&[], &[id])
}

/// Replace the passphrase of the slot that opened the repository: a new
/// slot first, then the old one removed. Returns the new slot's id.
pub fn passwd(root: &Path, new_file: Option<&Path>) -> Result<String> {
    let (repo, master, old) = Repository::open_with_master(root)?;
    let _lock = repo.lock("key passwd")?;
    let id = new_slot(&repo, &master, new_file)?;
    repo.push_keys(std::slice::from_ref(&id), &[])?;
    remove_slot(&repo.root, &old)?;
    repo.push_keys(&[], &[old])?;
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

/// The paper copy of the master key (opening the repository proves the
/// passphrase), written to `output` (created, 0600, never replacing a
/// file) or else to standard output if that is a terminal: a key piped on
/// would end up in logs and scrollback files without anyone deciding so.
pub fn export(root: &Path, output: Option<&Path>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (repo, master, _) = Repository::open_with_master(root)?;
    let id = repo
        .config
        .id
        .ok_or_else(|| Error::invalid("the repository has no id"))?;
    let text = crate::crypto::paper::export(&master, &id.0);
    match output {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .at(path)?;
            f.write_all(text.as_bytes()).at(path)?;
            f.sync_all().at(path)
        }
        None => {
            if !std::io::stdout().is_terminal() {
                return Err(Error::invalid(
                    "standard output is not a terminal: give --output FILE for the key",
                ));
            }
            print!("{}", *text);
            Ok(())
        }
    }
}

/// A new key slot from a paper copy of the master key (read from `input`,
/// else standard input), with a new passphrase: no current passphrase is
/// needed, which is the point. The key is proved to be the repository's by
/// opening a pack's sealed table with it (a repository with no pack yet
/// holds nothing to lose).
pub fn import(root: &Path, input: Option<&Path>, new_file: Option<&Path>) -> Result<String> {
    use std::io::Read;
    let place = crate::repo::bucket::opened(root)?;
    let config = crate::repo::read_config(&place.root)?;
    let id = config
        .id
        .filter(|_| config.encryption != crate::repo::Encryption::None)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} is not encrypted: it has no key",
                root.display()
            ))
        })?;
    crate::crypto::keep_out_of_dumps();
    let mut text = zeroize::Zeroizing::new(String::new());
    match input {
        Some(path) => {
            std::fs::File::open(path)
                .at(path)?
                .take(64 << 10)
                .read_to_string(&mut text)
                .at(path)?;
        }
        None => {
            std::io::stdin()
                .take(64 << 10)
                .read_to_string(&mut text)
                .at("<stdin>")?;
        }
    }
    let master = crate::crypto::paper::import(&text, &id.0)?;
    let repo = Repository::open_with_key(root, &master)?;
    let _lock = repo.lock("key import")?;
    prove_key(&repo)?;
    let id = new_slot(&repo, &master, new_file)?;
    repo.push_keys(std::slice::from_ref(&id), &[])?;
    Ok(id.to_string())
}

/// That the key `repo` was opened with is its own: some pack's sealed
/// table opens with it. Any pack will do, not the first listed: one
/// damaged pack, or a file planted in `packs/`, must not make the right
/// key look wrong when it is the last way to the data.
fn prove_key(repo: &Repository) -> Result<()> {
    let packs = repo.backend.list()?;
    let mut first_error = None;
    for pack in &packs {
        match repo.read_pack_table(pack) {
            Ok(_) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert_with(|| format!("pack {pack}: {}", e.detail()));
            }
        }
    }
    match first_error {
        // No pack yet: nothing to lose, nothing to prove it against.
        None => Ok(()),
        Some(first) => Err(Error::invalid(format!(
            "the paper key opens none of the {} packs of {}: it is not this repository's key, \
             or every pack is damaged (the first: {first})",
            packs.len(),
            repo.location()
        ))),
    }
}
