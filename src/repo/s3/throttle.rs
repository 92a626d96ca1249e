//! `--limit-upload` / `--limit-download`: a token bucket per direction, so
//! that a backup over a shared link leaves room for everyone else. Bytes
//! are counted as they are sent or received; a transfer that runs ahead of
//! the rate waits. Bursts are bounded to one second's worth.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    /// Bytes per second; 0: no limit.
    rate: u64,
    /// When the bucket was last filled, and the bytes it held then (may go
    /// negative: a debt paid by waiting).
    state: Mutex<(Instant, f64)>,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            state: Mutex::new((Instant::now(), rate as f64)),
        }
    }

    /// Count `bytes` as moved, waiting first as long as the rate asks.
    pub fn take(&self, bytes: u64) {
        if self.rate == 0 || bytes == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().expect("throttle lock");
            let now = Instant::now();
            let rate = self.rate as f64;
            let filled = (s.1 + now.duration_since(s.0).as_secs_f64() * rate).min(rate);
            let left = filled - bytes as f64;
            *s = (now, left);
            if left < 0.0 {
                Duration::from_secs_f64(-left / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_holds_transfers_to_the_rate_after_a_one_second_burst() {
        let t = Throttle::new(1 << 20);
        let t0 = Instant::now();
        // One second of burst, then four more megabytes at 1 MiB/s.
        for _ in 0..20 {
            t.take(256 << 10);
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(3800), "{took:?}");
        assert!(took < Duration::from_secs(8), "{took:?}");
        let free = Throttle::new(0);
        let t0 = Instant::now();
        free.take(1 << 40);
        assert!(t0.elapsed() < Duration::from_millis(50));
    }
}
