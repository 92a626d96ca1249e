//! Key slots: the master key wrapped under passphrases, one small file
//! each, `keys/<id>.key`.
//!
//! Several slots are several passphrases for the same data; changing a
//! passphrase rewrites one small file and no pack.
//!
//! ```text
//! keys/<id>.key   {"version": 1, "id": "<16 hex>", "created": <unix s>, "host": "...",
//!                  "kdf": "argon2id", "m_kib": 65536, "t": 3, "p": 1,
//!                  "salt": "<32 bytes, hex>", "wrapped": "<72 bytes, hex>"}
//! wrapped   = nonce ‖ XChaCha20-Poly1305(KEK, AAD, master key) ‖ tag
//! KEK       = Argon2id v19 (passphrase, salt, m_kib, t, p) → 32 bytes
//! AAD       = "snapfs key slot v1" ‖ repository id ‖ slot id
//! ```
//!
//! A slot file is input from disk like any other: its Argon2 parameters are
//! bounded before Argon2 runs, so a hostile slot can make an unlock cost at
//! most 4 GiB and 20 passes, never 100 GB or hours.
//!
//! Slot changes are not locked here: callers hold the repository's writer
//! lock, so that two removals cannot together leave no slot.

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::aead::{self, Key, OVERHEAD};
use super::keys::{KdfParams, MasterKey};
use super::random_bytes;
use crate::error::{Error, IoContext, Result};

/// The folder of the key slots, under the repository's root.
pub const KEYS_DIR: &str = "keys";

const SLOT_FORMAT: u32 = 1;
const SLOT_EXT: &str = "key";
const AAD_PREFIX: &[u8] = b"snapfs key slot v1";
const KDF_NAME: &str = "argon2id";
const SALT_LEN: usize = 32;
const WRAPPED_LEN: usize = Key::LEN + OVERHEAD;
/// A slot file is about 450 bytes; anything much larger is not one, and is
/// not read whole.
const MAX_SLOT_FILE: u64 = 8 << 10;
/// Longest `host` kept in a slot (a Linux host name is at most 64 bytes).
const MAX_HOST: usize = 255;
/// Most entries in `keys/`: a repository has a few slots, and each one
/// read costs an unlock up to one Argon2 run of the largest size allowed.
const MAX_SLOTS: usize = 64;

/// A key slot's name: 16 lowercase hex digits, random, also its file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(String);

impl SlotId {
    pub const LEN: usize = 16;

