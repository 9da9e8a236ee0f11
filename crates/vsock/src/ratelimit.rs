//! Rate limiting for log lines a peer can trigger, so a hostile enclave or host client cannot
//! fill the host's logs: at most N lines per window, and a count of what was suppressed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fixed-window limiter.
#[derive(Debug)]
pub struct RateLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// Allows `per_window` events per `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(State {
                start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when the event may be logged, `n` being how many were suppressed since the
    /// last logged one; `None` when it must be dropped.
    pub fn check(&self) -> Option<u64> {
        let mut s = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if now.duration_since(s.start) >= self.window {
            s.start = now;
            s.used = 0;
        }
        if s.used < self.per_window {
            s.used += 1;
            let suppressed = s.suppressed;
            s.suppressed = 0;
            Some(suppressed)
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_counts() {
        let l = RateLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        let l = RateLimiter::new(1, Duration::from_millis(1));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.check(), Some(1));
    }
}
