//! Mounts that clean up after themselves: the guard around a running
//! `snapfs mount` (unmounted, and its process stopped, on drop, so a failing
//! test never leaves a stale mount behind), the mount table, fusermount3,
//! a reader that holds a file of the mount open half way through, and a
//! tmpfs for the tests that need a small or a hole-keeping filesystem.
//!
//! The mount tests need `/dev/fuse` and `fusermount3`; without them they
//! fail with a message saying so, they never skip.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// How long a mount may take to print its "mounted" line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the mount process may take to exit once unmounted or signalled.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the mount guard

/// Fails the test unless this machine can mount FUSE filesystems.
pub(crate) fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "the mount tests need /dev/fuse (load the fuse module, or give the container \
         --device /dev/fuse --cap-add SYS_ADMIN); they fail rather than skip"
    );
    require_tool("fusermount3");
}

/// The mount table entry for `path`, as (filesystem type, options), if any.
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let table = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() >= 4 && unescape_mount_field(fields[1]) == want {
            // The last entry for a path is the one on top.
            found = Some((fields[2].to_string(), fields[3].to_string()));
        }
    }
    found
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/mounts.
fn unescape_mount_field(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

pub(crate) fn fusermount_unmount(path: &Path, lazy: bool) -> Output {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    cmd.arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn fusermount3: {e}"))
}

/// A running `snapfs mount`. Dropping it unmounts (lazily if it must) and
/// stops the process; [`Mount::finish`] does the same but asserts the
/// clean-exit contract.
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    ready_line: String,
    _dir: Option<TempDir>,
}

impl Mount {
    /// Mounts `repo` on a fresh mount point of its own, whose parent is
    /// 0755 so that other users can reach it (with --allow-other).
    pub(crate) fn new(repo: &Repo, extra: &[&str]) -> Mount {
        let dir = tempdir();
        chmod(dir.path(), 0o755);
        let path = canonical(dir.path()).join("mnt");
        mkdir(&path);
        Mount::start(repo, extra, path, Some(dir))
    }

    /// Mounts `repo` on `path`, which the caller owns (and must outlive this).
    pub(crate) fn at(repo: &Repo, extra: &[&str], path: &Path) -> Mount {
        Mount::start(repo, extra, path.to_path_buf(), None)
    }

    fn start(repo: &Repo, extra: &[&str], path: PathBuf, dir: Option<TempDir>) -> Mount {
        require_fuse();
        let mut cmd = repo.cmd();
        cmd.arg("mount").args(extra).arg(&path);
        // Its log level is what the arguments say (see `finish`).
        cmd.env_remove("RUST_LOG");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let mut pipe = child.stderr.take().expect("piped stderr");
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("stderr lock")
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("piped stdout");
            let sink = Arc::clone(&stdout_lines);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().expect("stdout lock").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }

