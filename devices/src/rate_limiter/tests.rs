use super::*;

fn limiter(cfg: LimiterConfig) -> (RateLimiter, ManualClock) {
    let clock = ManualClock::default();
    let l = RateLimiter::with_clock(cfg, Arc::new(clock.clone())).unwrap();
    (l, clock)
}

fn bytes(rate: u64, burst: u64) -> LimiterConfig {
    LimiterConfig {
        bytes: Some(BucketConfig {
            rate,
            burst,
            one_time_burst: 0,
        }),
        ops: None,
    }
}

#[test]
fn zero_rates_are_refused() {
    let zero = BucketConfig::per_second(0);
    let cfg = LimiterConfig {
        bytes: Some(zero),
        ops: None,
    };
    assert!(matches!(
        RateLimiter::new(cfg),
        Err(RateLimiterError::ZeroRate("bytes"))
    ));
    let cfg = LimiterConfig {
        bytes: None,
        ops: Some(zero),
    };
    assert!(RateLimiter::new(cfg).is_err());
    assert!(optional(LimiterConfig::default()).unwrap().is_none());
}

#[test]
fn a_full_bucket_lets_its_burst_through_then_waits_for_the_refill() {
    // 1000 B/s, bucket of 500 B.
    let (mut l, clock) = limiter(bytes(1000, 500));
    assert!(l.consume(300));
    assert!(l.consume(200));
    assert_eq!(l.tokens().0, Some(0));
    // 100 more bytes need 100 ms.
    assert!(!l.consume(100));
    assert_eq!(l.last_wait(), Some(Duration::from_millis(100)));
    assert!(l.is_blocked());
    // Blocked: refused until the timer fires, even once the tokens are there.
    clock.advance(Duration::from_millis(100));
    assert!(!l.consume(100));
    assert_eq!(l.stats().throttled, 1, "a blocked limiter does not re-arm");
    l.on_timer();
    assert!(l.consume(100));
    assert_eq!(
        l.stats(),
        LimiterStats {
            ops: 3,
            bytes: 600,
            throttled: 1
        }
    );
}

#[test]
fn the_bucket_never_holds_more_than_its_size() {
    let (mut l, clock) = limiter(bytes(1000, 500));
    clock.advance(Duration::from_secs(3600));
    assert!(l.consume(500));
    assert!(!l.consume(1));
    // One token takes 1 ms: the shortest wait armed anyway.
    assert_eq!(l.last_wait(), Some(MIN_WAIT));
}

#[test]
fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() {
    let (mut l, clock) = limiter(bytes(1000, 500));
    // 2000 bytes with a full 500-byte bucket: admitted, 1500 bytes of debt.
    assert!(l.consume(2000));
    assert_eq!(l.tokens().0, Some(-1500));
    // The next byte waits for the debt and that byte: 1.501 s.
    assert!(!l.consume(1));
    assert_eq!(l.last_wait(), Some(Duration::from_millis(1501)));
    clock.advance(Duration::from_millis(1501));
    l.on_timer();
    assert!(l.consume(1));
    // A large request waits for a full bucket, not for its whole size.
    let (mut l, clock) = limiter(bytes(1000, 500));
    assert!(l.consume(500));
    assert!(!l.consume(5000));
    assert_eq!(l.last_wait(), Some(Duration::from_millis(500)));
    clock.advance(Duration::from_millis(500));
    l.on_timer();
    assert!(l.consume(5000));
}

#[test]
fn one_time_burst_is_spent_first_and_never_refilled() {
    let cfg = LimiterConfig {
        bytes: Some(BucketConfig {
            rate: 100,
            burst: 100,
            one_time_burst: 1000,
        }),
        ops: None,
    };
    let (mut l, clock) = limiter(cfg);
    assert!(l.consume(1000));
    assert_eq!(l.tokens().0, Some(100), "the bucket is untouched");
    assert!(l.consume(100));
    assert!(!l.consume(100));
    clock.advance(Duration::from_secs(100));
    l.on_timer();
    assert!(l.consume(100));
    assert!(!l.consume(1), "the one-time burst did not come back");
}

