//! Rate-limited logging for the lines a guest can trigger.
//!
//! A hostile guest can make a device log on every register access or every descriptor it hands
//! over (one virtio-rng chain can hold 65,535 indirect descriptors), and so fill the host's disk
//! or journal and keep the event loop busy formatting. Every such site logs through
//! [`log_limited!`](crate::log_limited) (or [`warn_limited!`](crate::warn_limited),
//! [`error_limited!`](crate::error_limited), [`info_limited!`](crate::info_limited)): each call
//! site has its own [`LogLimiter`], which lets [`LINES_PER_INTERVAL`] lines through per
//! [`INTERVAL`] and counts the ones it drops. The first line let through after a drop is preceded
//! by one line with that count, so nothing is hidden without a trace.
//!
//! Lines the guest cannot repeat at will (set-up, the VMM's own failures) use `log` directly.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;
pub use log::Level;

/// Lines one call site may log per [`INTERVAL`].
pub const LINES_PER_INTERVAL: u32 = 10;
/// The window [`LINES_PER_INTERVAL`] applies to.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, after a line saying that `suppressed` lines were dropped if that is not 0.
    Log { suppressed: u64 },
    /// Drop it (it is counted).
    Suppress,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The budget of one call site: [`LINES_PER_INTERVAL`] lines per [`INTERVAL`]. Shared by every
/// thread that reaches the site (vCPU threads run the MMIO register protocol, the event loop the
/// queues), hence the lock; it is held only to update three fields, never while logging.
#[derive(Debug)]
pub struct LogLimiter {
    state: Mutex<State>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter {
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// The verdict for a line logged now.
    pub fn check(&self) -> Verdict {
        self.check_at(now())
    }

    /// The verdict for a line logged at `now`. A window starts at the first line after the
    /// previous one ended; a clock that goes backwards keeps the current window.
    pub fn check_at(&self, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = match s.window_start {
            Some(start) => now.saturating_duration_since(start) >= INTERVAL,
            None => true,
        };
        if expired {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged < LINES_PER_INTERVAL {
            s.logged += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut s.suppressed),
            }
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            Verdict::Suppress
        }
    }
}

#[cfg(not(test))]
fn now() -> Instant {
    Instant::now()
}

#[cfg(test)]
fn now() -> Instant {
    testing::FAKE_NOW
        .with(std::cell::Cell::get)
        .unwrap_or_else(Instant::now)
}

/// `log!(level, ...)` through a limiter of its own (one per call site): at most
/// [`LINES_PER_INTERVAL`] lines per [`INTERVAL`], then a count of the dropped ones when lines
/// resume. Nothing is evaluated or counted when `level` is disabled.
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        let level: $crate::log_limit::Level = $level;
        if $crate::log_limit::__log::log_enabled!(level) {
            if let $crate::log_limit::Verdict::Log { suppressed } = LIMITER.check() {
                if suppressed > 0 {
                    $crate::log_limit::__log::log!(
                        level,
                        "{} similar lines suppressed (at most {} per {} s from one place)",
                        suppressed,
                        $crate::log_limit::LINES_PER_INTERVAL,
                        $crate::log_limit::INTERVAL.as_secs()
                    );
                }
                $crate::log_limit::__log::log!(level, $($arg)+);
            }
        }
    }};
}

/// [`log_limited!`] at warn level.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!($crate::log_limit::Level::Warn, $($arg)+) };
}

/// [`log_limited!`] at error level.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!($crate::log_limit::Level::Error, $($arg)+) };
}

/// [`log_limited!`] at info level.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::log_limited!($crate::log_limit::Level::Info, $($arg)+) };
}

