//! Tests of the pool set: errors, addresses, growth, shrink, transient pools, inject mode,
//! lookups, concurrency, and a proptest against a reference model.

use super::*;
use proptest::prelude::*;

const SRC: DmaSource = DmaSource {
    device: 0,
    queue: 0,
};

fn tlb(cfg: &str) -> Arc<Swiotlb> {
    Swiotlb::from_config_str(cfg).unwrap()
}

/// Fills a live mapping's bytes with `tag`.
fn stamp(m: &Mapping, tag: u8) {
    // SAFETY: a live mapping owns `len` bytes at `host_ptr`; callers pass only mappings they
    // have not freed, and no other thread touches them.
    unsafe { std::ptr::write_bytes(m.host_ptr(), tag, m.len) };
}

/// Whether a live mapping's bytes are all `tag` (nothing else wrote into it).
fn stamped(m: &Mapping, tag: u8) -> bool {
    // SAFETY: as in `stamp`.
    let b = unsafe { std::slice::from_raw_parts(m.host_ptr(), m.len) };
    b.iter().all(|&x| x == tag)
}

fn all_free(s: &Swiotlb) -> bool {
    s.sh.pools.load().list.iter().all(|p| p.check_all_free())
}

#[test]
fn bad_addresses_get_specific_errors() {
    let s = tlb("size=1M,areas=1");
    let m = s.alloc(SRC, 0x1000, 3000, MapAttrs::default()).unwrap();
    assert_eq!(
        s.free(SRC, 1).err(),
        Some(DmaError::UnknownAddress { addr: 1 })
    );
    assert_eq!(
        s.free(SRC, m.addr + 2048).err(),
        Some(DmaError::NotMappingStart {
            addr: m.addr + 2048
        })
    );
    assert_eq!(
        s.free(SRC, m.addr + 1).err(),
        Some(DmaError::NotMappingStart { addr: m.addr + 1 })
    );
    assert_eq!(
        s.free(SRC, m.addr).unwrap(),
        Freed {
            orig: 0x1000,
            len: 3000
        }
    );
    assert_eq!(
        s.free(SRC, m.addr).err(),
        Some(DmaError::NotMapped { addr: m.addr })
    );
    assert_eq!(
        s.mapping(SRC, m.addr).err(),
        Some(DmaError::NotMapped { addr: m.addr })
    );
    let st = s.stats();
    assert_eq!(st.failures.unknown_address, 1);
    assert_eq!(st.failures.not_mapping_start, 2);
    assert_eq!(st.failures.not_mapped, 1);
    assert!(all_free(&s));
}

#[test]
fn bounce_addresses_are_the_models_own_and_repeat() {
    let run = || {
        let s = tlb("size=256K,areas=1,dynamic=off,transient=on");
        let mut addrs: Vec<u64> = (0..129)
            .map(|i| {
                s.alloc(SRC, i * 4096, 2048, MapAttrs::default())
                    .unwrap()
                    .addr
            })
            .collect();
        addrs.extend(s.pool_starts());
        addrs
    };
    let a = run();
    assert_eq!(a, run(), "same operations, same bounce addresses");
    assert_eq!(a[0], BOUNCE_BASE);
    // 128 slots fill the initial pool; the 129th is transient, in a pool that starts past
    // the initial one and a gap (an address just past a pool belongs to none).
    let (initial, transient) = (a[129], a[130]);
    assert_eq!(initial, BOUNCE_BASE);
    assert_eq!(a[128], transient);
    assert!(transient >= initial + (256 << 10) + POOL_ALIGN);
}

