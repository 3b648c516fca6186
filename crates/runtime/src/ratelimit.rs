//! Token buckets, and a limiter of log lines built on one: a flood of bad requests (handshakes,
//! logins, refused forwards) must not turn into a flood of log lines. Used by every role: the
//! manager's per-session frame limit and its refusal logs, the core node's login and forwarding
//! warnings.
//!
//! Time is passed in, so the arithmetic is testable without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets through at most `burst` log lines, refilled at `per_second`, and counts the rest so
/// the next line that passes can say how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    bucket: Mutex<TokenBucket>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter of `per_second` lines, bursts of `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        LogLimiter {
            bucket: Mutex::new(TokenBucket::new(per_second, burst, Instant::now())),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed since the last one),
    /// `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        let ok = self
            .bucket
            .lock()
            .map(|mut b| b.take(Instant::now()))
            .unwrap_or(true);
        if ok {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `" (N similar messages suppressed)"` or nothing.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar messages suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200.0, 400.0, t0);
        let passed = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(passed, 400);
        // One second later: 200 more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..1000).filter(|_| b.take(t1)).count();
        assert_eq!(passed, 200);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        let passed = (0..1000).filter(|_| b.take(t2)).count();
        assert_eq!(passed, 400);
    }

    #[test]
    fn steady_rate_below_the_limit_always_passes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200.0, 400.0, t0);
        for i in 0..10_000u32 {
            // 100 frames/s for 100 s.
            assert!(b.take(t0 + Duration::from_millis(u64::from(i) * 10)));
        }
    }

    #[test]
    fn log_limiter_counts_suppressed_lines() {
        let l = LogLimiter::new(0.001, 2.0);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(suppressed_note(2), " (2 similar messages suppressed)");
        assert_eq!(suppressed_note(0), "");
    }
}
