//! The growth policies: `growth=linux` (woken only when every pool is full, Linux's chunk
//! sizes, halving when the cap refuses), `growth=proposed` (woken past the threshold, chunks
//! that double, equal the initial pool or are given, again while use stays past it), and the
//! threshold without the global used counter (areas' marks, summed by the worker).

use std::time::{Duration, Instant};

use super::*;
use crate::StatsSnapshot;

fn tlb(cfg: &str) -> Arc<Swiotlb> {
    Swiotlb::from_config_str(cfg).unwrap()
}

fn src(queue: u16) -> DmaSource {
    DmaSource { device: 0, queue }
}

/// Maps `n` one-slot buffers from `queue` (its area, while the initial pool is the only one).
fn map_slots(s: &Swiotlb, queue: u16, n: usize) -> Vec<Mapping> {
    (0..n)
        .map(|_| s.alloc(src(queue), 0, 2048, MapAttrs::default()).unwrap())
        .collect()
}

/// Waits (bounded: the worker runs on its own thread) until `done` holds.
fn wait_for(s: &Swiotlb, what: &str, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let t = Instant::now();
    loop {
        let st = s.stats();
        if done(&st) {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never {what}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sizes(st: &StatsSnapshot) -> Vec<u64> {
    st.pools.iter().map(|p| p.bytes >> 10).collect()
}

#[test]
fn linux_chunks_are_the_initial_pool_capped_at_4m() {
    for (size, chunk) in [("64M", 4 << 20), ("1M", 1 << 20), ("256K", 256 << 10)] {
        let s = tlb(&format!("size={size},initial=off"));
        assert_eq!(s.sh.chunk_bytes(), chunk, "size={size}");
    }
    assert_eq!(tlb("size=1M,chunk=2M").sh.chunk_bytes(), 2 << 20);
}

/// Linux grows only when a map finds every pool full, never before; one chunk per wakeup.
#[test]
fn linux_growth_waits_for_exhaustion() {
    let s = tlb("size=1M,areas=1");
    let held = map_slots(&s, 0, 511);
    assert!(!s.sh.sig.is_kicked(), "99.8 % used is not full");
    assert_eq!(s.stats().worker_wakeups, 0);
    // Two slots do not fit: a transient pool now, and the worker adds a 1 MiB chunk.
    let t = s.alloc(src(0), 0, 4096, MapAttrs::default()).unwrap();
    assert_eq!(s.stats().transient_created, 1);
    let st = wait_for(&s, "extended", |st| st.extensions == 1);
    // The worker may list its chunk before or after the transient pool (in Linux they are on
    // different lists: the pool's and the device's), so only the initial pool's place is fixed.
    let mut pools = sizes(&st);
    pools[1..].sort_unstable();
    assert_eq!(pools, [1024, 4, 1024]);
    assert_eq!(st.threshold_checks, 0);
    for m in held.into_iter().chain([t]) {
        s.free(src(0), m.addr).unwrap();
    }
}

/// `swiotlb_dyn_alloc` halves the chunk when it cannot be had (here: the cap), down to the
/// smallest; below that the extension fails, counted.
#[test]
fn linux_chunks_halve_under_the_cap() {
    let s = tlb("size=256K,areas=1,chunk=4M,cap=2560K,transient=off");
    let held = map_slots(&s, 0, 128);
    assert!(s.alloc(src(0), 0, 2048, MapAttrs::default()).is_err());
    let st = wait_for(&s, "extended", |st| st.extensions == 1);
    assert_eq!(sizes(&st), [256, 2048], "4 MiB refused, 2 MiB taken");
    let more = map_slots(&s, 0, 1024);
    assert!(s.alloc(src(0), 0, 2048, MapAttrs::default()).is_err());
    // 256 KiB left under the cap: 4, 2 and 1 MiB refused, and 1 MiB is the smallest.
    let st = wait_for(&s, "failed", |st| st.extension_failures == 1);
    assert_eq!((st.extensions, st.shared_bytes), (1, 2304 << 10));
    for m in held.into_iter().chain(more) {
        s.free(src(0), m.addr).unwrap();
    }
}

/// The proposal grows in the background once use passes the threshold, before the pools are
/// full: `double` adds what the pools hold, `initial` the initial pool's size, or a size.
#[test]
fn proposed_growth_runs_ahead_of_the_threshold() {
    for (chunk, second) in [("double", 1024), ("initial", 512), ("256K", 256)] {
        let s = tlb(&format!(
            "size=512K,areas=1,growth=proposed,chunk={chunk},transient=off"
        ));
        // 70 % of 256 slots is 179.2: the 180th slot wakes the worker.
        let mut held = map_slots(&s, 0, 179);
        assert!(!s.sh.sig.is_kicked());
        held.extend(map_slots(&s, 0, 1));
        let st = wait_for(&s, "extended", |st| st.extensions == 1);
        let first = if chunk == "256K" { 256 } else { 512 };
        assert_eq!(sizes(&st), [512, first], "chunk={chunk}");
        // Past 70 % of the new total: the second chunk.
        let total = st.slots_total as usize;
        held.extend(map_slots(&s, 0, (total * 7).div_ceil(10) - 180));
        let st = wait_for(&s, "extended twice", |st| st.extensions == 2);
        assert_eq!(sizes(&st), [512, first, second], "chunk={chunk}");
        assert_eq!(st.failures, crate::Failures::default());
        for m in held {
            s.free(src(0), m.addr).unwrap();
        }
    }
}

/// One wakeup adds chunks until use is below the threshold again, within the cap.
#[test]
fn proposed_growth_adds_until_below_the_threshold_within_the_cap() {
    let s = tlb("size=512K,areas=1,growth=proposed,threshold=50,chunk=256K,cap=1M");
    let held = map_slots(&s, 0, 254);
    // 254 slots need 508 in all to be under 50 %: the pools grow by 256 KiB (128 slots)
    // twice, whatever the worker's timing.
    let st = wait_for(&s, "below the threshold", |st| {
        st.slots_used * 100 < 50 * st.slots_total
    });
    assert_eq!(sizes(&st), [512, 256, 256]);
    assert_eq!(st.shared_bytes, 1 << 20);
    // Filling more passes the cap: growth stops there, counted.
    let more = map_slots(&s, 0, 200);
    let st = wait_for(&s, "capped", |st| st.extension_failures > 0);
    assert_eq!(st.shared_bytes_hiwater, 1 << 20);
    for m in held.into_iter().chain(more) {
        s.free(src(0), m.addr).unwrap();
    }
}

/// Without the global counter, areas wake the worker at marks it sets: it sums every area and
/// grows only when the total is past the threshold, which it cannot pass before some area
/// reaches its mark.
#[test]
fn proposed_threshold_without_the_total_counter() {
    let s = tlb("size=512K,areas=2,growth=proposed,total-used=off,chunk=initial,transient=off");
    let checks = |n| move |st: &StatsSnapshot| st.threshold_checks == n;
    // 256 slots, goal 180 (70 %): marks at 0 + 90 in each area.
    let mut held = map_slots(&s, 0, 89);
    assert!(!s.sh.sig.is_kicked());
    held.extend(map_slots(&s, 0, 1));
    // Area 0 reached 90: the worker sums 90 < 180, sets marks 90 + 45 and 0 + 45.
    let st = wait_for(&s, "checked once", checks(1));
    assert_eq!(st.extensions, 0);
    held.extend(map_slots(&s, 1, 44));
    assert!(!s.sh.sig.is_kicked());
    held.extend(map_slots(&s, 1, 1));
    // 135 < 180: marks 90 + 23 and 45 + 23.
    let st = wait_for(&s, "checked twice", checks(2));
    assert_eq!(st.extensions, 0);
    held.extend(map_slots(&s, 0, 22));
    held.extend(map_slots(&s, 1, 22));
    assert!(!s.sh.sig.is_kicked(), "179 slots, no mark reached");
    held.extend(map_slots(&s, 1, 1));
    // 180: past the threshold; a 512 KiB chunk, then 180 of 512 is below it: new marks.
    wait_for(&s, "extended", |st| st.extensions == 1);
    let st = wait_for(&s, "re-armed", checks(4));
    assert_eq!(sizes(&st), [512, 512]);
    assert_eq!(st.slots_used, 180);
    for m in held {
        s.free(src(0), m.addr).unwrap();
    }
}
