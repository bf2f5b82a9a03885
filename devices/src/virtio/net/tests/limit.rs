//! virtio-net's rate limiters through the device, on a virtual clock moved by exactly the waits
//! the limiters arm: TX frames wait in the ring, RX frames wait in the tap (not polled meanwhile).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::rate_limiter::{BucketConfig, LimiterConfig, ManualClock, RateLimiter};

fn limiter(clock: &ManualClock, cfg: LimiterConfig) -> Option<RateLimiter> {
    Some(RateLimiter::with_clock(cfg, Arc::new(clock.clone())).unwrap())
}

const PAYLOAD: usize = 1000;

#[test]
fn tx_bandwidth_is_enforced_and_frames_wait_in_the_ring() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    let clock = ManualClock::default();
    let rate = 100_000; // B/s of Ethernet frame
    let burst = 10_000;
    let cfg = LimiterConfig {
        bytes: Some(BucketConfig {
            rate,
            burst,
            one_time_burst: 0,
        }),
        ops: None,
    };
    r.net.set_rate_limiters(None, limiter(&clock, cfg));
    // The transport hands index 1 back for the TX limiter's timer, even with no RX limiter.
    let ids: Vec<usize> = r.net.rate_limiter_fds().iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, vec![1]);
    let f = frame(PAYLOAD, 0x33);
    r.tx.write(0x10_0000, &f);
    let mut elapsed = Duration::ZERO;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 4096];
    let mut throttled = 0;
    while elapsed < Duration::from_secs(20) {
        while r.tx.avail_idx().wrapping_sub(r.tx.used_idx()) < 8 {
            r.tx.add_chain(&[(0x10_0000, f.len() as u32, false)]);
        }
        let before = r.tx.used_idx();
        let state = r.net.process_queue(TX).unwrap();
        let done = r.tx.used_idx().wrapping_sub(before);
        for _ in 0..done {
            let n = r.peer.read(&mut buf).unwrap();
            assert_eq!(n, f.len(), "every used TX chain reached the tap");
            sent += 1;
        }
        assert!(r.peer.read(&mut buf).is_err(), "nothing more than used");
        if state == QueueState::Throttled {
            throttled += 1;
            let w = r.net.tx_limiter.as_ref().unwrap().last_wait().unwrap();
            clock.advance(w);
            elapsed += w;
            r.net.rate_limiter_event(1);
        }
    }
    let bytes = sent * PAYLOAD as u64;
    let measured = (bytes - burst) as f64 / elapsed.as_secs_f64();
    eprintln!("TX bw=100000,bw-burst=10000: {sent} frames in {elapsed:?}: {measured:.0} B/s");
    assert!(throttled > 0);
    assert!(
        (measured - rate as f64).abs() / (rate as f64) < 0.01,
        "{measured}"
    );
}

#[test]
fn rx_frame_rate_is_enforced_and_the_tap_is_not_polled_while_throttled() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    let clock = ManualClock::default();
    let cfg = LimiterConfig {
        bytes: None,
        ops: Some(BucketConfig {
            rate: 50,
            burst: 5,
            one_time_burst: 0,
        }),
    };
    r.net.set_rate_limiters(limiter(&clock, cfg), None);
    let ids: Vec<usize> = r.net.rate_limiter_fds().iter().map(|&(i, _)| i).collect();
    assert_eq!(ids, vec![0]);
    let f = frame(PAYLOAD, 0x44);
    let mut elapsed = Duration::ZERO;
    let mut delivered = 0u64;
    let mut waits = 0;
    while elapsed < Duration::from_secs(20) {
        // Keep the ring stocked and the tap busy.
        while r.rx.avail_idx().wrapping_sub(r.rx.used_idx()) < 8 {
            r.rx.add_chain(&[(0x10_0000, 4096, true)]);
        }
        for _ in 0..4 {
            let _ = r.peer.write(&f);
        }
        let before = r.rx.used_idx();
        if r.net.backend_interest().is_some() {
            r.net.process_backend(EventSet::IN).unwrap();
        } else {
            // Throttled: the tap is out of the event loop until the timer.
            waits += 1;
            let w = r.net.rx_limiter.as_ref().unwrap().last_wait().unwrap();
            clock.advance(w);
            elapsed += w;
            r.net.rate_limiter_event(0);
            assert!(r.net.backend_interest().is_some());
            // The transport serves every queue after a limiter event.
            r.net.process_queue(RX).unwrap();
        }
        let got = r.rx.used_idx().wrapping_sub(before);
        for &(_, len) in &r.rx.used()[r.rx.used().len() - usize::from(got)..] {
            assert_eq!(len as usize, f.len(), "whole frames only");
        }
        delivered += u64::from(got);
    }
    let measured = (delivered - 5) as f64 / elapsed.as_secs_f64();
    eprintln!(
        "RX pps=50,pps-burst=5: {delivered} frames in {elapsed:?}: {measured:.2}/s, {waits} waits"
    );
    assert!(waits > 0);
    assert!((measured - 50.0).abs() / 50.0 < 0.01, "{measured}");
}
