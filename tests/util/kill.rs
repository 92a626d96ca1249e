//! Killing a command at every moment: SIGKILL at random points of a run,
//! so that, over many rounds, kills land in every stage of the work. What
//! a test checks after each kill (the repository opens, verifies, restores)
//! is its own.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Rng;

/// Waits up to `limit` for `child`; kills it with SIGKILL after that.
/// Returns the exit status when it ended by itself.
pub(crate) fn kill_after(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap killed child");
            return None;
        }
        thread::sleep(Duration::from_micros(500));
    }
}

/// Spawns `cmd` and SIGKILLs it `delay` later. Returns None when it was
/// killed, and how long it took when it ended first, which it must have
/// done successfully (else the test fails with its stderr).
pub(crate) fn run_killed_after(cmd: &mut Command, delay: Duration, what: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let status = kill_after(&mut child, delay)?;
    let took = started.elapsed();
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(status.success(), "{what} failed ({status}):\n{err}");
    Some(took)
}

/// Draws kill delays: uniform below the typical length of an uninterrupted
/// run, measured from the runs that escape a kill.
pub(crate) struct Killer {
    rng: Rng,
    /// How long an uninterrupted run takes, as far as seen.
    pub(crate) typical: Duration,
    /// Runs killed.
    pub(crate) kills: u32,
    /// Runs that ended by themselves before their kill.
    pub(crate) completed: u32,
}

impl Killer {
    /// `guess`: how long an uninterrupted run takes, until one is seen.
    pub(crate) fn new(seed: u64, guess: Duration) -> Killer {
        Killer {
            rng: Rng::new(seed),
            typical: guess,
            kills: 0,
            completed: 0,
        }
    }

    /// Spawns `cmd` and SIGKILLs it at a random moment. Returns true when
    /// it was killed; panics if it ended by itself with an error.
    pub(crate) fn run(&mut self, cmd: &mut Command, what: &str) -> bool {
        let micros = self.typical.as_micros() as u64;
        let delay = Duration::from_micros(self.rng.below(micros * 11 / 10 + 1));
        match run_killed_after(cmd, delay, what) {
            None => {
                self.kills += 1;
                eprintln!("{what}: killed after {delay:?}");
                true
            }
            Some(took) => {
                self.completed += 1;
                self.observe(took);
                false
            }
        }
    }

    /// Notes how long an uninterrupted run of the command took.
    pub(crate) fn observe(&mut self, took: Duration) {
        self.typical = (self.typical + took) / 2;
    }
}
