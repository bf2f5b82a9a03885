//! The rate limiter through the device: requests wait (never fail) and the rate let through is
//! the configured one, measured on a virtual clock moved by exactly the waits the limiter arms.

use std::sync::Arc;
use std::time::Duration;

use super::super::*;
use super::{disk, hdr, DATA, HDR, STATUS};
use crate::rate_limiter::{BucketConfig, LimiterConfig, ManualClock, RateLimiter};
use crate::virtio::test_utils::*;

const REQ: u32 = 4096;

struct Run {
    completed: u64,
    elapsed: Duration,
    throttled: u64,
}

/// Reads 4 KiB requests, at most 4 outstanding (3 descriptors each in a 16-entry table), for
/// `duration` of virtual time; every request must come back OK with its full length.
fn run_limited(cfg: LimiterConfig, duration: Duration) -> Run {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut blk = Block::new(f, BlockConfig::default()).unwrap();
    let clock = ManualClock::default();
    blk.set_rate_limiter(Some(
        RateLimiter::with_clock(cfg, Arc::new(clock.clone())).unwrap(),
    ));
    let mut t = TestQueue::new(&mem, 16);
    let (irq, _irqfd) = test_interrupt();
    blk.activate(vec![t.dma_queue()], irq).unwrap();
    hdr(&t, VIRTIO_BLK_T_IN, 8);
    let mut elapsed = Duration::ZERO;
    let mut seen = 0u16;
    let mut completed = 0u64;
    while elapsed < duration {
        while t.avail_idx().wrapping_sub(t.used_idx()) < 4 {
            t.add_chain(&[(HDR, 16, false), (DATA, REQ, true), (STATUS, 1, true)]);
        }
        match blk.process_queue(0).unwrap() {
            QueueState::Throttled => {
                let w = blk.limiter.as_ref().unwrap().last_wait().unwrap();
                clock.advance(w);
                elapsed += w;
                blk.rate_limiter_event(0);
            }
            QueueState::Drained | QueueState::MoreWork => {}
        }
        let used = t.used();
        let new = t.used_idx().wrapping_sub(seen) as usize;
        for &(_, len) in &used[used.len() - new..] {
            assert_eq!(len, REQ + 1, "a request failed or was cut short");
        }
        assert_eq!(t.read(STATUS, 1)[0], VIRTIO_BLK_S_OK);
        seen = t.used_idx();
        completed += new as u64;
    }
    let throttled = blk.limiter.as_ref().unwrap().stats().throttled;
    Run {
        completed,
        elapsed,
        throttled,
    }
}

fn within(measured: f64, configured: f64, tolerance: f64) -> bool {
    (measured - configured).abs() / configured < tolerance
}

#[test]
fn bandwidth_limit_is_enforced_through_the_device() {
    let rate = 1 << 20; // 1 MiB/s
    let burst = 64 << 10;
    let cfg = LimiterConfig {
        bytes: Some(BucketConfig {
            rate,
            burst,
            one_time_burst: 0,
        }),
        ops: None,
    };
    let r = run_limited(cfg, Duration::from_secs(30));
    let bytes = r.completed * u64::from(REQ);
    let measured = (bytes - burst) as f64 / r.elapsed.as_secs_f64();
    eprintln!(
        "bw=1M,bw-burst=64K: {} requests, {bytes} B in {:?} virtual: {measured:.0} B/s, {} waits",
        r.completed, r.elapsed, r.throttled
    );
    assert!(r.throttled > 0);
    // One request of slack over 30 s is 0.01 %; the 1 ms minimum wait costs nothing here (a
    // 4 KiB request takes 3.9 ms of tokens).
    assert!(within(measured, rate as f64, 0.005), "{measured} B/s");
}

#[test]
fn iops_limit_is_enforced_through_the_device() {
    let cfg = LimiterConfig {
        bytes: None,
        ops: Some(BucketConfig {
            rate: 200,
            burst: 10,
            one_time_burst: 0,
        }),
    };
    let r = run_limited(cfg, Duration::from_secs(30));
    let measured = (r.completed - 10) as f64 / r.elapsed.as_secs_f64();
    eprintln!(
        "iops=200,iops-burst=10: {} requests in {:?} virtual: {measured:.1}/s, {} waits",
        r.completed, r.elapsed, r.throttled
    );
    assert!(within(measured, 200.0, 0.005), "{measured} ops/s");
}

#[test]
fn a_throttled_request_waits_in_the_ring_and_completes_after_the_timer() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut blk = Block::new(f, BlockConfig::default()).unwrap();
    let clock = ManualClock::default();
    let cfg = LimiterConfig {
        bytes: None,
        ops: Some(BucketConfig {
            rate: 10,
            burst: 1,
            one_time_burst: 0,
        }),
    };
    blk.set_rate_limiter(Some(
        RateLimiter::with_clock(cfg, Arc::new(clock.clone())).unwrap(),
    ));
    let mut t = TestQueue::new(&mem, 16);
    let (irq, _irqfd) = test_interrupt();
    blk.activate(vec![t.dma_queue()], irq).unwrap();
    hdr(&t, VIRTIO_BLK_T_IN, 0);
    t.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    t.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(blk.process_queue(0).unwrap(), QueueState::Throttled);
    assert_eq!(t.used_idx(), 1, "the second request waits");
    // A notification meanwhile changes nothing.
    assert_eq!(blk.process_queue(0).unwrap(), QueueState::Throttled);
    assert_eq!(t.used_idx(), 1);
    // Reset and re-activation do not refill the bucket.
    blk.reset();
    let mut t = TestQueue::new(&mem, 16);
    let (irq, _irqfd) = test_interrupt();
    blk.activate(vec![t.dma_queue()], irq).unwrap();
    t.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(blk.process_queue(0).unwrap(), QueueState::Throttled);
    assert_eq!(t.used_idx(), 0);
    clock.advance(blk.limiter.as_ref().unwrap().last_wait().unwrap());
    blk.rate_limiter_event(0);
    assert_eq!(blk.process_queue(0).unwrap(), QueueState::Drained);
    assert_eq!(t.used(), vec![(0, 513)]);
    assert_eq!(t.read(STATUS, 1)[0], VIRTIO_BLK_S_OK);
}
