//! Progress on a terminal (files, bytes, throughput, ETA), nothing otherwise:
//! a command run from cron or a script prints only its final summary.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn progress off for the whole process (`-q`).
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

pub struct Progress {
    bar: Option<ProgressBar>,
    items: AtomicU64,
    noun: &'static str,
}

impl Progress {
    /// No output at all (tests, library use, non-terminals).
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            items: AtomicU64::new(0),
            noun: "",
        }
    }

    /// A bar when `total_bytes` is known, a spinner otherwise; shown only when
    /// standard error is a terminal.
    pub fn new(what: &str, noun: &'static str, total_bytes: Option<u64>) -> Progress {
        if !ENABLED.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = match total_bytes {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} {spinner} {bytes} {binary_bytes_per_sec} {elapsed} {msg}")
                    .expect("valid template"),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Progress {
            bar: Some(bar),
            items: AtomicU64::new(0),
            noun,
        }
    }

    pub fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn item(&self) {
        if let Some(b) = &self.bar {
            let n = self.items.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(64) {
                b.set_message(format!("{n} {}", self.noun));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
