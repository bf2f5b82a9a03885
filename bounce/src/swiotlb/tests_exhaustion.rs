//! The exhaustion policies: `fail`, `transient` (Linux), `throttle` (Kelley's RFC: the
//! semaphore, its FIFO hand-over, the high and low marks, maps that do not opt in) and `wait`
//! (Murphy: woken by unmaps, by the worker at the timeout, then synchronous growth within the
//! cap), with deferred maps answered `WouldBlock` and their wakers counted.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use super::*;
use crate::error::BlockCause;
use crate::StatsSnapshot;

fn tlb(cfg: &str) -> Arc<Swiotlb> {
    Swiotlb::from_config_str(cfg).unwrap()
}

fn src(queue: u16) -> DmaSource {
    DmaSource { device: 0, queue }
}

const BLOCK: MapAttrs = MapAttrs {
    min_align_mask: 0,
    alloc_align_mask: 0,
    may_block: true,
};

/// One waker per source, counting its calls.
struct Wakes(Vec<Arc<AtomicUsize>>);

impl Wakes {
    fn register(s: &Swiotlb, n: u16) -> Wakes {
        let w: Vec<_> = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        for (q, c) in w.iter().enumerate() {
            let c = c.clone();
            let waker: Arc<dyn crate::DmaWaker> = Arc::new(move || {
                c.fetch_add(1, SeqCst);
            });
            s.set_waker(src(q as u16), Some(waker));
        }
        Wakes(w)
    }

    fn get(&self, q: u16) -> usize {
        self.0[q as usize].load(SeqCst)
    }
}

fn slots(s: &Swiotlb, n: usize) -> Vec<Mapping> {
    (0..n)
        .map(|_| s.alloc(src(9), 0, 2048, MapAttrs::default()).unwrap())
        .collect()
}

fn blocked(r: Result<Mapping, DmaError>) -> Option<BlockCause> {
    match r {
        Err(DmaError::WouldBlock { cause, .. }) => Some(cause),
        _ => None,
    }
}

