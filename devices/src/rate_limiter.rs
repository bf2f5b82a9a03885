//! Rate limiters for device I/O: token buckets for bytes and for operations, with bursts, in the
//! manner of Firecracker's `RateLimiter` (its design, not its code).
//!
//! * A [`TokenBucket`] holds up to `burst` tokens and gains `rate` tokens per second; a one-time
//!   burst, spent first and never refilled, can sit on top (a booting guest reading its root
//!   file system). The budget is kept in token-nanoseconds, so a refill loses nothing to
//!   rounding however often it runs.
//! * A request costs one operation and its bytes. It is admitted when every bucket holds its
//!   cost, or, for a request larger than a bucket (a 1 MiB read under a 256 KiB burst), when
//!   that bucket is full: the bucket then goes into debt, and the next request waits until the
//!   debt is paid back. Over time a bucket therefore lets through exactly `rate` tokens per
//!   second plus its bursts, whatever the sizes of the requests.
//! * A request that does not fit **waits**; it never fails. The device puts the chain back in
//!   the ring (`DmaQueue::undo_pop`), stops serving the queue ([`QueueState::Throttled`]) and the
//!   limiter arms its timerfd for the moment the bucket will hold the missing tokens. The timerfd
//!   is on the event loop; when it fires the transport has the device serve its queues again.
//!   Driver notifications stay disabled meanwhile, so a throttled guest does not cause an exit
//!   per request either.
//!
//! The clock is a [`Clock`] so tests can run the arithmetic on a virtual clock.
//!
//! [`QueueState::Throttled`]: crate::virtio::QueueState::Throttled

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

const NS_PER_SEC: i128 = 1_000_000_000;
/// Shortest timer the limiter arms: shorter waits are rounded up to it, so a guest just short of
/// tokens cannot make the event loop spin on sub-microsecond timers. Nothing is lost: the
/// bucket keeps filling while the device waits.
pub const MIN_WAIT: Duration = Duration::from_millis(1);

/// One token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens (bytes or operations) per second, > 0.
    pub rate: u64,
    /// The bucket's size: tokens that may go at once after a quiet period. 0: one second's
    /// worth (`rate`).
    #[serde(default)]
    pub burst: u64,
    /// Tokens available once, at the start, on top of the bucket (never refilled).
    #[serde(default)]
    pub one_time_burst: u64,
}

impl BucketConfig {
    /// `rate` tokens per second, a bucket of one second's worth, no one-time burst.
    pub fn per_second(rate: u64) -> Self {
        BucketConfig {
            rate,
            burst: 0,
            one_time_burst: 0,
        }
    }

    fn size(&self) -> u64 {
        if self.burst == 0 {
            self.rate
        } else {
            self.burst
        }
    }
}

/// A limiter's settings: a bytes bucket, an operations bucket, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterConfig {
    #[serde(default)]
    pub bytes: Option<BucketConfig>,
    #[serde(default)]
    pub ops: Option<BucketConfig>,
}

impl LimiterConfig {
    /// Whether it limits anything.
    pub fn is_set(&self) -> bool {
        self.bytes.is_some() || self.ops.is_some()
    }
}

#[derive(Debug, Error)]
pub enum RateLimiterError {
    #[error("a rate limiter's {0} rate must be above 0")]
    ZeroRate(&'static str),
    #[error("cannot create the rate limiter's timerfd: {0}")]
    Timer(io::Error),
}

/// Monotonic time in nanoseconds from an arbitrary start.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ns(&self) -> u64;
}