#[test]
fn worker_start_runs_on_the_worker_and_its_error_is_returned() {
    let cfg = |s: &str| SwiotlbConfig::from_json_or_kv(s).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let start: WorkerStart = Box::new(move || -> Result<(), String> {
        let _ = tx.send(std::thread::current().name().map(String::from));
        Ok(())
    });
    let s = Swiotlb::prepare(cfg("size=256K,dynamic=on")).unwrap();
    assert!(s.needs_worker());
    // Prepared, the pools serve maps before the worker runs.
    let m = s.alloc(SRC, 0, 4096, MapAttrs::default()).unwrap();
    s.free(SRC, m.addr).unwrap();
    assert!(rx.try_recv().is_err());
    s.start_worker(Some(start)).unwrap();
    // `start_worker` returns after the hook ran.
    assert_eq!(rx.try_recv().unwrap().as_deref(), Some("swiotlb-worker"));
    assert!(s.start_worker(None).is_err(), "a second start is refused");
    drop(s);
    let failing: WorkerStart = Box::new(|| Err(String::from("no filter")));
    let s = Swiotlb::prepare(cfg("size=256K,dynamic=on")).unwrap();
    let e = s.start_worker(Some(failing)).err();
    assert!(e.unwrap().to_string().contains("no filter"));
    // No worker (no growth, no shrink): the hook is not run.
    let never: WorkerStart = Box::new(|| -> Result<(), String> { panic!("no worker thread") });
    let s = Swiotlb::prepare(cfg("size=256K,dynamic=off")).unwrap();
    assert!(!s.needs_worker());
    assert!(s.start_worker(Some(never)).is_ok());
}