    fn generate() -> Result<SlotId> {
        let mut b = [0u8; Self::LEN / 2];
        random_bytes(&mut b)?;
        Ok(SlotId(to_hex(&b)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn file_name(&self) -> String {
        format!("{}.{SLOT_EXT}", self.0)
    }

    /// The id a slot file's name gives, if it is `<id>.key`.
    fn of_file_name(name: &OsStr) -> Option<SlotId> {
        let stem = name
            .as_bytes()
            .strip_suffix(format!(".{SLOT_EXT}").as_bytes())?;
        std::str::from_utf8(stem).ok()?.parse().ok()
    }
}

impl FromStr for SlotId {
    type Err = Error;

    fn from_str(s: &str) -> Result<SlotId> {
        if s.len() == Self::LEN && s.bytes().all(is_lower_hex) {
            Ok(SlotId(s.to_string()))
        } else {
            Err(Error::invalid(format!(
                "not a key slot id (16 lowercase hex digits): {s:?}"
            )))
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key slot says about itself: nothing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub id: SlotId,
    /// Unix seconds of its creation.
    pub created: i64,
    /// The host it was made on: informational, for telling slots apart.
    pub host: String,
    pub params: KdfParams,
}

/// A key slot: its description, and the master key wrapped.
struct Slot {
    info: SlotInfo,
    salt: [u8; SALT_LEN],
    wrapped: [u8; WRAPPED_LEN],
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The one field every format of slot file has.
#[derive(Deserialize)]
struct SlotVersion {
    version: u32,
}

/// A slot file, field by field, before anything in it is trusted.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotFile {
    version: u32,
    id: String,
    created: i64,
    host: String,
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    wrapped: String,
}

impl Slot {
    fn encode(&self) -> Vec<u8> {
        let p = self.info.params;
        let file = SlotFile {
            version: SLOT_FORMAT,
            id: self.info.id.to_string(),
            created: self.info.created,
            host: self.info.host.clone(),
            kdf: KDF_NAME.into(),
            m_kib: p.m_kib(),
            t: p.t(),
            p: p.p(),
            salt: to_hex(&self.salt),
            wrapped: to_hex(&self.wrapped),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("strings and numbers serialize");
        out.push(b'\n');
        out
    }

    /// Parse and check a slot file's bytes: every field present, known and
    /// within bounds, binary fields of their exact lengths. The error says
    /// what is wrong, not where (the caller names the file).
    fn decode(bytes: &[u8]) -> Result<Slot> {
        if bytes.len() as u64 > MAX_SLOT_FILE {
            return Err(Error::corrupt(format!(
                "{} bytes, more than a key slot's {MAX_SLOT_FILE}",
                bytes.len()
            )));
        }
        let not_a_slot = |e: serde_json::Error| Error::corrupt(format!("not a key slot: {e}"));
        // The version first, so a slot of a later format says so rather
        // than that its new fields are unknown.
        let v: SlotVersion = serde_json::from_slice(bytes).map_err(not_a_slot)?;
        if v.version != SLOT_FORMAT {
            return Err(Error::corrupt(format!(
                "key slot format {}, this snapfs reads format {SLOT_FORMAT}",
                v.version
            )));
        }
        let f: SlotFile = serde_json::from_slice(bytes).map_err(not_a_slot)?;
        let id: SlotId =
            f.id.parse()
                .map_err(|e: Error| Error::corrupt(e.detail()))?;
        if f.created < 0 {
            return Err(Error::corrupt(format!(
                "creation time {} is before 1970",
                f.created
            )));
        }
        if f.host.len() > MAX_HOST || f.host.chars().any(char::is_control) {
            return Err(Error::corrupt(
                "host is longer than 255 bytes or holds control characters",
            ));
        }
        if f.kdf != KDF_NAME {
            return Err(Error::corrupt(format!(
                "key derivation {:?}, this snapfs knows {KDF_NAME:?}",
                f.kdf
            )));
        }
        let params = KdfParams::from_slot(f.m_kib, f.t, f.p).map_err(Error::corrupt)?;
        Ok(Slot {
            info: SlotInfo {
                id,
                created: f.created,
                host: f.host,
                params,
            },
            salt: from_hex(&f.salt, "salt")?,
            wrapped: from_hex(&f.wrapped, "wrapped")?,
        })
    }

    /// The master key, if `passphrase` opens this slot for this repository;
    /// `None` if not (a wrong passphrase, or a slot changed or moved). An
    /// error only if Argon2 could not run.
    fn open(&self, repo_id: &[u8], passphrase: &str) -> Result<Option<MasterKey>> {
        let kek = self.info.params.kek(passphrase.as_bytes(), &self.salt)?;
        let aad = slot_aad(repo_id, &self.info.id)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        if aead::open_into(&kek, &aad, &self.wrapped, &mut plain).is_err() {
            return Ok(None);
        }
        let bytes: &[u8; Key::LEN] = plain
            .as_slice()
            .try_into()
            .expect("a wrapped key opens to a key");
        let mut master = Key::from_bytes([0; Key::LEN]);
        master.as_bytes_mut().copy_from_slice(bytes);
        Ok(Some(MasterKey::from_key(master)))
    }
}

/// What a slot's seal is bound to: the repository and the slot's own id,
/// so a slot copied to another repository, or renamed, does not open. The
/// id is last and of fixed length, so no two (repository, slot) pairs give
/// the same bytes.
fn slot_aad(repo_id: &[u8], id: &SlotId) -> Result<Vec<u8>> {
    if repo_id.is_empty() {
        return Err(Error::invalid("a key slot needs the repository's id"));
    }
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + repo_id.len() + SlotId::LEN);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(repo_id);
    aad.extend_from_slice(id.as_str().as_bytes());
    Ok(aad)
}

/// Add a key slot: `master` wrapped under `passphrase`, in a new file
/// `keys/<id>.key` (0600, written whole, synced, renamed into place).
///
/// `params` below the floor of new slots are refused unless they come from
/// the test-suite variable ([`KdfParams::from_env_or_default`]).
/// Callers hold the repository's writer lock.
pub fn create_slot(
    root: &Path,
    repo_id: &[u8],
    master: &MasterKey,
    passphrase: &str,
    params: KdfParams,
) -> Result<SlotInfo> {
    params.check_for_new_slot()?;
    if passphrase.is_empty() {
        return Err(Error::invalid("the passphrase is empty"));
    }
    let dir = keys_dir(root);
    if entry_count(&dir)? >= MAX_SLOTS {
        return Err(Error::invalid(format!(
            "{} holds {MAX_SLOTS} entries, as many as a repository may have; remove a key slot first",
            dir.display()
        )));
    }
    let info = SlotInfo {
        id: SlotId::generate()?,
        created: crate::time::now_ns().div_euclid(1_000_000_000),
        host: hostname(),
        params,
    };
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    let kek = params.kek(passphrase.as_bytes(), &salt)?;
    let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
    aead::seal_into(
        &kek,
        &slot_aad(repo_id, &info.id)?,
        master.key().as_bytes(),
        &mut wrapped,
    )?;
    let slot = Slot {
        info,
        salt,
        wrapped: wrapped
            .try_into()
            .expect("a sealed key is a key and the overhead long"),
    };
    write_slot(root, &slot)?;
    Ok(slot.info)
}

/// Every key slot of the repository, oldest first. A file in `keys/` that
/// is not a readable slot is an error naming it; hidden files (left by an
/// interrupted write) are skipped with a warning.
pub fn list_slots(root: &Path) -> Result<Vec<SlotInfo>> {
    let mut slots = Vec::new();
    let mut bad = Vec::new();
    for (_, r) in scan(root)? {
        match r {
            Ok(s) => slots.push(s.info),
            Err(e) => bad.push(e.detail()),
        }
    }
    if !bad.is_empty() {
        return Err(Error::corrupt(bad.join("; ")));
    }
    slots.sort_by(oldest_first);
    Ok(slots)
}

/// The master key, from the first slot that `passphrase` opens (each try
/// is one Argon2 run), and that slot's id.
///
/// Slots that cannot be read do not stop the others from being tried;
/// they are named in the error if none opens.
pub fn unlock(root: &Path, repo_id: &[u8], passphrase: &str) -> Result<(MasterKey, SlotId)> {
    let entries = scan(root)?;
    if entries.is_empty() {
        return Err(Error::invalid(format!(
            "{}: the repository has no key slot ({KEYS_DIR}/ is empty or missing)",
            root.display()
        )));
    }
    let mut slots = Vec::new();
    let mut bad = Vec::new();
    for (_, r) in entries {
        match r {
            Ok(s) => slots.push(s),
            Err(e) => bad.push(e.detail()),
        }
    }
    in_trying_order(&mut slots);
    // All the slots tried for one passphrase cost at most what the dearest
    // slot allowed costs alone: slots planted with the highest settings
    // would otherwise make a mistyped passphrase take hours. A repository's
    // own slots are far below it, and are tried first.
    let mut spent = 0u64;
    let mut skipped = 0usize;
    for s in &slots {
        spent = spent.saturating_add(cost(&s.info));
        if spent > MAX_UNLOCK_WORK && !std::ptr::eq(s, &slots[0]) {
            skipped += 1;
            continue;
        }
        match s.open(repo_id, passphrase) {
            Ok(Some(master)) => return Ok((master, s.info.id.clone())),
            Ok(None) => {}
            Err(e) => bad.push(format!("key slot {}: {}", s.info.id, e.detail())),
        }
    }
    if slots.is_empty() {
        return Err(Error::corrupt(format!(
            "no key slot of {} can be read: {}",
            root.display(),
            bad.join("; ")
        )));
    }
    let mut msg = format!(
        "wrong passphrase: no key slot of {} opens with it",
        root.display()
    );
    if !bad.is_empty() {
        msg.push_str(&format!(" (and some cannot be read: {})", bad.join("; ")));
    }
    if skipped > 0 {
        msg.push_str(&format!(
            " ({skipped} slot(s) with the dearest settings were not tried: together they cost \
             more than one unlock may)"
        ));
    }
    Err(Error::invalid(msg))
}

/// The most Argon2 work (memory in KiB times passes) one unlock spends
/// over all slots: that of a single slot with the highest settings a slot
/// may have.
const MAX_UNLOCK_WORK: u64 = KdfParams::MAX_M_KIB as u64 * KdfParams::MAX_T as u64;

/// Cheapest first: a hostile slot may claim the most memory and passes
/// allowed, and the oldest date, but it is then tried last, so the
/// passphrase of a repository's own slot costs at most 64 tries of its own
/// price, not 64 of the dearest one.
fn in_trying_order(slots: &mut [Slot]) {
    slots.sort_by(|a, b| {
        cost(&a.info)
            .cmp(&cost(&b.info))
            .then_with(|| oldest_first(&a.info, &b.info))
    });
}

/// What trying a slot's passphrase costs: Argon2id's memory times passes.
fn cost(info: &SlotInfo) -> u64 {
    u64::from(info.params.m_kib()) * u64::from(info.params.t())
}

/// Remove key slot `id`, readable or not, unless no other readable slot
/// would remain: the last one is the only way to the data.
pub fn remove_slot(root: &Path, id: &SlotId) -> Result<()> {
    let name = OsString::from(id.file_name());
    let entries = scan(root)?;
    if !entries.iter().any(|(n, _)| *n == name) {
        return Err(no_such_slot(root, id));
    }
    if !entries.iter().any(|(n, r)| *n != name && r.is_ok()) {
        return Err(Error::invalid(format!(
            "key slot {id} is the last readable key slot of {}: without it the repository cannot be opened; add another first",
            root.display()
        )));
    }
    delete_slot_file(root, id)
}

/// Replace a passphrase: the master key is unwrapped with `old` from slot
/// `id` (or from whichever slot `old` opens), wrapped under `new` in a new
/// slot, and only then is the old slot removed, so a crash in between
/// leaves both passphrases working, never neither. Returns the new slot.
pub fn change_passphrase(
    root: &Path,
    repo_id: &[u8],
    id: Option<&SlotId>,
    old: &str,
    new: &str,
    params: KdfParams,
) -> Result<SlotInfo> {
    let (master, old_id) = match id {
        None => unlock(root, repo_id, old)?,
        Some(id) => {
            let path = slot_path(root, id);
            let slot = match read_slot(&path, id) {
                Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    return Err(no_such_slot(root, id));
                }
                r => r?,
            };
            match slot.open(repo_id, old)? {
                Some(master) => (master, id.clone()),
                None => {
                    return Err(Error::invalid(format!(
                        "wrong passphrase: key slot {id} of {} does not open with it",
                        root.display()
                    )));
                }
            }
        }
    };
    let info = create_slot(root, repo_id, &master, new, params)?;
    delete_slot_file(root, &old_id)?;
    Ok(info)
}

fn no_such_slot(root: &Path, id: &SlotId) -> Error {
    Error::invalid(format!("{} has no key slot {id}", root.display()))
}

fn oldest_first(a: &SlotInfo, b: &SlotInfo) -> Ordering {
    (a.created, &a.id).cmp(&(b.created, &b.id))
}

fn keys_dir(root: &Path) -> PathBuf {
    root.join(KEYS_DIR)
}

fn slot_path(root: &Path, id: &SlotId) -> PathBuf {
    keys_dir(root).join(id.file_name())
}

/// Every entry of `keys/` but hidden ones, by file name, each read as a
/// slot or the error that names it. No `keys/` is no slot.
fn scan(root: &Path) -> Result<Vec<(OsString, Result<Slot>)>> {
    let dir = keys_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut out = Vec::new();
    for (n, e) in entries.enumerate() {
        if n == MAX_SLOTS {
            return Err(Error::corrupt(format!(
                "{} holds more than {MAX_SLOTS} entries; a repository has a few key slots",
                dir.display()
            )));
        }
        let name = e.at(&dir)?.file_name();
        let path = dir.join(&name);
        if name.as_bytes().starts_with(b".") {
            log::warn!(
                "ignoring {}: a key slot being written, or left by an interrupted write",
                path.display()
            );
            continue;
        }
        let slot = match SlotId::of_file_name(&name) {
            Some(id) => read_slot(&path, &id),
            None => Err(Error::corrupt(format!(
                "{} is not a key slot: its name is not <16 hex digits>.{SLOT_EXT}",
                path.display()
            ))),
        };
        out.push((name, slot));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// How many entries `keys/` has (all of them, hidden ones too), counting
/// no further than one past [`MAX_SLOTS`].
fn entry_count(dir: &Path) -> Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.take(MAX_SLOTS + 1).count()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).at(dir),
    }
}

/// Read the slot file at `path`, which must be slot `id`. Never through a
/// symlink, never blocking on a FIFO, never more than a slot's size.
fn read_slot(path: &Path, id: &SlotId) -> Result<Slot> {
    let damaged = |why: String| Error::corrupt(format!("key slot {}: {why}", path.display()));
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .at(path)?;
    if !f.metadata().at(path)?.is_file() {
        return Err(damaged("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    f.take(MAX_SLOT_FILE + 1).read_to_end(&mut bytes).at(path)?;
    let slot = Slot::decode(&bytes).map_err(|e| damaged(e.detail()))?;
    if slot.info.id != *id {
        return Err(damaged(format!(
            "it holds slot {}, not the one its name says",
            slot.info.id
        )));
    }
    Ok(slot)
}

/// Write a new slot file: a hidden temporary file made with `O_EXCL`, mode
/// 0600 whatever the umask, synced, renamed to `<id>.key`, and the folder
/// synced. A crash leaves the slot whole or absent (and perhaps the hidden
/// file, which readers skip).
fn write_slot(root: &Path, slot: &Slot) -> Result<()> {
    let dir = keys_dir(root);
    make_keys_dir(root, &dir)?;
    let name = slot.info.id.file_name();
    let dest = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(Error::invalid(format!("{} exists already", dest.display())));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .at(&tmp)?;
    let written = (|| {
        f.set_permissions(Permissions::from_mode(0o600)).at(&tmp)?;
        f.write_all(&slot.encode()).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, &dest).at(&dest)
    })();
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(&dir)
}

/// `keys/`, made 0700 whatever the umask if it is missing.
fn make_keys_dir(root: &Path, dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, Permissions::from_mode(0o700)).at(dir)?;
            fsync_dir(root)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(dir).at(dir)?.is_dir() {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(e).at(dir),
    }
}

fn delete_slot_file(root: &Path, id: &SlotId) -> Result<()> {
    let path = slot_path(root, id);
    std::fs::remove_file(&path).at(&path)?;
    fsync_dir(&keys_dir(root))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// This host's name, for telling slots apart: without control characters
/// (it is shown in listings) and at most [`MAX_HOST`] bytes.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length match.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut host = String::new();
    for c in String::from_utf8_lossy(&buf[..end]).chars() {
        if c.is_control() {
            continue;
        }
        if host.len() + c.len_utf8() > MAX_HOST {
            break;
        }
        host.push(c);
    }
    host
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Exactly `N` bytes as `2N` lowercase hex digits.
fn from_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N || !b.iter().copied().all(is_lower_hex) {
        return Err(Error::corrupt(format!(
            "{what} is not {} lowercase hex digits",
            2 * N
        )));
    }
    let digit = |d: u8| (d as char).to_digit(16).expect("checked hex digit") as u8;
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    const REPO: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn repo() -> (tempfile::TempDir, MasterKey) {
        (tempfile::tempdir().unwrap(), MasterKey::generate().unwrap())
    }

    fn add(root: &Path, master: &MasterKey, passphrase: &str) -> SlotInfo {
        create_slot(root, REPO, master, passphrase, KdfParams::for_tests()).unwrap()
    }

    #[test]
    fn a_dear_slot_claiming_to_be_oldest_is_tried_after_a_cheap_one() {
        let (dir, master) = repo();
        let cheap = add(dir.path(), &master, "mine");
        let dear = add(dir.path(), &master, "planted");
        let path = slot_path(dir.path(), &dear.id);
        let mut v = read_json(&path);
        v["created"] = json!(0);
        v["m_kib"] = json!(KdfParams::MAX_M_KIB);
        v["t"] = json!(KdfParams::MAX_T);
        write_json(&path, &v);
        let mut slots: Vec<Slot> = scan(dir.path())
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(slots.len(), 2, "the edited slot still reads");
        in_trying_order(&mut slots);
        let order: Vec<&SlotId> = slots.iter().map(|s| &s.info.id).collect();
        assert_eq!(order, [&cheap.id, &dear.id]);
    }

    /// Planted slots with the dearest settings are not all tried for a
    /// mistyped passphrase: the total is capped at one such slot's price,
    /// so after the repository's own cheap slot they are skipped (and
    /// said to be), instead of hours of Argon2 at 4 GiB each.
    #[test]
    fn planted_dear_slots_do_not_make_a_wrong_passphrase_take_hours() {
        let (dir, master) = repo();
        add(dir.path(), &master, "mine");
        for _ in 0..3 {
            let dear = add(dir.path(), &master, "planted");
            let path = slot_path(dir.path(), &dear.id);
            let mut v = read_json(&path);
            v["m_kib"] = json!(KdfParams::MAX_M_KIB);
            v["t"] = json!(KdfParams::MAX_T);
            write_json(&path, &v);
        }
        let t0 = std::time::Instant::now();
        let e = unlock(dir.path(), REPO, "typo").unwrap_err();
        assert!(is_wrong_passphrase(&e, dir.path()), "{e}");
        assert!(e.to_string().contains("3 slot(s)"), "{e}");
        assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
        assert!(unlock(dir.path(), REPO, "mine").is_ok());
    }

    fn same(a: &MasterKey, b: &MasterKey) -> bool {
        a.key().as_bytes() == b.key().as_bytes()
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn write_json(path: &Path, v: &Value) {
        std::fs::write(path, serde_json::to_vec(v).unwrap()).unwrap();
    }

    fn is_wrong_passphrase(e: &Error, root: &Path) -> bool {
        matches!(e, Error::Invalid(_))
            && e.to_string().starts_with(&format!(
                "wrong passphrase: no key slot of {} opens with it",
                root.display()
            ))
    }

    /// `hex` with byte `i` changed.
    fn flip_hex(hex: &str, i: usize) -> String {
        let mut b: Vec<u8> = (0..hex.len() / 2)
            .map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).unwrap())
            .collect();
        b[i] ^= 0x01;
        to_hex(&b)
    }

    #[test]
    fn a_slot_opens_with_its_passphrase_only() {
        let (dir, master) = repo();
        let root = dir.path();
        let info = add(root, &master, "correct horse");
        let (back, id) = unlock(root, REPO, "correct horse").unwrap();
        assert!(same(&back, &master));
        assert_eq!(id, info.id);
        assert_eq!(info.params, KdfParams::for_tests());
        assert!(!info.host.chars().any(char::is_control));
        let now = crate::time::now_ns() / 1_000_000_000;
        assert!((now - 60..=now).contains(&info.created), "{}", info.created);
        let e = unlock(root, REPO, "correct hors").unwrap_err();
        assert!(is_wrong_passphrase(&e, root), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
        assert_eq!(list_slots(root).unwrap(), vec![info]);
    }

    #[test]
    fn slot_files_are_private_json_written_whole() {
        let (dir, master) = repo();
        let root = dir.path();
        let info = add(root, &master, "pw");
        let keys = root.join(KEYS_DIR);
        assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o7777, 0o700);
        let path = keys.join(format!("{}.key", info.id));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from(format!("{}.key", info.id))]);
        let v = read_json(&path);
        assert_eq!(v["version"], 1);
        assert_eq!(v["id"], info.id.as_str());
        assert_eq!(v["kdf"], "argon2id");
        assert_eq!(
            (v["m_kib"].clone(), v["t"].clone(), v["p"].clone()),
            (json!(8192), json!(1), json!(1))
        );
        let salt = v["salt"].as_str().unwrap();
        let wrapped = v["wrapped"].as_str().unwrap();
        assert_eq!((salt.len(), wrapped.len()), (64, 2 * (32 + OVERHEAD)));
        assert!(salt.bytes().chain(wrapped.bytes()).all(is_lower_hex));
        assert_eq!(v.as_object().unwrap().len(), 10);
    }

    #[test]
    fn each_of_several_passphrases_opens_the_same_master_key() {
        let (dir, master) = repo();
        let root = dir.path();
        let a = add(root, &master, "alpha");
        let b = add(root, &master, "beta");
        assert_ne!(a.id, b.id);
        for (pass, id) in [("alpha", &a.id), ("beta", &b.id)] {
            let (m, opened) = unlock(root, REPO, pass).unwrap();
            assert!(same(&m, &master));
            assert_eq!(&opened, id);
        }
        let listed: Vec<_> = list_slots(root)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        let mut want = vec![a.clone(), b.clone()];
        want.sort_by(oldest_first);
        assert_eq!(listed, want.into_iter().map(|s| s.id).collect::<Vec<_>>());
    }

    /// Every byte of the wrapped key and of the salt is authenticated, and
    /// the slot is bound to its id and its repository: a change makes the
    /// right passphrase fail like a wrong one, never a panic, never a key.
    #[test]
    fn a_changed_moved_or_renamed_slot_does_not_open() {
        let (dir, master) = repo();
        let root = dir.path();
        let info = add(root, &master, "pw");
        let path = slot_path(root, &info.id);
        let good = read_json(&path);
        for field in ["wrapped", "salt"] {
            let hex = good[field].as_str().unwrap().to_string();
            for i in 0..hex.len() / 2 {
                let mut v = good.clone();
                v[field] = json!(flip_hex(&hex, i));
                write_json(&path, &v);
                let e = unlock(root, REPO, "pw").unwrap_err();
                assert!(is_wrong_passphrase(&e, root), "{field}[{i}]: {e}");
            }
        }
        write_json(&path, &good);
        assert!(unlock(root, REPO, "pw").is_ok());

        // Another repository.
        let e = unlock(root, b"0123456789abcdef0123456789abcdee", "pw").unwrap_err();
        assert!(is_wrong_passphrase(&e, root), "{e}");

        // Renamed, file and id alike.
        let other = if info.id.as_str() == "0000000000000000" {
            "0000000000000001"
        } else {
            "0000000000000000"
        };
        let mut v = good.clone();
        v["id"] = json!(other);
        std::fs::remove_file(&path).unwrap();
        write_json(&root.join(KEYS_DIR).join(format!("{other}.key")), &v);
        let e = unlock(root, REPO, "pw").unwrap_err();
        assert!(is_wrong_passphrase(&e, root), "{e}");
    }

    /// Each hostile or damaged slot file is refused, naming the file, before
    /// Argon2 runs: none of these takes memory or time.
    #[test]
    fn hostile_slot_files_are_refused_before_argon2_runs() {
        let (dir, master) = repo();
        let root = dir.path();
        let info = add(root, &master, "pw");
        let path = slot_path(root, &info.id);
        let good = read_json(&path);
        let edits: Vec<(&str, Value)> = vec![
            ("m_kib", json!(u32::MAX)),
            ("m_kib", json!(100u64 << 20)),
            ("m_kib", json!(1u64 << 40)),
            ("m_kib", json!(8191)),
            ("t", json!(1_000_000)),
            ("t", json!(0)),
            ("p", json!(1000)),
            ("p", json!(-1)),
            ("salt", json!("00")),
            ("salt", json!("00".repeat(33))),
            ("salt", json!("AB".repeat(32))),
            ("salt", json!(12)),
            ("wrapped", json!("00".repeat(71))),
            ("wrapped", json!("00".repeat(73))),
            ("wrapped", json!("zz".repeat(72))),
            ("id", json!("0123456789abcdef")),
            ("id", json!("../../etc/passwd")),
            ("version", json!(2)),
            ("kdf", json!("scrypt")),
            ("created", json!(-1)),
            ("host", json!("evil\u{1b}[2J")),
            ("host", json!("h".repeat(256))),
            ("extra", json!(true)),
        ];
        let t0 = Instant::now();
        let check = |what: &str| {
            let e = unlock(root, REPO, "pw").unwrap_err();
            assert!(
                matches!(e, Error::Corrupt(_) | Error::Io { .. }),
                "{what}: {e}"
            );
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "{what}: {e}"
            );
            let l = list_slots(root).unwrap_err();
            assert!(
                l.to_string().contains(&path.display().to_string()),
                "{what}: {l}"
            );
        };
        for (field, value) in &edits {
            let mut v = good.clone();
            v[*field] = value.clone();
            write_json(&path, &v);
            check(&format!("{field} = {value}"));
        }
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("salt");
        write_json(&path, &v);
        check("no salt");
        for bytes in [
            b"".to_vec(),
            b"{".to_vec(),
            vec![b' '; 1 << 20],
            vec![0xff; 100],
        ] {
            std::fs::write(&path, &bytes).unwrap();
            check(&format!("{} bytes", bytes.len()));
        }
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), &path).unwrap();
        check("symlink");
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        check("fifo");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        check("directory");
        assert!(t0.elapsed().as_secs() < 20, "{:?}", t0.elapsed());
    }

    #[test]
    fn no_slot_is_a_clear_error() {
        let (dir, _) = repo();
        let root = dir.path();
        let want = format!(
            "{}: the repository has no key slot (keys/ is empty or missing)",
            root.display()
        );
        assert_eq!(unlock(root, REPO, "pw").unwrap_err().to_string(), want);
        std::fs::create_dir(root.join(KEYS_DIR)).unwrap();
        assert_eq!(unlock(root, REPO, "pw").unwrap_err().to_string(), want);
        assert!(list_slots(root).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_slot_is_named_but_does_not_stop_the_others() {
        let (dir, master) = repo();
        let root = dir.path();
        add(root, &master, "pw");
        let bad = root.join(KEYS_DIR).join("00000000000000ff.key");
        std::fs::write(&bad, b"not json").unwrap();
        let (m, _) = unlock(root, REPO, "pw").unwrap();
        assert!(same(&m, &master));
        let e = unlock(root, REPO, "other").unwrap_err();
        assert!(is_wrong_passphrase(&e, root), "{e}");
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        let e = list_slots(root).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
    }

    #[test]
    fn only_damaged_slots_say_so_rather_than_wrong_passphrase() {
        let (dir, _) = repo();
        let root = dir.path();
        std::fs::create_dir(root.join(KEYS_DIR)).unwrap();
        let bad = root.join(KEYS_DIR).join("00000000000000ff.key");
        std::fs::write(&bad, b"{}").unwrap();
        let e = unlock(root, REPO, "pw").unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    }

    #[test]
    fn stray_files_are_errors_and_hidden_leftovers_are_skipped() {
        let (dir, master) = repo();
        let root = dir.path();
        let info = add(root, &master, "pw");
        let keys = root.join(KEYS_DIR);
        std::fs::write(keys.join(".0000000000000001.key.tmp"), b"half").unwrap();
        assert_eq!(list_slots(root).unwrap(), vec![info]);
        std::fs::write(keys.join("notes.txt"), b"hello").unwrap();
        let e = list_slots(root).unwrap_err().to_string();
        assert!(e.contains("notes.txt"), "{e}");
    }

    #[test]
    fn keys_holds_a_bounded_number_of_entries() {
        let (dir, master) = repo();
        let root = dir.path();
        let first = add(root, &master, "pw");
        let keys = root.join(KEYS_DIR);
        for i in 1..MAX_SLOTS {
            std::fs::write(keys.join(format!(".leftover{i}")), b"").unwrap();
        }
        let e = create_slot(root, REPO, &master, "pw", KdfParams::for_tests())
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove a key slot first"), "{e}");
        assert_eq!(list_slots(root).unwrap(), vec![first]);
        std::fs::write(keys.join(".one-too-many"), b"").unwrap();
        let e = unlock(root, REPO, "pw").unwrap_err().to_string();
        assert!(e.contains("more than 64 entries"), "{e}");
    }

    #[test]
    fn the_last_readable_slot_cannot_be_removed() {
        let (dir, master) = repo();
        let root = dir.path();
        let a = add(root, &master, "alpha");
        let e = remove_slot(root, &a.id).unwrap_err().to_string();
        assert!(e.contains("last readable key slot"), "{e}");
        let b = add(root, &master, "beta");
        remove_slot(root, &a.id).unwrap();
        assert_eq!(list_slots(root).unwrap(), vec![b.clone()]);
        assert!(unlock(root, REPO, "alpha").is_err());
        assert!(remove_slot(root, &b.id).is_err());

        // A damaged slot goes; the good one stays, and is not removed for
        // the sake of a damaged one.
        let bad: SlotId = "00000000000000ff".parse().unwrap();
        std::fs::write(slot_path(root, &bad), b"damaged").unwrap();
        assert!(remove_slot(root, &b.id).is_err());
        remove_slot(root, &bad).unwrap();
        assert_eq!(list_slots(root).unwrap(), vec![b]);

        let none: SlotId = "0000000000000001".parse().unwrap();
        let e = remove_slot(root, &none).unwrap_err().to_string();
        assert!(e.contains("has no key slot 0000000000000001"), "{e}");
    }

    #[test]
    fn changing_a_passphrase_replaces_its_slot() {
        let (dir, master) = repo();
        let root = dir.path();
        let a = add(root, &master, "alpha");
        let b = add(root, &master, "beta");
        let p = KdfParams::for_tests();

        let new = change_passphrase(root, REPO, None, "alpha", "gamma", p).unwrap();
        assert!(unlock(root, REPO, "alpha").is_err());
        let (m, id) = unlock(root, REPO, "gamma").unwrap();
        assert!(same(&m, &master));
        assert_eq!(id, new.id);
        let ids: Vec<_> = list_slots(root)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&b.id) && ids.contains(&new.id) && !ids.contains(&a.id));

        // A named slot opens only with its own passphrase.
        let e = change_passphrase(root, REPO, Some(&b.id), "gamma", "delta", p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("wrong passphrase"), "{e}");
        assert_eq!(list_slots(root).unwrap().len(), 2);
        change_passphrase(root, REPO, Some(&b.id), "beta", "delta", p).unwrap();
        assert!(unlock(root, REPO, "beta").is_err());
        assert!(unlock(root, REPO, "delta").is_ok());

        let e = change_passphrase(root, REPO, None, "nope", "x", p).unwrap_err();
        assert!(is_wrong_passphrase(&e, root), "{e}");
        let missing: SlotId = "0000000000000001".parse().unwrap();
        let e = change_passphrase(root, REPO, Some(&missing), "delta", "x", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no key slot"), "{e}");
        assert_eq!(list_slots(root).unwrap().len(), 2);
    }

    #[test]
    fn weak_params_an_empty_passphrase_or_no_repository_id_are_refused() {
        let (dir, master) = repo();
        let root = dir.path();
        let read = KdfParams::from_slot(8192, 1, 1).unwrap();
        let e = create_slot(root, REPO, &master, "pw", read)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a new key slot cannot use"), "{e}");
        let p = KdfParams::for_tests();
        assert!(create_slot(root, REPO, &master, "", p).is_err());
        assert!(create_slot(root, b"", &master, "pw", p).is_err());
        assert!(!root.join(KEYS_DIR).join("x").exists());
        assert!(list_slots(root).unwrap().is_empty());
    }

    #[test]
    fn slot_ids_are_16_lowercase_hex_digits() {
        assert!("0123456789abcdef".parse::<SlotId>().is_ok());
        for bad in [
            "",
            "0123456789abcde",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            "../0123456789ab",
            "0123456789abcdéf",
        ] {
            assert!(bad.parse::<SlotId>().is_err(), "{bad}");
        }
        assert_eq!(
            SlotId::of_file_name(OsStr::new("0123456789abcdef.key"))
                .unwrap()
                .as_str(),
            "0123456789abcdef"
        );
        assert!(SlotId::of_file_name(OsStr::new("0123456789abcdef.key.tmp")).is_none());
        assert!(SlotId::of_file_name(OsStr::from_bytes(b"\xff123456789abcdef.key")).is_none());
    }

    fn sample_slot() -> Vec<u8> {
        Slot {
            info: SlotInfo {
                id: "0123456789abcdef".parse().unwrap(),
                created: 1_700_000_000,
                host: "host".into(),
                params: KdfParams::for_tests(),
            },
            salt: [1; SALT_LEN],
            wrapped: [2; WRAPPED_LEN],
        }
        .encode()
    }

    #[test]
    fn a_slot_of_a_later_format_says_so() {
        let mut v: Value = serde_json::from_slice(&sample_slot()).unwrap();
        v["version"] = json!(2);
        v["new_field"] = json!("x");
        let e = Slot::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("key slot format 2"), "{e}");
    }

    #[test]
    fn a_slot_decodes_to_what_was_encoded() {
        let bytes = sample_slot();
        let s = Slot::decode(&bytes).unwrap();
        assert_eq!(s.info.id.as_str(), "0123456789abcdef");
        assert_eq!(
            (s.info.created, s.info.host.as_str()),
            (1_700_000_000, "host")
        );
        assert_eq!(s.info.params, KdfParams::for_tests());
        assert_eq!((s.salt, s.wrapped), ([1; SALT_LEN], [2; WRAPPED_LEN]));
        assert_eq!(s.encode(), bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn slot_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Slot::decode(&b);
        }

        #[test]
        fn damaged_slots_decode_within_bounds_or_fail(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut b = sample_slot();
            for (i, x) in &edits {
                let i = i.index(b.len());
                b[i] = *x;
            }
            if let Some(c) = cut {
                b.truncate(c.index(b.len()));
            }
            if let Ok(s) = Slot::decode(&b) {
                let p = s.info.params;
                prop_assert!(KdfParams::from_slot(p.m_kib(), p.t(), p.p()).is_ok());
                prop_assert!(p.m_kib() <= KdfParams::MAX_M_KIB && p.t() <= KdfParams::MAX_T);
            }
        }
    }
}