/// The host's monotonic clock (`Instant`).
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to (tests, fuzzing).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A token bucket (see the module documentation).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    size: u64,
    /// Tokens × 10⁹ (token-nanoseconds); negative while in debt.
    budget: i128,
    one_time: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`.
    pub fn new(cfg: BucketConfig, now_ns: u64) -> Self {
        TokenBucket {
            rate: cfg.rate,
            size: cfg.size(),
            budget: i128::from(cfg.size()) * NS_PER_SEC,
            one_time: cfg.one_time_burst,
            last_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let cap = i128::from(self.size) * NS_PER_SEC;
        let gained = i128::from(dt).saturating_mul(i128::from(self.rate));
        self.budget = self.budget.saturating_add(gained).min(cap);
    }

    /// Whole tokens in the bucket (without the one-time burst; negative in debt).
    pub fn tokens(&self) -> i128 {
        self.budget.div_euclid(NS_PER_SEC)
    }

    /// `None` if `n` tokens may go now, else how long until they may (after a refill).
    fn wait_for(&self, n: u64) -> Option<Duration> {
        let need = n.saturating_sub(self.one_time).min(self.size);
        let want = i128::from(need) * NS_PER_SEC;
        if self.budget >= want {
            return None;
        }
        let rate = i128::from(self.rate.max(1));
        let ns = (want - self.budget + rate - 1) / rate;
        Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    fn take(&mut self, n: u64) {
        let from_one_time = n.min(self.one_time);
        self.one_time -= from_one_time;
        self.budget -= i128::from(n - from_one_time) * NS_PER_SEC;
    }
}

/// What a limiter let through, and how often a request had to wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    pub ops: u64,
    pub bytes: u64,
    /// Requests refused for now (each then waited for the timer).
    pub throttled: u64,
}

/// A nonblocking `CLOCK_MONOTONIC` timerfd (vmm-sys-util's blocks on read).
#[derive(Debug)]
struct Timer(OwnedFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: no pointers; the return value is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: timerfd_create returned a fresh fd that nothing else owns.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `d` from now (relative: flags 0).
    fn arm(&self, d: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(d.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is a valid itimerspec that outlives the call; no old value is asked.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiration count if any (nonblocking).
    fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; an error (EAGAIN) is ignored.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// A bytes bucket and an operations bucket with a timerfd that says when to try again.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    clock: Arc<dyn Clock>,
    timer: Timer,
    blocked: bool,
    /// The last wait armed (tests move a [`ManualClock`] by it).
    last_wait: Option<Duration>,
    stats: LimiterStats,
}

impl RateLimiter {
    /// A limiter on the host's monotonic clock.
    pub fn new(cfg: LimiterConfig) -> Result<Self, RateLimiterError> {
        Self::with_clock(cfg, Arc::new(MonotonicClock::default()))
    }

    pub fn with_clock(cfg: LimiterConfig, clock: Arc<dyn Clock>) -> Result<Self, RateLimiterError> {
        if cfg.bytes.is_some_and(|b| b.rate == 0) {
            return Err(RateLimiterError::ZeroRate("bytes"));
        }
        if cfg.ops.is_some_and(|b| b.rate == 0) {
            return Err(RateLimiterError::ZeroRate("operations"));
        }
        let now = clock.now_ns();
        Ok(RateLimiter {
            bytes: cfg.bytes.map(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.map(|b| TokenBucket::new(b, now)),
            clock,
            timer: Timer::new().map_err(RateLimiterError::Timer)?,
            blocked: false,
            last_wait: None,
            stats: LimiterStats::default(),
        })
    }

    /// Takes one operation and `bytes` bytes if both buckets allow it. Otherwise takes nothing,
    /// arms the timer for when they will, and refuses everything until [`RateLimiter::on_timer`].
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now_ns();
        let mut wait: Option<Duration> = None;
        for (bucket, n) in [(&mut self.ops, 1), (&mut self.bytes, bytes)] {
            if let Some(b) = bucket {
                b.refill(now);
                if let Some(w) = b.wait_for(n) {
                    wait = Some(wait.map_or(w, |old| old.max(w)));
                }
            }
        }
        if let Some(w) = wait {
            let w = w.max(MIN_WAIT);
            self.blocked = true;
            self.last_wait = Some(w);
            self.stats.throttled += 1;
            if let Err(e) = self.timer.arm(w) {
                // Without a timer nothing would wake the queue: let the request through.
                crate::error_limited!("rate limiter: arming the timerfd: {e}; not limiting");
                self.blocked = false;
            } else {
                return false;
            }
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        self.stats.ops += 1;
        self.stats.bytes = self.stats.bytes.saturating_add(bytes);
        true
    }

    /// Whether requests wait for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timer fired (or a test says it did): reads the timerfd and lets requests try again.
    pub fn on_timer(&mut self) {
        self.timer.drain();
        self.blocked = false;
    }

    /// The timerfd to poll for readability.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.0.as_raw_fd()
    }

    /// The wait last armed on the timer.
    pub fn last_wait(&self) -> Option<Duration> {
        self.last_wait
    }

    pub fn stats(&self) -> LimiterStats {
        self.stats
    }

    /// Whole tokens in the (bytes, ops) buckets, for tests.
    pub fn tokens(&self) -> (Option<i128>, Option<i128>) {
        (
            self.bytes.as_ref().map(TokenBucket::tokens),
            self.ops.as_ref().map(TokenBucket::tokens),
        )
    }
}

/// An optional limiter: what devices hold.
pub fn optional(cfg: LimiterConfig) -> Result<Option<RateLimiter>, RateLimiterError> {
    cfg.is_set().then(|| RateLimiter::new(cfg)).transpose()
}

#[cfg(test)]
mod tests;
