//! Criterion benchmarks; each group puts the compared variants side by side in one run.
//! `CARGO_TARGET_DIR=... cargo bench -p bounce --bench bounce`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce::{Dma, DmaDirection, DmaSource, MapAttrs, Swiotlb};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const SRC: DmaSource = DmaSource {
    device: 0,
    queue: 0,
};

fn guest() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    // Touch every page so the copies measure memory, not page faults.
    let s = mem.get_slice(GuestAddress(0), 4 << 20).unwrap();
    s.write_slice(&vec![0x5a; 4 << 20], 0).unwrap();
    mem
}

/// A group measured for `secs` seconds in `samples` samples, after half a second of warm-up.
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    secs: u64,
    samples: usize,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(secs))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(samples);
    g
}

/// A page-aligned buffer of `len` bytes: the floor's destination, aligned as a bounce slot is
/// (a `Vec`'s 16-byte alignment makes `rep movsb` up to several times slower here, which would
/// flatter every ratio).
struct Aligned {
    _backing: Vec<u8>,
    ptr: *mut u8,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let mut backing = vec![0u8; len + 4096];
        let skip = backing.as_ptr().align_offset(4096);
        let ptr = backing[skip..].as_mut_ptr();
        Aligned {
            _backing: backing,
            ptr,
        }
    }
}

/// One uncontended acquisition and release of a spinlock, as the area lock's (a compare-and-swap
/// and a release store).
fn lock_round_trip(l: &AtomicBool) {
    while l
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {}
    black_box(l);
    l.store(false, Ordering::Release);
}

fn map_copy_unmap(c: &mut Criterion) {
    for (name, len) in [
        ("map_copy_unmap_64k", 64 << 10),
        ("map_copy_unmap_4k", 4 << 10),
    ] {
        let mut g = group(c, name, 2, 30);
        g.throughput(Throughput::Bytes(len as u64));
        let mem = guest();
        let src_ptr = mem
            .get_slice(GuestAddress(0x10000), len)
            .unwrap()
            .ptr_guard()
            .as_ptr();
        let dst = Aligned::new(len);
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                // SAFETY: both ranges are valid for `len` bytes and do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst.ptr, len) };
                black_box(dst.ptr);
            })
        });
        // What Linux's design costs besides the copy, in the same run: the area lock taken on map
        // and on unmap (`locks`), and with it the global used-slots counter's add and subtract
        // (`locks_total`, Linux with CONFIG_DEBUG_FS; microvm's `total-used=on`).
        let (lock, total) = (AtomicBool::new(false), AtomicU64::new(0));
        g.bench_function("memcpy_locks", |b| {
            b.iter(|| {
                lock_round_trip(&lock);
                // SAFETY: both ranges are valid for `len` bytes and do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst.ptr, len) };
                black_box(dst.ptr);
                lock_round_trip(&lock);
            })
        });
        g.bench_function("memcpy_locks_total", |b| {
            b.iter(|| {
                lock_round_trip(&lock);
                total.fetch_add(2, Ordering::Relaxed);
                // SAFETY: both ranges are valid for `len` bytes and do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst.ptr, len) };
                black_box(dst.ptr);
                lock_round_trip(&lock);
                total.fetch_sub(2, Ordering::Relaxed);
            })
        });
        // `next_1m`: Linux's next fit in a 1 MiB pool, whose slots stay in cache: the difference
        // to `next` (64 MiB, cold slots) is the cache, not the code.
        for (name, cfg) in [
            ("next", "size=64M,areas=1,reuse=next"),
            ("next_1m", "size=1M,areas=1,reuse=next"),
            ("lifo", "size=64M,areas=1,reuse=lifo"),
            (
                "lifo_no_total",
                "size=64M,areas=1,reuse=lifo,total-used=off",
            ),
        ] {
            let dma = Dma::bounced_from_str(mem.clone(), cfg).unwrap();
            g.bench_function(format!("bounce_{name}"), |b| {
                b.iter(|| {
                    let buf = dma
                        .map(
                            SRC,
                            GuestAddress(0x10000),
                            len as u32,
                            DmaDirection::ToDevice,
                        )
                        .unwrap();
                    black_box(&buf);
                    buf.unmap().unwrap();
                })
            });
        }
        let direct = Dma::direct(mem.clone());
        g.bench_function("direct_map_unmap", |b| {
            b.iter(|| {
                let buf = direct
                    .map(
                        SRC,
                        GuestAddress(0x10000),
                        len as u32,
                        DmaDirection::ToDevice,
                    )
                    .unwrap();
                black_box(&buf);
                buf.unmap().unwrap();
            })
        });
        g.finish();
    }
}

