//! The writer lock: one writer at a time (ingest, forget, gc, copy in,
//! rebuild); others wait for it, naming its holder.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::AtFlags;

use super::Repository;
use crate::error::{Error, IoContext, Result};

/// Held while a command writes packs; released on drop (or process death).
pub struct RepoLock {
    _file: File,
    /// A lease in a store says "writing" for as long as this lives.
    _writing: Option<super::store_lease::Writing>,
}

/// How long `lock` waits for another writer, in milliseconds (`--lock-wait`).
static LOCK_WAIT_MS: AtomicU64 = AtomicU64::new(300_000);

/// How long a command waits for the writer lock before giving up.
pub fn set_lock_wait(wait: Duration) {
    LOCK_WAIT_MS.store(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// What the writer lock's holder wrote of itself (see `Repository::lock`).
fn lock_holder(file: &File) -> String {
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let text = text.trim();
    if text.is_empty() {
        "another snapfs command".to_string()
    } else {
        text.chars().filter(|c| !c.is_control()).collect()
    }
}

/// Take the lock on `fd` if it is free, without waiting.
fn flock_now(fd: std::os::unix::io::RawFd) -> bool {
    // SAFETY: flock on a descriptor the caller owns.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Repository {
    /// The writer lock file, opened (0600, never through a symlink).
    fn lock_file(&self) -> Result<(File, std::path::PathBuf)> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .at(&path)?;
        // An older release made it 0644: close it to others now.
        if file.metadata().at(&path)?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .at(&path)?;
        }
        Ok((file, path))
    }

    /// The writer lock if nobody holds it now (this process included),
    /// taken without waiting and without a word to anyone: for a short
    /// change to the catalog that no writer may be in the middle of (a
    /// catch-up dropping rows no snapshot reaches, which an ingest's
    /// committed but not yet recorded trees would look like).
    pub(crate) fn lock_if_free(&self) -> Result<Option<File>> {
        let (file, _) = self.lock_file()?;
        Ok(flock_now(file.as_raw_fd()).then_some(file))
    }

    /// Take the writer lock, waiting (and saying so, naming the holder) if
    /// another writer holds it, for at most `--lock-wait`. Leftovers of a
    /// killed writer are removed once the lock is ours.
    ///
    /// The lock file is the owner's alone (0600, never through a symlink):
    /// a user who could open it could hold the lock and stop every backup.
    pub fn lock(&self, what: &str) -> Result<RepoLock> {
        let mut writing = None;
        if let Some(store) = &self.remote {
            // Another host's gc must know a writer is at work before it
            // writes anything (see `store_lease`).
            match &self.store_lease {
                Some(l) => writing = Some(l.writing(what)?),
                None => {
                    return Err(Error::invalid(format!(
                        "{what}: no lease could be written in {}, and a writer needs one",
                        store.shown("leases/")
                    )));
                }
            }
        }
        let (file, path) = self.lock_file()?;
        let fd = file.as_raw_fd();
        let try_lock = || flock_now(fd);
        if !try_lock() {
            let wait = Duration::from_millis(LOCK_WAIT_MS.load(Ordering::Relaxed));
            let holder = lock_holder(&file);
            log::warn!(
                "waiting for {holder} to finish writing to the repository ({what}; giving up after {} s, see --lock-wait)",
                wait.as_secs()
            );
            let t0 = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if try_lock() {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(e).at(&path);
                }
                if t0.elapsed() >= wait {
                    return Err(Error::invalid(format!(
                        "the repository is busy: {} holds its writer lock ({}); waited {} s (--lock-wait sets how long)",
                        lock_holder(&file),
                        path.display(),
                        wait.as_secs()
                    )));
                }
            }
        }
        // Say who holds it, for the next one who waits.
        let me = format!(
            "snapfs {what} (pid {}, uid {}, since {})",
            std::process::id(),
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() },
            crate::time::rfc3339(crate::time::now_ns())
        );
        let _ = file.set_len(0);
        let _ = file.write_all_at(me.as_bytes(), 0);
        // Through a descriptor, never a symlink: a repository whose `tmp`
        // points elsewhere must not make us empty that place.
        let tmp = self.tmp_dir();
        if let Some(dir) = self.own_dir("tmp", Some(0o777))? {
            let entries = rustix::fs::Dir::read_from(&dir)
                .map_err(std::io::Error::from)
                .at(&tmp)?;
            for e in entries {
                let e = e.map_err(std::io::Error::from).at(&tmp)?;
                let name = e.file_name();
                if name.to_bytes() != b"." && name.to_bytes() != b".." {
                    let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
                }
            }
        }
        Ok(RepoLock {
            _file: file,
            _writing: writing,
        })
    }
}