#[test]
fn without_the_total_counter_the_total_mark_is_the_pools_sum() {
    assert!(
        SwiotlbConfig::from_json_or_kv("total-used=off,threshold=70")
            .and_then(|c| c.validate())
            .is_err()
    );
    for total in ["on", "off"] {
        let s = tlb(&format!("size=512K,areas=2,dynamic=off,total-used={total}"));
        let a = DmaSource {
            device: 0,
            queue: 0,
        };
        let b = DmaSource {
            device: 0,
            queue: 1,
        };
        // Area 0 peaks at 3 slots, then area 1 at 2 while area 0 holds 1: simultaneous
        // peak 3, sum of the areas' peaks 5.
        let m: Vec<_> = (0..3)
            .map(|_| s.alloc(a, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        for x in &m[1..] {
            s.free(a, x.addr).unwrap();
        }
        let n: Vec<_> = (0..2)
            .map(|_| s.alloc(b, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        let st = s.stats();
        assert_eq!(st.slots_used, 3);
        assert_eq!(st.slots_used_hiwater, if total == "on" { 3 } else { 5 });
        assert_eq!(st.pools[0].slots_used_hiwater, 5);
        s.reset_hiwater();
        let st = s.stats();
        assert_eq!(
            (st.slots_used_hiwater, st.pools[0].slots_used_hiwater),
            (3, 3)
        );
        s.free(a, m[0].addr).unwrap();
        for x in &n {
            s.free(b, x.addr).unwrap();
        }
        assert!(all_free(&s));
    }
}

#[test]
fn full_pool_without_growth_fails_cleanly() {
    let s = tlb("size=256K,areas=1,dynamic=off,transient=off");
    let m: Vec<_> = (0..128)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect();
    assert_eq!(
        s.alloc(SRC, 0, 1, MapAttrs::default()).err(),
        Some(DmaError::NoSpace { len: 1 })
    );
    for x in m {
        s.free(SRC, x.addr).unwrap();
    }
    assert!(all_free(&s));
    assert_eq!(s.stats().failures.no_space, 1);
}

#[test]
fn transient_pools_and_cap() {
    // Transient pools allocated and converted per mapping (`atomic-pool=off`, not Linux: see
    // the atomic pool tests below for what Linux does).
    let s = tlb("size=256K,areas=1,dynamic=off,cap=300K,convert=snp,atomic-pool=off");
    let m: Vec<_> = (0..128)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect();
    let t = s.alloc(SRC, 0x5000, 5000, MapAttrs::default()).unwrap();
    let st = s.stats();
    assert_eq!((st.transient_live, st.transient_created), (1, 1));
    assert_eq!(st.conversions.to_shared_calls, 2);
    // 256K + 8K used; another 40K transient would pass 300K.
    assert_eq!(
        s.alloc(SRC, 0, 40 << 10, MapAttrs::default()).err(),
        Some(DmaError::CapReached {
            len: 40 << 10,
            cap: 300 << 10
        })
    );
    s.free(SRC, t.addr).unwrap();
    let st = s.stats();
    assert_eq!(st.transient_live, 0);
    assert_eq!(st.conversions.to_private_calls, 1);
    assert_eq!(st.conversions.to_private_pages, 2);
    assert_eq!(st.failures.cap_reached, 1);
    assert!(st.conversions.modeled_ns > 0);
    assert_eq!(
        s.free(SRC, t.addr).err(),
        Some(DmaError::UnknownAddress { addr: t.addr })
    );
    for x in m {
        s.free(SRC, x.addr).unwrap();
    }
    assert!(all_free(&s));
}

/// Each conversion is counted against the one who pays it: the initial pool at start-up, a
/// worker's extension and release in the background, a transient pool converted per mapping
/// (`atomic-pool=off`, made and released by the mapping thread) on the I/O path; to shared and
/// to private apart.
#[test]
fn conversions_are_counted_by_payer_and_direction() {
    let s = tlb("size=256K,areas=1,dynamic=off,convert=snp,atomic-pool=off");
    let c = s.stats().conversions;
    // 256 KiB initial pool: 64 pages, one request (SNP: up to 253 entries each).
    assert_eq!(
        (c.startup.to_shared.calls, c.startup.to_shared.pages),
        (1, 64)
    );
    assert!(c.startup.to_shared.ns > 0);
    assert_eq!(c.io_path, crate::ConversionsBy::default());
    assert_eq!(c.background, crate::ConversionsBy::default());
    // The worker's work, done on this thread: a 1 MiB chunk, then its release.
    s.grow(1 << 20).unwrap();
    let c = s.stats().conversions;
    assert_eq!(c.background.to_shared.pages, 256);
    assert_eq!(c.background.to_private, crate::ConversionCount::default());
    assert_eq!(s.shrink_idle(Duration::ZERO), 1);
    let c = s.stats().conversions;
    assert_eq!(c.background.to_private.pages, 256);
    assert_eq!(c.io_path, crate::ConversionsBy::default());
    // Fill the initial pool: the next map makes a transient pool on the I/O path.
    let held: Vec<_> = (0..128)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect();
    let t = s.alloc(SRC, 0, 8192, MapAttrs::default()).unwrap();
    let c = s.stats().conversions;
    assert_eq!(c.io_path.to_shared.pages, 2);
    assert_eq!(c.io_path.to_private.pages, 0);
    s.free(SRC, t.addr).unwrap();
    let c = s.stats().conversions;
    assert_eq!(c.io_path.to_private.pages, 2);
    assert!(c.io_path.to_private.calls > 0 && c.io_path.to_private.ns > 0);
    // The totals are the payers' sums.
    assert_eq!(c.to_shared_pages, 64 + 256 + 2);
    assert_eq!(c.to_private_pages, 256 + 2);
    let ns = |b: &crate::ConversionsBy| b.to_shared.ns + b.to_private.ns;
    assert_eq!(
        c.modeled_ns,
        ns(&c.startup) + ns(&c.background) + ns(&c.io_path)
    );
    // The JSON the VMM logs has them by name.
    let j: serde_json::Value = serde_json::from_str(&s.stats().to_json()).unwrap();
    assert_eq!(j["conversions"]["io_path"]["to_private"]["pages"], 2);
    assert_eq!(j["conversions"]["startup"]["to_shared"]["calls"], 1);
    for m in held {
        s.free(SRC, m.addr).unwrap();
    }
}

#[test]
fn background_extension_and_shrink() {
    let s = tlb("size=256K,areas=1,growth=proposed,threshold=50,chunk=1M,shrink=20ms,transient=off,convert=tdx");
    let m: Vec<_> = (0..70)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect();
    let t = Instant::now();
    while s.stats().extensions == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "worker never extended"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.stats().pools_live, 2);
    for x in m {
        s.free(SRC, x.addr).unwrap();
    }
    let t = Instant::now();
    while s.stats().shrinks == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "worker never shrank");
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = s.stats();
    assert_eq!(st.pools_live, 1);
    assert_eq!(st.shared_bytes, 256 << 10);
    // The worker paid both conversions (TDX: a MapGPA each, a 2 MiB piece for 1 MiB; accepts
    // make the way back dearer); nothing was converted on the I/O path.
    let c = &st.conversions;
    assert_eq!(c.background.to_shared.pages, 256);
    assert_eq!(c.background.to_private.pages, 256);
    assert_eq!(
        (c.background.to_shared.calls, c.background.to_shared.exits),
        (1, 1)
    );
    assert!(c.background.to_private.ns > c.background.to_shared.ns);
    assert_eq!(c.io_path.to_shared.pages + c.io_path.to_private.pages, 0);
    assert!(all_free(&s));
}

#[test]
fn inject_delays_the_paying_thread() {
    // Transient pools converted per mapping (`atomic-pool=off`): the I/O thread pays 2 ms to
    // convert and 2 ms to convert back.
    let s = tlb("size=256K,areas=1,dynamic=off,atomic-pool=off,convert=custom:to-shared=2000000/0/0/0/0:to-private=2000000/0/0/0/0,convert-mode=inject");
    // Slots of the (already converted) initial pool cost nothing: no injected time (counted,
    // not timed: a loaded machine can take milliseconds for anything).
    let injected = |s: &Swiotlb| s.stats().conversions.injected_ns;
    let before = injected(&s);
    let held: Vec<_> = (0..128)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect();
    assert_eq!(injected(&s), before, "pool slots are free");
    let t = Instant::now();
    let m = s.alloc(SRC, 0, 100, MapAttrs::default()).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(2));
    let t = Instant::now();
    s.free(SRC, m.addr).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(2));
    let st = s.stats();
    // Initial pool + transient + back: 3 calls of 2 ms modeled, 2 really injected here (the
    // initial pool's too, on the constructing thread).
    assert_eq!(st.conversions.modeled_ns, 6_000_000);
    assert!(st.conversions.injected_ns >= 6_000_000);
    // Each delay is counted against its payer: the I/O path both ways, start-up once.
    let c = &st.conversions;
    assert!(c.io_path.to_shared.injected_ns >= 2_000_000);
    assert!(c.io_path.to_private.injected_ns >= 2_000_000);
    assert!(c.startup.to_shared.injected_ns >= 2_000_000);
    assert_eq!(c.background, crate::ConversionsBy::default());
    for m in held {
        s.free(SRC, m.addr).unwrap();
    }
    // Account mode: modeled, not spent. The initial pool and the two atomic pools (one call
    // each) at start-up.
    let s = tlb("size=256K,convert=custom:to-shared=2000000/0/0/0/0:to-private=2000000/0/0/0/0,convert-mode=account");
    let st = s.stats();
    assert_eq!(st.conversions.modeled_ns, 6_000_000);
    assert_eq!(st.conversions.startup.to_shared.calls, 3);
    assert_eq!(st.conversions.injected_ns, 0);
}