fn alloc_2k(c: &mut Criterion) {
    let mut g = group(c, "alloc_2k", 2, 30);
    for reuse in ["next", "lifo"] {
        let s = Swiotlb::from_config_str(&format!("size=64M,areas=1,dynamic=off,reuse={reuse}"))
            .unwrap();
        // Allocation alone: time N allocations, free them outside the timed section.
        g.bench_function(format!("alloc_{reuse}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut live = Vec::with_capacity(256);
                let mut left = iters;
                while left > 0 {
                    let n = left.min(256);
                    let t = Instant::now();
                    for i in 0..n {
                        live.push(s.alloc(SRC, i * 2048, 2048, MapAttrs::default()).unwrap());
                    }
                    total += t.elapsed();
                    for m in live.drain(..) {
                        s.free(SRC, m.addr).unwrap();
                    }
                    left -= n;
                }
                total
            })
        });
        // A fresh pool: after `alloc_` the search index sits wherever that run's iteration
        // count left it, and how far into its segment decides the cost of the free-run updates.
        let s = Swiotlb::from_config_str(&format!("size=64M,areas=1,dynamic=off,reuse={reuse}"))
            .unwrap();
        g.bench_function(format!("alloc_free_{reuse}"), |b| {
            b.iter(|| {
                let m = s.alloc(SRC, 0x1000, 2048, MapAttrs::default()).unwrap();
                s.free(SRC, black_box(m.addr)).unwrap();
            })
        });
    }
    g.finish();
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[derive(Clone, Copy)]
enum Clock {
    /// Wall-clock time of the whole run: the throughput the threads reach together.
    Wall,
    /// The threads' CPU time divided by their number: the time per operation if every thread had
    /// a core of its own. On a shared, loaded machine wall-clock scaling measures the
    /// neighbours; this measures our own contention (cache-line bouncing and lock waits show up
    /// as extra CPU time per operation).
    Cpu,
}

/// `iters` operations in total, split over `threads` threads (thread `q` runs `op(q)` `iters /
/// threads` times): the time per operation by `clock`.
fn split_over_threads(
    iters: u64,
    threads: u64,
    clock: Clock,
    op: impl Fn(u64) -> Box<dyn FnMut() + Send> + Sync,
) -> Duration {
    let per = iters.div_ceil(threads);
    let start = Instant::now();
    let cpu: Duration = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|q| {
                let mut f = op(q);
                sc.spawn(move || {
                    let t0 = thread_cpu_time();
                    for _ in 0..per {
                        f();
                    }
                    thread_cpu_time() - t0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    match clock {
        Clock::Wall => start.elapsed(),
        Clock::Cpu => cpu / threads as u32,
    }
}

/// 4 KiB device-writes round trips (copied in on map, out on unmap), one queue and area per
/// thread, with 1 and 2 threads; `copies` is the floor: the same two copies per operation
/// through a private buffer, no pool, so the machine's own scaling of the copies shows beside
/// ours.
fn scaling(c: &mut Criterion) {
    for (name, clock) in [
        ("map_copy_unmap_4k_threads", Clock::Wall),
        ("map_copy_unmap_4k_threads_cputime", Clock::Cpu),
    ] {
        let mut g = group(c, name, 3, 20);
        let mem = guest();
        // `lifo_no_total`: lifo without the global used-slots counter (`total-used=off`).
        for (variant, cfg) in [
            ("copies", None),
            ("next", Some("reuse=next")),
            ("lifo", Some("reuse=lifo")),
            ("lifo_no_total", Some("reuse=lifo,total-used=off")),
        ] {
            let dma = cfg.map(|c| {
                Dma::bounced_from_str(mem.clone(), &format!("size=64M,areas=2,{c}")).unwrap()
            });
            for threads in [1u64, 2] {
                g.bench_with_input(BenchmarkId::new(variant, threads), &threads, |b, &t| {
                    b.iter_custom(|iters| {
                        split_over_threads(iters, t, clock, |q| {
                            let addr = GuestAddress(0x100000 * (q + 1));
                            match &dma {
                                Some(dma) => {
                                    let dma = dma.clone();
                                    let src = DmaSource {
                                        device: 0,
                                        queue: q as u16,
                                    };
                                    Box::new(move || {
                                        let buf = dma
                                            .map(src, addr, 4096, DmaDirection::FromDevice)
                                            .unwrap();
                                        buf.unmap().unwrap();
                                    })
                                }
                                None => {
                                    let guest = mem.get_slice(addr, 4096).unwrap();
                                    let guest = guest.ptr_guard_mut().as_ptr() as usize;
                                    // Page aligned, as a bounce slot (see `Aligned`).
                                    let mut backing = vec![0u8; 2 * 4096];
                                    let at = backing.as_ptr().align_offset(4096);
                                    Box::new(move || {
                                        let guest = guest as *mut u8;
                                        let private = &mut backing[at..at + 4096];
                                        // SAFETY: `guest` is 4 KiB of this thread's own part of
                                        // guest memory, `private` its own buffer.
                                        unsafe {
                                            std::ptr::copy_nonoverlapping(
                                                guest,
                                                private.as_mut_ptr(),
                                                4096,
                                            );
                                            black_box(&mut *private);
                                            std::ptr::copy_nonoverlapping(
                                                private.as_ptr(),
                                                guest,
                                                4096,
                                            );
                                        }
                                    })
                                }
                            }
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

fn lookup(c: &mut Criterion) {
    let mut g = group(c, "lookup_1000_pools", 2, 30);
    for kind in ["list", "tree"] {
        let s: Arc<Swiotlb> = Swiotlb::from_config_str(&format!(
            "initial=off,slot=2K,segment=1,dynamic=off,lookup={kind}"
        ))
        .unwrap();
        for _ in 0..1000 {
            s.grow(4096).unwrap();
        }
        let starts = s.pool_starts();
        // A fixed pseudo-random walk over the pools (no prefetch-friendly order).
        let addrs: Vec<u64> = (0..1024u64)
            .map(|i| starts[((i * 2654435761) % 1000) as usize] + 100)
            .collect();
        g.bench_function(kind, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(s.find_pool(addrs[i]))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, map_copy_unmap, alloc_2k, scaling, lookup);
criterion_main!(benches);