#[test]
fn both_buckets_must_allow_a_request_and_neither_is_charged_otherwise() {
    let cfg = LimiterConfig {
        bytes: Some(BucketConfig::per_second(1 << 20)),
        ops: Some(BucketConfig {
            rate: 10,
            burst: 2,
            one_time_burst: 0,
        }),
    };
    let (mut l, clock) = limiter(cfg);
    assert!(l.consume(4096));
    assert!(l.consume(4096));
    // Out of operations: 100 ms for the next; bytes are not charged for the refused one.
    assert!(!l.consume(4096));
    assert_eq!(l.last_wait(), Some(Duration::from_millis(100)));
    assert_eq!(l.tokens(), (Some((1 << 20) - 8192), Some(0)));
    clock.advance(Duration::from_millis(100));
    l.on_timer();
    assert!(l.consume(4096));
    assert_eq!(l.stats().ops, 3);
}

#[test]
fn the_longer_wait_of_the_two_buckets_is_armed() {
    let cfg = LimiterConfig {
        bytes: Some(BucketConfig {
            rate: 1000,
            burst: 1000,
            one_time_burst: 0,
        }),
        ops: Some(BucketConfig {
            rate: 100,
            burst: 1,
            one_time_burst: 0,
        }),
    };
    let (mut l, _clock) = limiter(cfg);
    assert!(l.consume(1000));
    // ops needs 10 ms, bytes 300 ms.
    assert!(!l.consume(300));
    assert_eq!(l.last_wait(), Some(Duration::from_millis(300)));
}

#[test]
fn refills_in_tiny_steps_lose_nothing_to_rounding() {
    // 3 B/s refilled every 1 ns for 1 s would round to 0 on every step with whole tokens.
    let (mut l, clock) = limiter(bytes(3, 3));
    assert!(l.consume(3));
    for _ in 0..1000 {
        clock.advance(Duration::from_millis(1));
        l.on_timer();
        // Each call refills; only the last of the 1000 steps completes 3 tokens.
        let _ = l.consume(0);
    }
    assert_eq!(l.tokens().0, Some(3));
}

/// Rate over a long run of random request sizes on a virtual clock, always advanced by exactly
/// the wait the limiter armed: the tokens let through are the bucket plus rate × time.
#[test]
fn enforced_rate_is_the_configured_rate() {
    let rate = 10 << 20; // 10 MiB/s
    let burst = 256 << 10;
    let (mut l, clock) = limiter(bytes(rate, burst));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(60) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 512 + x % (1 << 20); // up to 1 MiB: larger than the bucket too
        while !l.consume(size) {
            let w = l.last_wait().unwrap();
            clock.advance(w);
            elapsed += w;
            l.on_timer();
        }
    }
    let s = l.stats();
    let measured = (s.bytes - burst) as f64 / elapsed.as_secs_f64();
    let err = (measured - rate as f64).abs() / rate as f64;
    assert!(
        err < 0.02,
        "measured {measured:.0} B/s against {rate} B/s ({} waits)",
        s.throttled
    );
}

#[test]
fn the_timer_fires_after_the_wait_on_the_real_clock() {
    // Lower bound only: a loaded machine can make it late, never early.
    let mut l = RateLimiter::new(bytes(100_000, 1000)).unwrap();
    assert!(l.consume(1000));
    let t0 = Instant::now();
    assert!(!l.consume(1000));
    let w = l.last_wait().unwrap();
    // 10 ms less what refilled since the first request.
    assert!(
        w <= Duration::from_millis(10) && w > Duration::from_millis(5),
        "{w:?}"
    );
    let mut pfd = libc::pollfd {
        fd: l.timer_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "the timerfd became readable");
    assert!(t0.elapsed() >= w);
    l.on_timer();
    assert!(l.consume(1000));
    // The timerfd was read: not readable any more.
    // SAFETY: as above.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(n, 0);
}