fn wait_for(s: &Swiotlb, what: &str, done: impl Fn(&StatsSnapshot) -> bool) {
    let t = Instant::now();
    while !done(&s.stats()) {
        assert!(t.elapsed() < Duration::from_secs(10), "never {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn fail_and_transient() {
    let s = tlb("size=256K,areas=1,dynamic=off,exhaustion=fail");
    let held = slots(&s, 128);
    for attrs in [MapAttrs::default(), BLOCK] {
        let r = s.alloc(src(0), 0, 2048, attrs);
        assert_eq!(r.err(), Some(DmaError::NoSpace { len: 2048 }));
    }
    let st = s.stats();
    assert_eq!((st.transient_created, st.failures.no_space), (0, 2));
    assert_eq!(st.blocking, crate::BlockingStats::default());
    drop(held);
    // Linux: a transient pool, whether the map may block or not.
    let s = tlb("size=256K,areas=1,dynamic=off,exhaustion=transient");
    let _held = slots(&s, 128);
    for attrs in [MapAttrs::default(), BLOCK] {
        s.alloc(src(0), 0, 2048, attrs).unwrap();
    }
    assert_eq!(s.stats().transient_created, 2);
}

/// Past the high mark a map that may block takes the one semaphore; the next waits
/// (`WouldBlock`), and the unmap hands the semaphore to the first waiter, FIFO. Between the
/// marks only a held semaphore throttles (hysteresis); maps that do not opt in never wait.
#[test]
fn throttle_serialises_maps_past_the_marks() {
    // 256 slots: high 179 (70 %), low 166 (65 %).
    let s = tlb("size=512K,areas=1,dynamic=off,exhaustion=throttle");
    let w = Wakes::register(&s, 6);
    let mut filler = slots(&s, 180);
    // Below the marks nothing is throttled; at 180 > 179 the first takes the semaphore.
    let a = s.alloc(src(0), 0, 2048, BLOCK).unwrap();
    assert_eq!(
        blocked(s.alloc(src(1), 0, 2048, BLOCK)),
        Some(BlockCause::Throttled)
    );
    assert_eq!(
        blocked(s.alloc(src(2), 0, 2048, BLOCK)),
        Some(BlockCause::Throttled)
    );
    // Not opted in: mapped at once.
    let d = s.alloc(src(3), 0, 2048, MapAttrs::default()).unwrap();
    let st = s.stats().blocking;
    assert_eq!(
        (st.throttled_high, st.throttle_blocked, st.waiting),
        (3, 2, 2)
    );
    assert_eq!((w.get(1), w.get(2)), (0, 0));
    // a's unmap hands the semaphore to 1, the first waiter; 2 still waits, even retrying.
    s.free(src(0), a.addr).unwrap();
    assert_eq!((w.get(1), w.get(2)), (1, 0));
    assert_eq!(
        blocked(s.alloc(src(2), 0, 2048, BLOCK)),
        Some(BlockCause::Throttled)
    );
    let b = s.alloc(src(1), 0, 2048, BLOCK).unwrap();
    s.free(src(1), b.addr).unwrap();
    assert_eq!(w.get(2), 1);
    let c = s.alloc(src(2), 0, 2048, BLOCK).unwrap();
    // Down to 170 (between the marks) with the semaphore held by c: 4 waits.
    s.free(src(3), d.addr).unwrap();
    for m in filler.drain(..10) {
        s.free(src(9), m.addr).unwrap();
    }
    assert_eq!(
        blocked(s.alloc(src(4), 0, 2048, BLOCK)),
        Some(BlockCause::Throttled)
    );
    assert_eq!(s.stats().blocking.throttled_low, 1);
    s.free(src(2), c.addr).unwrap();
    assert_eq!(w.get(4), 1);
    let e = s.alloc(src(4), 0, 2048, BLOCK).unwrap();
    // Below the low mark: not throttled though the semaphore is held (by e).
    for m in filler.drain(..10) {
        s.free(src(9), m.addr).unwrap();
    }
    let f = s.alloc(src(5), 0, 2048, BLOCK).unwrap();
    let st = s.stats();
    assert_eq!(st.blocking.waiting, 0);
    assert_eq!(st.blocking.wakeups, 3);
    assert_eq!(
        st.failures,
        crate::Failures::default(),
        "a wait is not a failure"
    );
    for m in [e, f].into_iter().chain(filler) {
        s.free(src(9), m.addr).unwrap();
    }
    // The semaphore is free again: nothing waits, nothing is throttled-live.
    assert!(!s.sh.slow_unmap.load(std::sync::atomic::Ordering::Relaxed));
}

/// A map that may block and finds no room waits; the next unmap wakes it once, and its retry
/// maps. Maps that do not opt in go transient, as Linux's.
#[test]
fn wait_is_woken_by_an_unmap() {
    let s = tlb("size=256K,areas=1,dynamic=off,exhaustion=wait,wait-timeout=60m");
    let notifier = Arc::new(crate::EventNotifier::new().unwrap());
    s.set_waker(src(0), Some(notifier.clone()));
    let mut held = slots(&s, 128);
    assert_eq!(
        blocked(s.alloc(src(0), 0, 2048, BLOCK)),
        Some(BlockCause::NoSpace)
    );
    assert_eq!(notifier.drain(), 0);
    let t = s.alloc(src(1), 0, 2048, MapAttrs::default()).unwrap();
    assert_eq!(s.stats().transient_created, 1);
    s.free(src(1), t.addr).unwrap();
    assert_eq!(notifier.drain(), 1, "any unmap may make room");
    s.free(src(9), held.pop().unwrap().addr).unwrap();
    assert_eq!(notifier.drain(), 0, "woken once until it waits again");
    held.push(s.alloc(src(0), 0, 2048, BLOCK).unwrap());
    let st = s.stats().blocking;
    assert_eq!((st.space_blocked, st.wakeups, st.waiting), (1, 1, 0));
    assert_eq!((st.wait_timeouts, st.sync_growths), (0, 0));
}

/// Past the timeout the worker wakes the waiter, and its retry grows the pools on the I/O path
/// (converting there); past the cap that fails, counted.
#[test]
fn wait_times_out_then_grows_synchronously_within_the_cap() {
    let s = tlb("size=256K,areas=1,dynamic=off,exhaustion=wait,wait-timeout=20ms,chunk=1M,convert=tdx,atomic-pool=off");
    let w = Wakes::register(&s, 1);
    let _held = slots(&s, 128);
    assert_eq!(
        blocked(s.alloc(src(0), 0, 2048, BLOCK)),
        Some(BlockCause::NoSpace)
    );
    // No unmap: only the worker, at the deadline, wakes it.
    let t = Instant::now();
    while w.get(0) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the worker never woke it"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let m = s.alloc(src(0), 0, 2048, BLOCK).unwrap();
    let st = s.stats();
    assert_eq!(
        (st.blocking.wait_timeouts, st.blocking.sync_growths),
        (1, 1)
    );
    assert_eq!(
        st.conversions.io_path.to_shared.pages, 256,
        "1 MiB on the I/O path"
    );
    assert_eq!(st.extensions, 0, "not the worker's");
    assert!(st
        .pools
        .iter()
        .any(|p| p.slots_used == 1 && p.kind == "dynamic"));
    s.free(src(0), m.addr).unwrap();
    // A zero timeout grows at once; the cap refuses it here.
    let s = tlb("size=256K,areas=1,dynamic=off,exhaustion=wait,wait-timeout=0ms,chunk=1M,cap=768K");
    let _held = slots(&s, 128);
    assert_eq!(
        s.alloc(src(0), 0, 2048, BLOCK).err(),
        Some(DmaError::CapReached {
            len: 2048,
            cap: 768 << 10
        })
    );
    let st = s.stats();
    assert_eq!(st.blocking.sync_growth_failures, 1);
    assert_eq!(st.failures.cap_reached, 1);
    wait_for(&s, "idle", |st| st.blocking.waiting == 0);
}
