//! The far side of a repository reached over ssh: `snapfs serve` keeps
//! the repository's objects as files under its directory and holds no key.
//!
//! It checks what can be checked without one: every name is one of the
//! repository's object names ([`check_name`]); a pack hashes to its name
//! and has a pack's header and footer; `config` is created once and parses;
//! sizes are bounded (key slots and `config` 64 KiB, leases and doom
//! notices 4 KiB, packs the limit announced at hello, never more than
//! [`MAX_PACK_LIMIT`]); append-only, nothing is created where no `config`
//! is; at most 64 key
//! slots, counted and added under an exclusive `flock` on `keys/`. Files are reached from the directory by `openat` without
//! following a symlink, written whole (temporary file, fsync, rename,
//! fsync of the directory) and private (0600, directories 0700).
//! Temporary files a killed put left are removed, an hour on, when a
//! session first writes. Errors name objects by their names in the
//! repository, never by this machine's paths.
//! Whether a pack's blobs are sound, and whose they are, only a key holder
//! can tell.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::wire::{
    LIST_PAGE, LISTABLE, ListPage, MAX_SLOTS, ObjectKind, StoreRequest, check_name, small_limit,
};
use crate::error::{Error, Result};
use crate::format::codec::Encoder;
use crate::format::pack;
use crate::ids::Hash;
use crate::repo::{Config, Encryption};

/// Bytes of one row of a pack's table (docs/FORMAT.md, "Packs").
const TABLE_ROW: u64 = 49;

/// The largest pack a store session takes or range it reads, whatever
/// `config` says: the copy limit of the default 32 MiB packs is under
/// 200 MiB, and a `config` of `pack_size = 4294967296` (which the parser
/// allows) must not make the server read 4 GiB frames into memory.
pub const MAX_PACK_LIMIT: u64 = 512 << 20;

/// A repository directory served as a keyless object store.
pub struct DirStore {
    root: PathBuf,
    append_only: bool,
    pack_limit: u64,
    /// The encryption `config` names, once there is one: packs must be of
    /// its kind.
    encryption: Option<Encryption>,
    /// Whether this session looked for temporary files of killed puts.
    swept: bool,
}