        // From here on the guard cleans up, whatever happens.
        let mut mount = Mount {
            path,
            child: Some(child),
            stdout_lines,
            stderr,
            ready_line: String::new(),
            _dir: dir,
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                assert!(
                    line.starts_with("mounted"),
                    "{what}: the first line on stdout should start with \"mounted\", got {line:?}\n{}",
                    mount.stderr_text()
                );
                mount.ready_line = line;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{what} printed no \"mounted\" line within {READY_TIMEOUT:?}\n--- stderr ---\n{}",
                mount.stderr_text()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = mount
                    .child
                    .as_mut()
                    .and_then(|c| wait_timeout(c, EXIT_TIMEOUT));
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what} closed stdout before printing \"mounted\" (exit: {status:?})\n--- stderr ---\n{}",
                    mount.stderr_text()
                )
            }
        }
        let entry = mount_entry(&mount.path);
        assert!(
            matches!(&entry, Some((fstype, _)) if fstype.starts_with("fuse")),
            "{what} printed {:?} but {} is not a FUSE mount in /proc/self/mounts (entry: {entry:?})\n{}",
            mount.ready_line,
            mount.path.display(),
            mount.stderr_text()
        );
        mount
    }

    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().expect("stdout lock").clone()
    }

    /// Panics unless the mount process is still running and still mounted.
    pub(crate) fn assert_alive(&mut self) {
        let status = self
            .child
            .as_mut()
            .expect("mount process")
            .try_wait()
            .expect("try_wait");
        assert!(
            status.is_none(),
            "the mount process exited ({status:?})\n--- stderr ---\n{}",
            self.stderr_text()
        );
        assert!(
            is_mounted(&self.path),
            "{} is no longer mounted\n--- stderr ---\n{}",
            self.path.display(),
            self.stderr_text()
        );
    }

    /// `MNT/history/<absolute path>`: the versions of `abs` in the history view.
    pub(crate) fn history(&self, abs: &Path) -> PathBuf {
        restored_path(&self.path.join("history"), abs)
    }

    /// Where `source` of snapshot `name` appears in the mount.
    pub(crate) fn source_in(&self, name: &str, source: &Path) -> PathBuf {
        restored_path(&self.path.join(name), source)
    }

    /// Unmounts with `fusermount3 -u` and asserts the documented ending: the
    /// process exits 0, the mount point is no longer mounted, stdout held
    /// exactly the one "mounted" line, and nothing panicked. Returns what
    /// the process wrote to stderr.
    pub(crate) fn finish(mut self) -> String {
        let out = fusermount_unmount(&self.path, false);
        assert!(
            out.status.success(),
            "{}\n--- mount stderr ---\n{}",
            describe("fusermount3 -u", &out),
            self.stderr_text()
        );
        self.expect_clean_exit("fusermount3 -u")
    }

    /// Sends `signal` and asserts the same clean ending as [`Mount::finish`].
    pub(crate) fn stop_with(mut self, sig: libc::c_int, name: &str) {
        let pid = self.child.as_ref().expect("mount process").id();
        signal(pid, sig).unwrap_or_else(|e| panic!("kill {name}: {e}"));
        self.expect_clean_exit(name);
    }

    fn expect_clean_exit(&mut self, how: &str) -> String {
        let mut child = self.child.take().expect("mount process");
        let status = wait_timeout(&mut child, EXIT_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let the reader threads drain the pipes.
        thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr_text();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "after {how} the mount process should exit 0 within {EXIT_TIMEOUT:?}, got {status:?}\n--- stderr ---\n{stderr}"
        );
        assert!(
            !is_mounted(&self.path),
            "after {how} and exit, {} is still in /proc/self/mounts",
            self.path.display()
        );
        let lines = self.stdout_lines();
        assert_eq!(
            lines.len(),
            1,
            "the mount should print exactly one line on stdout, printed {lines:?}"
        );
        assert!(
            !stderr.contains("panicked"),
            "the mount process panicked:\n{stderr}"
        );
        stderr
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.path) && !fusermount_unmount(&self.path, false).status.success() {
            let _ = fusermount_unmount(&self.path, true);
        }
        if let Some(mut child) = self.child.take()
            && wait_timeout(&mut child, Duration::from_secs(5)).is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.path) {
            let _ = fusermount_unmount(&self.path, true);
        }
        if is_mounted(&self.path) {
            // Never let TempDir's cleanup walk into a live mount.
            if let Some(dir) = self._dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

// ---------------------------------------------------------------- readers

/// A reader copying a file out of the mount in 1 MiB pieces that pauses,
/// file open, 16 MiB in, until told to go on.
pub(crate) struct PausedReader {
    go: mpsc::Sender<()>,
    thread: thread::JoinHandle<Result<u64, String>>,
}

impl PausedReader {
    /// Starts the reader and returns once it has paused.
    pub(crate) fn start(from: &Path, to: &Path) -> PausedReader {
        let (paused_tx, paused_rx) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        let thread = thread::spawn(move || -> Result<u64, String> {
            let mut f = fs::File::open(&from).map_err(|e| format!("open: {e}"))?;
            let mut out = fs::File::create(&to).map_err(|e| format!("create: {e}"))?;
            let mut buf = vec![0u8; MIB as usize];
            let mut total = 0u64;
            let mut paused = false;
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| format!("read at {total}: {e}"))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .map_err(|e| format!("write: {e}"))?;
                total += n as u64;
                if !paused && total >= 16 * MIB {
                    paused = true;
                    let _ = paused_tx.send(());
                    let _ = go_rx.recv_timeout(Duration::from_secs(300));
                }
            }
            Ok(total)
        });
        paused_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the reader should get 16 MiB into the file");
        PausedReader { go, thread }
    }

    /// Lets it read the rest; the bytes it copied in all, or what failed.
    pub(crate) fn finish(self) -> Result<u64, String> {
        self.go.send(()).expect("resume the reader");
        self.thread.join().expect("reader thread")
    }
}

// ---------------------------------------------------------------- tmpfs

/// A tmpfs mounted for the life of the guard; unmounted on drop. Declare it
/// after the `TempDir` holding its mount point so it drops first.
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Tmpfs {
        mkdir(path);
        tool(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("tmpfs"),
                OsStr::new("-o"),
                OsStr::new(&format!("size={size}")),
                OsStr::new("tmpfs"),
                path.as_os_str(),
            ],
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub(crate) fn resize(&self, size: &str) {
        tool(
            "mount",
            &[
                OsStr::new("-o"),
                OsStr::new(&format!("remount,size={size}")),
                self.path.as_os_str(),
            ],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
