//! Rate-limited logging for messages a guest can trigger at will (a bad register write, a
//! bad descriptor, a bad packet): each call site logs at most [`BURST`] messages per
//! [`WINDOW`], and the first message after a quiet spell says how many were suppressed
//! (`suppressed = N`). A guest cannot flood the VMM's log this way.
//!
//! Use [`rate_limited_warn!`](crate::rate_limited_warn), [`rate_limited_error!`](crate::rate_limited_error)
//! or [`rate_limited_debug!`](crate::rate_limited_debug) exactly like `tracing::warn!` and
//! friends (fields, then a format string).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages a call site may log per window.
pub const BURST: u32 = 10;
/// The window the burst is counted over.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A fixed-window limiter; one lives in a `static` per call site.
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl RateLimiter {
    pub const fn new(burst: u32, window: Duration) -> Self {
        RateLimiter {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                emitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a message may be logged at `now`. `Some(n)`: log it, and say that `n`
    /// messages were suppressed since the last one logged; `None`: drop it (counted).
    pub fn check(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging; the counters
        // are still usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let window_over = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if window_over {
            s.window_start = Some(now);
            s.emitted = 0;
        }
        if s.emitted < self.burst {
            s.emitted += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }
}

/// `tracing::event!` at `$level`, limited per call site. Prefer the level macros below.
#[macro_export]
macro_rules! rate_limited_event {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::rate_limit::RateLimiter =
            $crate::rate_limit::RateLimiter::new($crate::rate_limit::BURST, $crate::rate_limit::WINDOW);
        // Only count messages that would be logged at all.
        if ::tracing::enabled!($level) {
            match LIMITER.check(::std::time::Instant::now()) {
                Some(0) => ::tracing::event!($level, $($arg)+),
                Some(suppressed) => ::tracing::event!($level, suppressed, $($arg)+),
                None => {}
            }
        }
    }};
}

/// `tracing::warn!`, at most [`BURST`](crate::rate_limit::BURST) per second per call site.
#[macro_export]
macro_rules! rate_limited_warn {
    ($($arg:tt)+) => { $crate::rate_limited_event!(::tracing::Level::WARN, $($arg)+) };
}

/// `tracing::error!`, at most [`BURST`](crate::rate_limit::BURST) per second per call site.
#[macro_export]
macro_rules! rate_limited_error {
    ($($arg:tt)+) => { $crate::rate_limited_event!(::tracing::Level::ERROR, $($arg)+) };
}

/// `tracing::debug!`, at most [`BURST`](crate::rate_limit::BURST) per second per call site.
#[macro_export]
macro_rules! rate_limited_debug {
    ($($arg:tt)+) => { $crate::rate_limited_event!(::tracing::Level::DEBUG, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    /// Feeds the limiter one call at each offset (ms from the start) and returns which
    /// calls were logged, as (offset, suppressed count).
    fn run(burst: u32, offsets_ms: &[u64]) -> Vec<(u64, u64)> {
        let l = RateLimiter::new(burst, Duration::from_secs(1));
        let t0 = Instant::now();
        offsets_ms
            .iter()
            .filter_map(|&ms| {
                l.check(t0 + Duration::from_millis(ms))
                    .map(|suppressed| (ms, suppressed))
            })
            .collect()
    }

    #[test]
    fn limiter_allows_a_burst_then_reports_what_it_suppressed() {
        type Case = (u32, Vec<u64>, Vec<(u64, u64)>);
        let cases: Vec<(&str, Case)> = vec![
            (
                "under the burst: everything, nothing suppressed",
                (3, vec![0, 1, 2], vec![(0, 0), (1, 0), (2, 0)]),
            ),
            (
                "over the burst: the rest of the window is dropped",
                (2, vec![0, 1, 2, 3, 999], vec![(0, 0), (1, 0)]),
            ),
            (
                "next window: logs again and counts the dropped",
                (
                    2,
                    vec![0, 1, 2, 3, 1000, 1001],
                    vec![(0, 0), (1, 0), (1000, 2), (1001, 0)],
                ),
            ),
            (
                "a flood is bounded per window",
                (
                    1,
                    (0..3000).collect(),
                    vec![(0, 0), (1000, 999), (2000, 999)],
                ),
            ),
            (
                "a quiet spell longer than a window resets",
                (
                    1,
                    vec![0, 5000, 5001, 9000],
                    vec![(0, 0), (5000, 0), (9000, 1)],
                ),
            ),
            ("burst 0 logs nothing", (0, vec![0, 1, 2000], vec![])),
        ];
        crate::devices::virtio::test_utils::check_cases(cases, |(burst, offsets, want)| {
            assert_eq!(run(burst, &offsets), want);
        });
    }

    #[test]
    fn limiter_tolerates_time_going_backwards() {
        let l = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0 - Duration::from_secs(5)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(1)), Some(1));
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn macro_limits_each_call_site_separately() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..101 {
                if i == 100 {
                    // The next window: logging resumes and reports the 90 it dropped.
                    std::thread::sleep(WINDOW);
                }
                crate::rate_limited_warn!(offset = 0x70, "flood {i}");
                if i < 3 {
                    crate::rate_limited_error!("other site {i}");
                }
                // Below the subscriber's level: neither logged nor counted.
                crate::rate_limited_debug!("quiet {i}");
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("flood"), BURST as usize + 1, "{text}");
        assert_eq!(count("suppressed=90"), 1, "{text}");
        assert_eq!(count("other site"), 3, "{text}");
        assert_eq!(count("quiet"), 0, "{text}");
        assert!(text.contains("offset=112"), "fields pass through: {text}");
    }
}
