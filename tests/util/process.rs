//! Running programs: the binary under test, the real tools a test checks
//! with, time limits, signals, another user, loopback ports.
//!
//! Every helper that can fail panics with the command and its output, so a
//! failing test says what ran and what it printed.

use std::ffi::OsStr;
use std::io::{Error, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub(crate) fn snapfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_snapfs")
}

/// A `snapfs` command with no repository taken from the caller's environment.
pub(crate) fn snapfs() -> Command {
    let mut cmd = Command::new(snapfs_bin());
    for var in [
        "SNAPFS_REPO",
        "SNAPFS_PASSWORD_FILE",
        "SNAPFS_PASSWORD_COMMAND",
        "SNAPFS_CACHE_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Panics unless `tool` is on PATH: a test that needs a tool fails loudly
/// instead of skipping.
pub(crate) fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}` on PATH; install it (scripts/test.sh does) instead of skipping"
    );
}

/// Renders a command's result for assertion messages.
pub(crate) fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout then stderr, for a message that may go to either.
pub(crate) fn all_output(out: &Output) -> String {
    stdout_of(out) + &stderr_of(out)
}

/// Runs `cmd` whatever its outcome, for commands whose failure the test
/// expects or inspects itself.
pub(crate) fn output_of(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// Runs `cmd`, asserting it exits with `expected`.
pub(crate) fn run_expect(cmd: &mut Command, expected: i32) -> Output {
    let what = format!("{cmd:?}");
    let out = output_of(cmd);
    assert_eq!(
        out.status.code(),
        Some(expected),
        "unexpected exit status\n{}",
        describe(&what, &out)
    );
    out
}

pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    run_expect(cmd, 0)
}

/// Runs an external tool, panicking with its output if it fails.
pub(crate) fn tool(program: &str, args: &[&OsStr]) -> Output {
    require_tool(program);
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("{cmd:?}"), &out)
    );
    out
}

/// Runs `args` as the unprivileged user nobody (65534) through `setpriv`.
pub(crate) fn as_nobody(args: &[&OsStr]) -> Output {
    require_tool("setpriv");
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn setpriv")
}

/// `cmd` run under libfaketime with its clock moved by `offset` (`-600s`,
/// `+10m`): a machine whose clock is off. Monotonic clocks stay true.
pub(crate) fn with_clock_off(cmd: &Command, offset: &str) -> Command {
    require_tool("faketime");
    let mut off = Command::new("faketime");
    off.args(["-f", offset])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => off.env(k, v),
            None => off.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        off.current_dir(dir);
    }
    off.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    off
}

/// Waits up to `limit` for `child` to exit.
pub(crate) fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => return None,
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `cmd` to its end, or fails the test once `limit` passes, so that a
/// command that wrongly hangs (reads 1 TB of holes, serves a mount it should
/// refuse) fails instead of hanging the suite. It runs in a process group
/// of its own, all of which a timeout kills (a shell and what it runs
/// alike); its output is drained as it comes, so a chatty command cannot
/// block on a full pipe.
pub(crate) fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        // The negative pid names the child's process group.
        let _ = signal_group(child.id(), libc::SIGKILL);
    }
    let out = Output {
        status: status.unwrap_or_else(|| child.wait().expect("reap killed child")),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(
        status.is_some(),
        "still running after {limit:?}, killed\n{}",
        describe(&what, &out)
    );
    out
}

/// Sends `sig` to process `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    kill(pid as libc::pid_t, sig)
}

/// Sends `sig` to the process group led by `pid`.
fn signal_group(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    kill(-(pid as libc::pid_t), sig)
}

fn kill(pid: libc::pid_t, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(Error::last_os_error())
    }
}

/// The number on the line of `text` that starts with `key`, the way
/// `/proc` files put them (`VmHWM:    1234 kB`, `pos:\t4096`).
pub(crate) fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Polls `check` until it returns true or `limit` passes.
pub(crate) fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits up to `limit` for a server started as `child` to listen on
/// `port` of 127.0.0.1. Err(its exit status) if it exited first, Err(None)
/// if it did not listen in time: the caller fails with its log.
pub(crate) fn wait_listening(
    child: &mut Child,
    port: u16,
    limit: Duration,
) -> Result<(), Option<ExitStatus>> {
    let mut status = None;
    let up = eventually(limit, || {
        status = child.try_wait().expect("wait for child");
        status.is_some() || TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if up && status.is_none() {
        Ok(())
    } else {
        Err(status)
    }
}