/// Fills the initial pool (256 KiB, 2 KiB slots) so that the next map goes transient.
fn fill(s: &Swiotlb) -> Vec<Mapping> {
    (0..128)
        .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
        .collect()
}

/// Waits (bounded) until the worker has added `n` atomic-pool blocks.
fn wait_atomic_expansions(s: &Swiotlb, n: u64) {
    let t = Instant::now();
    while s.stats().atomic_pool.expansions < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the worker never grew the atomic pool: {:?}",
            s.stats().atomic_pool
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn atomic_pool_sizes_follow_linux_defaults() {
    let cfg = |kv: &str| SwiotlbConfig::from_json_or_kv(kv).unwrap();
    // dma_atomic_pool_init: 128 KiB per GiB, at least 128 KiB, at most 4 MiB.
    for (ram, size) in [
        ("0", 128 << 10),
        ("512M", 128 << 10),
        ("1G", 128 << 10),
        ("3G", 384 << 10),
        ("16G", 2 << 20),
        ("32G", 4 << 20),
        ("1024G", 4 << 20),
    ] {
        let c = cfg(&format!("guest-ram={ram}"));
        assert_eq!(c.atomic_pool_size(), size, "guest-ram={ram}");
    }
    // coherent_pool= overrides it.
    assert_eq!(
        cfg("guest-ram=1G,atomic-pool=1M").atomic_pool_size(),
        1 << 20
    );
    // DMA and DMA32 always; the kernel zone once RAM reaches above 4 GiB.
    assert_eq!(cfg("guest-ram=3G").atomic_zones(), 2);
    assert_eq!(cfg("guest-ram=4G").atomic_zones(), 3);
    assert_eq!(cfg("guest-ram=4G,atomic-zones=1").atomic_zones(), 1);
    assert!(SwiotlbConfig::from_json_or_kv("atomic-zones=4").is_err());
    assert!(SwiotlbConfig::from_json_or_kv("atomic-pool=0").is_err());
    // Only encrypted memory uses them.
    assert!(cfg("convert=tdx").uses_atomic_pools());
    assert!(!cfg("convert=none").uses_atomic_pools());
    assert!(!cfg("convert=tdx,atomic-pool=off").uses_atomic_pools());
    assert!(!cfg("convert=tdx,transient=off").uses_atomic_pools());
}

/// Encrypted memory: the atomic pools are converted at start-up, and a transient map takes
/// its pool from them: nothing is converted on the I/O path, either way.
#[test]
fn encrypted_transient_maps_convert_nothing_on_the_io_path() {
    // 3 GiB of RAM: two zones of 384 KiB, each a 512 KiB block (the power of two above).
    let s = tlb("size=256K,areas=1,dynamic=off,convert=tdx,guest-ram=3G");
    let st = s.stats();
    assert_eq!(st.atomic_pool.zones, 2);
    assert_eq!(st.atomic_pool.bytes, 2 * (512 << 10));
    let c = &st.conversions;
    // The initial pool (64 pages) and both atomic pools (128 pages each): one MapGPA each.
    assert_eq!(c.startup.to_shared.pages, 64 + 2 * 128);
    assert_eq!(c.startup.to_shared.calls, 3);
    assert_eq!(st.shared_bytes, (256 << 10) + 2 * (512 << 10));
    let held = fill(&s);
    let t = s
        .alloc(SRC, 0x1000, 100 << 10, MapAttrs::default())
        .unwrap();
    let st = s.stats();
    assert_eq!((st.transient_live, st.transient_created), (1, 1));
    assert_eq!(st.atomic_pool.used_bytes, 100 << 10);
    assert_eq!(st.conversions.io_path, crate::ConversionsBy::default());
    // Carved from shared memory already counted: not counted again.
    assert_eq!(st.shared_bytes, (256 << 10) + 2 * (512 << 10));
    s.free(SRC, t.addr).unwrap();
    let st = s.stats();
    assert_eq!(st.transient_live, 0);
    assert_eq!(st.atomic_pool.used_bytes, 0);
    assert_eq!(st.atomic_pool.used_bytes_hiwater, 100 << 10);
    assert_eq!(st.conversions.io_path, crate::ConversionsBy::default());
    assert_eq!(st.conversions.to_private_pages, 0, "never converted back");
    for m in held {
        s.free(SRC, m.addr).unwrap();
    }
    assert!(all_free(&s));
}

/// A pool an allocation leaves with less free space than its size is grown by its size
/// (doubling), by the worker, which pays the conversion.
#[test]
fn atomic_pools_double_in_the_background() {
    // 1 GiB of RAM: 128 KiB pools (32 pages); only the first zone is used here.
    let s = tlb("size=256K,areas=1,dynamic=off,convert=snp,guest-ram=1G");
    let startup = s.stats().conversions.startup;
    let held = fill(&s);
    // 8 KiB: 120 KiB left < 128 KiB: the worker adds 128 KiB.
    let a = s.alloc(SRC, 0, 8 << 10, MapAttrs::default()).unwrap();
    wait_atomic_expansions(&s, 1);
    let st = s.stats();
    assert_eq!(st.atomic_pool.bytes, 3 * (128 << 10));
    assert_eq!(st.conversions.background.to_shared.pages, 32);
    // 124 KiB (31 pages, aligned to 32: the new block): 124 KiB left of 256 KiB: it doubles
    // again, by 256 KiB.
    let b = s.alloc(SRC, 0, 124 << 10, MapAttrs::default()).unwrap();
    wait_atomic_expansions(&s, 2);
    let st = s.stats();
    assert_eq!(st.atomic_pool.bytes, (128 << 10) + (512 << 10));
    let c = &st.conversions;
    assert_eq!(c.background.to_shared.pages, 32 + 64);
    assert_eq!(c.background.to_shared.calls, 2);
    assert_eq!(c.startup, startup, "start-up paid only the first blocks");
    assert_eq!(c.io_path, crate::ConversionsBy::default());
    assert_eq!(st.shared_bytes_hiwater, (256 << 10) + (640 << 10));
    for m in [a, b].into_iter().chain(held) {
        s.free(SRC, m.addr).unwrap();
    }
    assert!(all_free(&s));
}

/// When no atomic pool can hold the transient pool, the map fails (Linux: "swiotlb buffer is
/// full"), counted; smaller maps still fit.
#[test]
fn a_map_fails_when_no_atomic_pool_can_serve_it() {
    let s = tlb("size=256K,areas=1,dynamic=off,convert=snp,atomic-pool=128K,atomic-zones=1");
    let held = fill(&s);
    // 200 KiB: 50 pages, more than the 32-page pool.
    assert_eq!(
        s.alloc(SRC, 0, 200 << 10, MapAttrs::default()).err(),
        Some(DmaError::AtomicPoolExhausted { len: 200 << 10 })
    );
    let st = s.stats();
    assert_eq!(st.failures.atomic_pool_exhausted, 1);
    assert_eq!(st.atomic_pool.exhausted, 1);
    assert_eq!((st.transient_live, st.transient_created), (0, 0));
    assert_eq!(st.conversions.io_path, crate::ConversionsBy::default());
    let m = s.alloc(SRC, 0, 64 << 10, MapAttrs::default()).unwrap();
    s.free(SRC, m.addr).unwrap();
    for m in held {
        s.free(SRC, m.addr).unwrap();
    }
    assert!(all_free(&s));
}

/// Unencrypted memory: no atomic pools; a transient pool of any size is fresh memory, as
/// before, with nothing to convert.
#[test]
fn unencrypted_transient_pools_are_fresh_memory() {
    let s = tlb("size=256K,areas=1,dynamic=off,guest-ram=1G");
    assert_eq!(s.stats().atomic_pool, crate::AtomicPoolStats::default());
    let held = fill(&s);
    let t = s.alloc(SRC, 0, 200 << 10, MapAttrs::default()).unwrap();
    let st = s.stats();
    assert_eq!(st.transient_live, 1);
    assert_eq!(st.shared_bytes, (256 + 200) << 10);
    assert_eq!(st.conversions, crate::Conversions::default());
    s.free(SRC, t.addr).unwrap();
    for m in held {
        s.free(SRC, m.addr).unwrap();
    }
    assert_eq!(s.stats().shared_bytes, 256 << 10);
}

#[test]
fn list_and_tree_agree() {
    for kind in ["list", "tree"] {
        let s = tlb(&format!(
            "initial=off,slot=64,segment=1,dynamic=off,lookup={kind}"
        ));
        for _ in 0..100 {
            s.grow(4096).unwrap();
        }
        let starts = s.pool_starts();
        assert_eq!(starts.len(), 100);
        for (i, &a) in starts.iter().enumerate() {
            let id = s.find_pool(a + 63).unwrap();
            let again = s.find_pool(a).unwrap();
            assert_eq!(id, again, "pool {i}");
        }
        assert_eq!(s.find_pool(0), None);
        let st = s.stats();
        if kind == "tree" {
            assert!(st.lookup_steps <= st.lookups * 8);
        } else {
            assert!(st.lookup_steps > st.lookups * 8);
        }
    }
}

#[test]
fn concurrent_map_unmap_while_growing_and_shrinking() {
    let s = tlb("size=256K,areas=4,growth=proposed,threshold=60,chunk=1M,shrink=5ms,transient=on");
    std::thread::scope(|sc| {
        for q in 0..4u16 {
            let s = &s;
            sc.spawn(move || {
                let src = DmaSource {
                    device: 0,
                    queue: q,
                };
                let mut live = Vec::new();
                for i in 0..3000u64 {
                    let len = 1 + ((i * 7919 + q as u64 * 31) % 8192) as usize;
                    let m = s.alloc(src, i * 4096, len, MapAttrs::default()).unwrap();
                    // Stamp the slot, check it later: no overlap across threads.
                    stamp(&m, q as u8 + 1);
                    live.push(m);
                    if live.len() > 40 || i % 3 == 0 {
                        let m = live.swap_remove(0);
                        assert!(stamped(&m, q as u8 + 1));
                        s.free(src, m.addr).unwrap();
                    }
                }
                for m in live {
                    s.free(src, m.addr).unwrap();
                }
            });
        }
    });
    let st = s.stats();
    assert_eq!(st.maps, 12000);
    assert_eq!(st.unmaps, 12000);
    assert!(
        st.extensions + st.transient_created > 0,
        "pools never grew: {st:?}"
    );
    assert_eq!(st.slots_used, 0);
    assert!(all_free(&s));
}

/// Mappings made on two threads are unmapped on two others while the worker adds and
/// removes pools and transient pools come and go: the unmapping threads' cached pool sets
/// are often behind the mapping threads', and every unmap must still find its pool.
#[test]
fn unmapping_on_other_threads_while_pools_change() {
    let s = tlb("size=256K,areas=2,growth=proposed,threshold=50,chunk=1M,shrink=2ms,transient=on");
    std::thread::scope(|sc| {
        for q in 0..2u16 {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Mapping, u8)>(64);
            let s = &s;
            sc.spawn(move || {
                let src = DmaSource {
                    device: 0,
                    queue: q,
                };
                // Batches of 50 (about 225 KiB per thread): more than the initial pool
                // holds, so pools are added whatever the threads' speeds.
                let mut batch = Vec::new();
                for i in 0..4000u64 {
                    let len = 1 + ((i * 6151 + q as u64 * 17) % 9000) as usize;
                    let m = s.alloc(src, i * 4096, len, MapAttrs::default()).unwrap();
                    let tag = (i % 251) as u8;
                    stamp(&m, tag);
                    batch.push((m, tag));
                    if batch.len() == 50 {
                        batch.drain(..).for_each(|x| tx.send(x).unwrap());
                    }
                }
            });
            sc.spawn(move || {
                let src = DmaSource {
                    device: 1,
                    queue: q,
                };
                for (m, tag) in rx {
                    // Still mapped: only this thread frees it.
                    assert!(stamped(&m, tag));
                    assert_eq!(s.free(src, m.addr).unwrap().len, m.len);
                }
            });
        }
    });
    let st = s.stats();
    assert_eq!((st.maps, st.unmaps, st.slots_used), (8000, 8000, 0));
    assert_eq!(st.failures, crate::Failures::default());
    assert!(st.pools_created > 1, "no pool was added: {st:?}");
    assert!(all_free(&s));
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        orig: u64,
        len: usize,
        min_align: u32,
        alloc_align: u32,
        queue: u16,
    },
    Unmap(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..1 << 30, 1usize..70_000, 0u32..4, 0u32..3, 0u16..4).prop_map(
            |(orig, len, ma, aa, queue)| Op::Map {
                orig,
                len,
                min_align: [0, 0x7ff, 0xfff, 0x3][ma as usize],
                alloc_align: [0, 0xfff, 0x1fff][aa as usize],
                queue,
            }
        ),
        2 => any::<prop::sample::Index>().prop_map(|i| Op::Unmap(i.index(1 << 20))),
    ]
}