/// For tests: a logger that records the lines of the threads that ask for it, and a clock each
/// thread can stop and move by hand (no test depends on how fast it runs).
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::{Cell, RefCell};
    use std::sync::Once;
    use std::time::{Duration, Instant};

    use log::{Level, LevelFilter, Log, Metadata, Record};

    thread_local! {
        pub(super) static FAKE_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
        static LINES: RefCell<Option<Vec<(Level, String)>>> = const { RefCell::new(None) };
    }

    struct Capture;

    impl Log for Capture {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            LINES.with(|l| {
                if let Some(lines) = l.borrow_mut().as_mut() {
                    lines.push((record.level(), record.args().to_string()));
                }
            });
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture;
    static INSTALL: Once = Once::new();

    /// Runs `f` and returns what it logged on this thread (other threads are not recorded).
    pub fn capture(f: impl FnOnce()) -> Vec<(Level, String)> {
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURE).expect("no other logger in the devices tests");
            log::set_max_level(LevelFilter::Trace);
        });
        LINES.with(|l| *l.borrow_mut() = Some(Vec::new()));
        f();
        LINES.with(|l| l.borrow_mut().take()).unwrap_or_default()
    }

    /// Stops this thread's clock at an arbitrary instant.
    pub fn freeze_clock() {
        FAKE_NOW.with(|c| c.set(Some(Instant::now())));
    }

    /// Moves this thread's stopped clock forward.
    pub fn advance_clock(by: Duration) {
        FAKE_NOW.with(|c| c.set(Some(c.get().unwrap_or_else(Instant::now) + by)));
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_limiter_lets_a_few_lines_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..10_000).map(|_| limiter.check_at(t0)).collect();
        let logged = verdicts.iter().filter(|v| **v != Verdict::Suppress).count();
        assert_eq!(logged, LINES_PER_INTERVAL as usize);
        assert!(verdicts[..LINES_PER_INTERVAL as usize]
            .iter()
            .all(|v| *v == Verdict::Log { suppressed: 0 }));
        // Still inside the window: dropped.
        assert_eq!(
            limiter.check_at(t0 + INTERVAL - Duration::from_millis(1)),
            Verdict::Suppress
        );
        // The next window reports every dropped line once.
        let dropped = 10_000 - u64::from(LINES_PER_INTERVAL) + 1;
        assert_eq!(
            limiter.check_at(t0 + INTERVAL),
            Verdict::Log {
                suppressed: dropped
            }
        );
        assert_eq!(
            limiter.check_at(t0 + INTERVAL),
            Verdict::Log { suppressed: 0 }
        );
        // A clock going backwards stays in the current window.
        assert_eq!(limiter.check_at(t0), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn ten_thousand_triggers_log_a_bounded_number_of_lines_then_the_count() {
        freeze_clock();
        let trigger = |i: u32| crate::warn_limited!("guest did something odd ({i})");
        let lines = capture(|| (0..10_000).for_each(trigger));
        assert_eq!(lines.len(), LINES_PER_INTERVAL as usize, "{lines:?}");
        assert!(lines.iter().all(|(l, _)| *l == Level::Warn));
        assert_eq!(lines[0].1, "guest did something odd (0)");

        advance_clock(INTERVAL);
        let lines = capture(|| trigger(10_000));
        let dropped = 10_000 - LINES_PER_INTERVAL;
        assert_eq!(
            lines,
            vec![
                (
                    Level::Warn,
                    format!(
                        "{dropped} similar lines suppressed (at most {LINES_PER_INTERVAL} per {} \
                         s from one place)",
                        INTERVAL.as_secs()
                    )
                ),
                (Level::Warn, "guest did something odd (10000)".to_string()),
            ]
        );
    }

    #[test]
    fn each_call_site_has_its_own_budget() {
        freeze_clock();
        let lines = capture(|| {
            for _ in 0..100 {
                crate::error_limited!("site a");
                crate::info_limited!("site b");
            }
        });
        let count = |s: &str| lines.iter().filter(|(_, l)| l == s).count();
        assert_eq!(count("site a"), LINES_PER_INTERVAL as usize);
        assert_eq!(count("site b"), LINES_PER_INTERVAL as usize);
    }
}