/// A temporary file of a put older than this is a killed session's.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// How an object is named to the client: by its name in the repository,
/// never by this machine's path to it.
fn shown(name: &str) -> PathBuf {
    PathBuf::from(if name.is_empty() { "." } else { name })
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

impl DirStore {
    /// Serve `root`; `pack_limit` of a config bounds the packs it takes.
    pub fn open(
        root: &Path,
        append_only: bool,
        pack_limit: impl Fn(&Config) -> u64,
    ) -> Result<DirStore> {
        let mut s = DirStore {
            root: root.to_path_buf(),
            append_only,
            pack_limit: pack_limit(&Config::default()).min(MAX_PACK_LIMIT),
            encryption: None,
            swept: false,
        };
        if let Some(bytes) = s.read_whole("config", super::wire::MAX_SMALL_OBJECT)? {
            let c = parse_config(&bytes)?;
            s.pack_limit = pack_limit(&c).min(MAX_PACK_LIMIT);
            s.encryption = Some(c.encryption);
        }
        Ok(s)
    }

    /// The largest pack this server takes (and range it reads).
    pub fn pack_limit(&self) -> u64 {
        self.pack_limit
    }

    fn err(&self, name: &str, msg: impl Into<String>) -> Error {
        Error::invalid(format!("{}: {}", shown(name).display(), msg.into()))
    }

    fn io(&self, name: &str, e: Errno) -> Error {
        let source = match e {
            Errno::LOOP | Errno::NOTDIR => std::io::Error::other(
                "a symlink or other non-directory where a directory belongs; not followed",
            ),
            e => errno_io(e),
        };
        Error::Io {
            path: shown(name),
            source,
        }
    }

    /// The repository directory, created (0700) if `create` and missing.
    fn root_fd(&self, create: bool) -> Result<Option<OwnedFd>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::open(&self.root, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) if create => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.root)
                    .map_err(|e| Error::Io {
                        path: shown(""),
                        source: e,
                    })?;
                rustix::fs::open(&self.root, flags, Mode::empty())
                    .map(Some)
                    .map_err(|e| self.io("", e))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("", e)),
        }
    }

    /// The directory holding `name` and the file name in it; None if a
    /// directory on the way is missing (and `create` is false).
    fn parent<'n>(&self, name: &'n str, create: bool) -> Result<Option<(OwnedFd, &'n str)>> {
        let Some(mut fd) = self.root_fd(create)? else {
            return Ok(None);
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let file = parts.pop().expect("split yields one part at least");
        let mut walked = String::new();
        for dir in parts {
            walked = if walked.is_empty() {
                dir.to_string()
            } else {
                format!("{walked}/{dir}")
            };
            fd = match open_dir(&fd, dir) {
                Ok(d) => d,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, dir, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(&walked, e)),
                    }
                    rustix::fs::fsync(&fd).map_err(|e| self.io(&walked, e))?;
                    open_dir(&fd, dir).map_err(|e| self.io(&walked, e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.io(&walked, e)),
            };
        }
        Ok(Some((fd, file)))
    }

    /// Open a regular file for reading, never through a symlink.
    fn open_file(&self, name: &str) -> Result<Option<(File, u64)>> {
        let Some((dir, file)) = self.parent(name, false)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, file, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(self.err(name, "is a symlink; not followed")),
            Err(e) => return Err(self.io(name, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io(name, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.err(name, "is not a regular file"));
        }
        Ok(Some((File::from(fd), st.st_size as u64)))
    }

    fn read_whole(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some((f, size)) = self.open_file(name)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(self.err(
                name,
                format!("holds {size} bytes, more than the {limit} that may be read whole"),
            ));
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Io {
                path: shown(name),
                source: e,
            })?;
        if buf.len() as u64 > limit {
            return Err(self.err(name, "grew past its limit while being read"));
        }
        Ok(Some(buf))
    }

    /// The most bytes an object of `kind` may hold here.
    fn limit_of(&self, kind: ObjectKind) -> u64 {
        small_limit(kind).unwrap_or(self.pack_limit)
    }

    /// The body of the answer to one request.
    pub fn answer(&mut self, req: StoreRequest) -> Result<Vec<u8>> {
        let mut e = Encoder::new();
        match req {
            StoreRequest::Get { name, limit } => {
                let kind = check_name(name)?;
                match self.read_whole(name, limit.min(self.limit_of(kind)))? {
                    Some(bytes) => {
                        e.u8(1);
                        e.buf.extend_from_slice(&bytes);
                    }
                    None => e.u8(0),
                }
            }
            StoreRequest::GetRange { name, offset, len } => {
                check_name(name)?;
                if len > self.pack_limit {
                    return Err(self.err(
                        name,
                        format!(
                            "a range of {len} bytes; at most {} are read at once",
                            self.pack_limit
                        ),
                    ));
                }
                let (f, size) = self
                    .open_file(name)?
                    .ok_or_else(|| self.io(name, Errno::NOENT))?;
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err(self.err(
                        name,
                        format!("{len} bytes at {offset} asked for; it holds {size}"),
                    ));
                }
                e.buf = vec![0; len as usize];
                f.read_exact_at(&mut e.buf, offset)
                    .map_err(|err| Error::Io {
                        path: shown(name),
                        source: err,
                    })?;
            }
            StoreRequest::Head { name } => {
                check_name(name)?;
                match self.open_file(name)? {
                    Some((_, size)) => {
                        e.u8(1);
                        e.u64(size);
                    }
                    None => e.u8(0),
                }
            }
            StoreRequest::List { dir, after } => {
                e.buf = self.list(dir, after)?.encode();
            }
            StoreRequest::Put { name, bytes } => self.put(name, bytes)?,
            StoreRequest::Delete { name } => self.delete(name)?,
            StoreRequest::Clock => e.buf = crate::time::now_ns().to_le_bytes().to_vec(),
        }
        Ok(e.buf)
    }

    /// One page of the objects under `dir/` named after `after`.
    fn list(&self, dir: &str, after: &str) -> Result<ListPage> {
        if !LISTABLE.contains(&dir) {
            return Err(Error::invalid(format!(
                "{:?} cannot be listed (only {})",
                super::wire::peer_text(dir.as_bytes()),
                LISTABLE.join(", ")
            )));
        }
        if !after.is_empty() {
            check_name(after)?;
            if !after.starts_with(&format!("{dir}/")) {
                return Err(Error::invalid(
                    "a listing resumed after a name of another directory",
                ));
            }
        }
        let mut page = ListPage::default();
        let Some(root) = self.root_fd(false)? else {
            return Ok(page);
        };
        let top = match open_dir(&root, dir) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(page),
            Err(e) => return Err(self.io(dir, e)),
        };
        // Directories to read: `dir` itself, or the pack fan-out beneath it
        // from the one `after` is in.
        let subdirs: Vec<(Option<String>, OwnedFd)> = if dir == "packs" {
            let from = after.get(6..8).unwrap_or("");
            let mut subs: Vec<String> = entries(&top)
                .map_err(|e| self.io(dir, e))?
                .into_iter()
                .filter(|s| {
                    s.len() == 2
                        && s.as_str() >= from
                        && s.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                })
                .collect();
            subs.sort();
            let mut out = Vec::new();
            for s in subs {
                match open_dir(&top, &s) {
                    Ok(fd) => out.push((Some(s), fd)),
                    // A symlink or a file is no fan-out directory.
                    Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {}
                    Err(e) => return Err(self.io(&format!("{dir}/{s}"), e)),
                }
            }
            out
        } else {
            vec![(None, top)]
        };
        for (sub, fd) in subdirs {
            let prefix = match &sub {
                Some(s) => format!("{dir}/{s}/"),
                None => format!("{dir}/"),
            };
            let mut names: Vec<String> = entries(&fd)
                .map_err(|e| self.io(&prefix, e))?
                .into_iter()
                .map(|f| format!("{prefix}{f}"))
                .filter(|n| n.as_str() > after && check_name(n).is_ok())
                .collect();
            names.sort();
            for n in names {
                let file = &n[prefix.len()..];
                let st = match rustix::fs::statat(&fd, file, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(self.io(&n, e)),
                };
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    continue;
                }
                if page.entries.len() == LIST_PAGE {
                    page.more = true;
                    return Ok(page);
                }
                page.entries.push((n, st.st_size as u64));
            }
        }
        Ok(page)
    }

    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let kind = check_name(name)?;
        if self.append_only && self.encryption.is_none() {
            // No repository yet: an append-only client makes none (nor
            // the directory, nor a config of its choosing).
            return Err(self.err(
                name,
                "no repository here (no config), and an append-only server does not create one; \
                 create it on this machine first",
            ));
        }
        if !self.swept {
            self.swept = true;
            self.sweep_stale_tmp();
        }
        let limit = self.limit_of(kind);
        if bytes.len() as u64 > limit {
            return Err(self.err(
                name,
                format!("{} bytes; at most {limit} are accepted for it", bytes.len()),
            ));
        }
        match kind {
            ObjectKind::Pack(n) => {
                let actual = Hash::of(bytes);
                if actual != n.0 {
                    return Err(self.err(
                        name,
                        format!(
                            "its bytes hash to {}, not to its name; refused",
                            actual.to_hex()
                        ),
                    ));
                }
                self.check_pack(name, bytes)?;
                if self.open_file(name)?.is_some() {
                    // The same name is the same bytes.
                    return Ok(());
                }
            }
            ObjectKind::Config => {
                let c = parse_config(bytes)
                    .map_err(|e| self.err(name, format!("not a snapfs config: {e}")))?;
                self.write(name, bytes, true)?;
                self.encryption = Some(c.encryption);
                return Ok(());
            }
            ObjectKind::Key => {
                let existing = self.read_whole(name, super::wire::MAX_SMALL_OBJECT)?;
                match existing {
                    Some(old) if old == bytes => return Ok(()),
                    Some(_) if self.append_only => {
                        return Err(
                            self.err(name, "an append-only server does not replace a key slot")
                        );
                    }
                    Some(_) => {}
                    None => {
                        // Count and add under one lock on `keys/`: sessions
                        // adding slots at once would each count 63 and all
                        // add one. (flock: released when `keys` is closed,
                        // also if this process dies.)
                        let (keys, _) = self
                            .parent(name, true)?
                            .expect("parent() creates what is missing");
                        rustix::fs::flock(&keys, FlockOperation::LockExclusive)
                            .map_err(|e| self.io("keys", e))?;
                        let slots = self.list("keys", "")?.entries.len();
                        if slots >= MAX_SLOTS {
                            return Err(self.err(
                                name,
                                format!("the repository holds {slots} key slots already, the most it may have"),
                            ));
                        }
                        let written = self.write(name, bytes, self.append_only);
                        drop(keys);
                        return written;
                    }
                }
            }
            ObjectKind::Lease if self.append_only => {
                // A lease may be renewed by its holder, never replaced by
                // another: that would let gc delete under a running writer.
                let old = self.read_whole(name, super::wire::MAX_NOTE)?;
                if let Some(old) = old
                    && (holder_of(&old).is_none() || holder_of(&old) != holder_of(bytes))
                {
                    return Err(self.err(
                        name,
                        "an append-only server replaces a lease only with one of the same \
                         host and pid (its holder renewing it)",
                    ));
                }
            }
            ObjectKind::Lease => {}
            ObjectKind::Doom => {
                if self.append_only {
                    return Err(self.err(
                        name,
                        "an append-only server takes no doom notice (it would let gc delete packs)",
                    ));
                }
            }
        }
        self.write(name, bytes, false)
    }

    /// Remove the temporary files (`.tmp-*`) killed puts left, once they
    /// are older than [`STALE_TMP`]: regular files of this user, in the
    /// directories puts write to. Best effort: what cannot be removed
    /// stays.
    fn sweep_stale_tmp(&self) {
        let Ok(Some(root)) = self.root_fd(false) else {
            return;
        };
        let mut dirs: Vec<(String, OwnedFd)> = Vec::new();
        for d in ["keys", "leases", "doomed", "packs"] {
            let Ok(fd) = open_dir(&root, d) else {
                continue;
            };
            if d == "packs" {
                for sub in entries(&fd).unwrap_or_default() {
                    if sub.len() == 2
                        && let Ok(sfd) = open_dir(&fd, &sub)
                    {
                        dirs.push((format!("packs/{sub}"), sfd));
                    }
                }
            }
            dirs.push((d.to_string(), fd));
        }
        dirs.push((String::new(), root));
        let me = rustix::process::geteuid().as_raw();
        let Some(before) = std::time::SystemTime::now()
            .checked_sub(STALE_TMP)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            return;
        };
        for (dir, fd) in dirs {
            for f in entries(&fd).unwrap_or_default() {
                if !f.starts_with(".tmp-") {
                    continue;
                }
                let Ok(st) = rustix::fs::statat(&fd, f.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
                    continue;
                };
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_uid == me
                    && u64::try_from(st.st_mtime).is_ok_and(|t| t < before.as_secs())
                {
                    match rustix::fs::unlinkat(&fd, f.as_str(), AtFlags::empty()) {
                        Ok(()) => log::info!("removed {dir}/{f}, left by a killed put"),
                        Err(e) => log::debug!("removing {dir}/{f}: {e}"),
                    }
                }
            }
        }
    }

    /// A pack's header and footer, as far as they can be read without a
    /// key: the magic, a known format (the repository's, once `config`
    /// says which), and a table that fits the pack's size.
    fn check_pack(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let bad = |why: &str| self.err(name, format!("not a snapfs pack: {why}"));
        let len = bytes.len() as u64;
        if len < pack::HEADER_LEN + pack::FOOTER_LEN as u64 {
            return Err(bad("too short"));
        }
        if &bytes[..8] != pack::MAGIC {
            return Err(bad("no pack header"));
        }
        let format = bytes[8];
        let sealed = match format {
            pack::FORMAT_PLAIN => false,
            pack::FORMAT_SEALED => true,
            f => return Err(bad(&format!("unknown format {f}"))),
        };
        if let Some(enc) = self.encryption
            && (enc != Encryption::None) != sealed
        {
            return Err(bad(&format!(
                "a {} pack in a repository encrypted with {}",
                if sealed { "sealed" } else { "plain" },
                enc.name()
            )));
        }
        let footer = &bytes[bytes.len() - pack::FOOTER_LEN..];
        if &footer[20..28] != pack::TABLE_MAGIC {
            return Err(bad("no table footer"));
        }
        let table_offset = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
        let overhead = if sealed {
            crate::crypto::aead::OVERHEAD as u64
        } else {
            0
        };
        let end = (u64::from(count) * TABLE_ROW + overhead)
            .checked_add(table_offset)
            .and_then(|e| e.checked_add(pack::FOOTER_LEN as u64));
        if count > pack::MAX_TABLE_ROWS || table_offset < pack::HEADER_LEN || end != Some(len) {
            return Err(bad("its table does not fit its size"));
        }
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<()> {
        let kind = check_name(name)?;
        if kind == ObjectKind::Config {
            return Err(self.err(name, "the config is never deleted through serve"));
        }
        if self.append_only {
            // Not even a lease: another host's, gone, would let gc delete
            // under its running writer. An append-only client's own lease
            // expires instead.
            return Err(self.err(name, "an append-only server deletes nothing"));
        }
        let Some((dir, file)) = self.parent(name, false)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dir, file, AtFlags::empty()) {
            Ok(()) => rustix::fs::fsync(&dir).map_err(|e| self.io(name, e)),
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// Write `name` whole or not at all: a temporary file beside it
    /// (0600), fsync, rename, fsync of the directory. `no_replace`: an
    /// existing object of that name is an error and stays.
    fn write(&self, name: &str, bytes: &[u8], no_replace: bool) -> Result<()> {
        let (dir, file) = self
            .parent(name, true)?
            .expect("parent() creates what is missing");
        let tmp = format!(".tmp-{}", pack::unique_token());
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.io(name, e))?;
        let mut f = File::from(fd);
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        let renamed = written
            .map_err(|e| Error::Io {
                path: shown(name),
                source: e,
            })
            .and_then(|()| {
                let flags = if no_replace {
                    RenameFlags::NOREPLACE
                } else {
                    RenameFlags::empty()
                };
                match rustix::fs::renameat_with(&dir, tmp.as_str(), &dir, file, flags) {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST) => Err(self.err(name, "exists already, and is not replaced")),
                    Err(e) => Err(self.io(name, e)),
                }
            });
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        rustix::fs::fsync(&dir).map_err(|e| self.io(name, e))
    }
}

/// A lease's `host` and `pid` lines: who holds it.
fn holder_of(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut host = None;
    let mut pid = None;
    for line in bytes.split(|b| *b == b'\n') {
        if line.starts_with(b"host ") && host.is_none() {
            host = Some(line);
        } else if line.starts_with(b"pid ") && pid.is_none() {
            pid = Some(line);
        }
    }
    Some((host?, pid?))
}

fn parse_config(bytes: &[u8]) -> Result<Config> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::corrupt("config is not text"))?;
    Config::parse(text, Path::new("config"))
}

fn open_dir(dir: &OwnedFd, name: &str) -> std::result::Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names in a directory that are UTF-8, without `.` and `..`.
fn entries(dir: &OwnedFd) -> std::result::Result<Vec<String>, Errno> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let Ok(n) = e.file_name().to_str() else {
            continue;
        };
        if n != "." && n != ".." {
            out.push(n.to_string());
        }
    }
    Ok(out)
}