/// 48 by default (fast); `BOUNCE_PROPTEST_CASES=2000` for a longer hunt.
fn cases() -> u32 {
    std::env::var("BOUNCE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    /// Against a reference model (a list of live byte ranges): no overlap, alignment rules,
    /// data round trips, all free at the end, statistics add up.
    #[test]
    fn model(ops in prop::collection::vec(op(), 1..120)) {
    // Unencrypted (fresh transient pools) with both reuse policies, and encrypted (transient
    // pools carved from two 128 KiB atomic pools that the worker grows meanwhile).
    for extra in ["reuse=next", "reuse=lifo", "reuse=next,convert=snp,guest-ram=1G"] {
        let s = tlb(&format!("size=512K,areas=2,dynamic=off,transient=on,cap=2M,{extra}"));
        let mut live: Vec<(Mapping, u8, DmaSource)> = Vec::new();
        let (mut maps, mut unmaps, mut fails) = (0u64, 0u64, 0u64);
        for (n, o) in ops.iter().cloned().enumerate() {
            match o {
                Op::Map { orig, len, min_align, alloc_align, queue } => {
                    let attrs = MapAttrs {
                        min_align_mask: min_align as u64,
                        alloc_align_mask: alloc_align as u64,
                        may_block: false,
                    };
                    let src = DmaSource { device: 1, queue };
                    match s.alloc(src, orig, len, attrs) {
                        Ok(m) => {
                            maps += 1;
                            let mask = min_align as u64;
                            prop_assert_eq!(m.addr & mask, orig & mask);
                            let start = m.addr - crate::pool::align_offset(orig, attrs, 2047) as u64;
                            prop_assert_eq!(start & (alloc_align as u64 | 2047), 0);
                            if min_align == 0 && alloc_align == 0 && len >= 4096 {
                                prop_assert_eq!(m.addr & 4095, 0);
                            }
                            for (o, _, _) in &live {
                                prop_assert!(m.addr + m.len as u64 <= o.addr
                                    || o.addr + o.len as u64 <= m.addr, "overlap");
                            }
                            let tag = n as u8;
                            stamp(&m, tag);
                            live.push((m, tag, src));
                        }
                        Err(DmaError::TooLarge { .. }) => {
                            prop_assert!(len + crate::pool::align_offset(orig, attrs, 2047) > 256 << 10);
                            fails += 1;
                        }
                        Err(DmaError::CapReached { .. }) | Err(DmaError::NoSpace { .. })
                            | Err(DmaError::AtomicPoolExhausted { .. }) => fails += 1,
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Unmap(i) if !live.is_empty() => {
                    let (m, tag, src) = live.swap_remove(i % live.len());
                    prop_assert!(stamped(&m, tag), "data corrupted");
                    let f = s.free(src, m.addr).unwrap();
                    prop_assert_eq!(f.len, m.len);
                    unmaps += 1;
                    prop_assert_eq!(s.free(src, m.addr).is_err(), true);
                    fails += 1;
                }
                Op::Unmap(_) => {}
            }
            let st = s.stats();
            let used: u64 = st.pools.iter().map(|p| p.slots_used).sum();
            prop_assert_eq!(st.slots_used, used);
            prop_assert_eq!(st.maps - st.unmaps, live.len() as u64);
        }
        for (m, _, src) in live.drain(..) {
            s.free(src, m.addr).unwrap();
            unmaps += 1;
        }
        let st = s.stats();
        prop_assert_eq!(st.maps, maps);
        prop_assert_eq!(st.unmaps, unmaps);
        let f = &st.failures;
        prop_assert_eq!(f.too_large + f.cap_reached + f.no_space + f.not_mapped
            + f.unknown_address + f.atomic_pool_exhausted, fails);
        prop_assert_eq!(st.slots_used, 0);
        prop_assert_eq!(st.transient_live, 0);
        // Every carved transient pool went back to the atomic pools, and nothing was converted
        // on the I/O path.
        prop_assert_eq!(st.atomic_pool.used_bytes, 0);
        prop_assert_eq!(st.conversions.io_path, crate::ConversionsBy::default());
        prop_assert!(all_free(&s));
    }
    }
}
