//! A fixed number of map -> copy -> unmap round trips, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike timings), and a quick
//! side-by-side timing against `memcpy` (alternating rounds, best of each):
//! `cargo build -p bounce --release --example fastpath` then
//! `valgrind --tool=callgrind target/release/examples/fastpath [len] [iters] [config] [dir]`
//! (`dir`: `to` (default, as the criterion bench), `from`, `bi`), or with `TIME=1` in the
//! environment for the timing (beside the floors: the copy alone, and with the lock round trips
//! and counter updates Linux's design makes), or `THREADS=2` for wall-clock scaling over that
//! many threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bounce::{Dma, DmaDirection, DmaSource};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

fn main() {
    let mut args = std::env::args().skip(1);
    let len: u32 = args.next().map_or(4096, |a| a.parse().unwrap());
    let iters: u64 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let cfg = args
        .next()
        .unwrap_or_else(|| "size=64M,areas=1,reuse=lifo".into());
    let dir = match args.next().as_deref() {
        None | Some("to") => DmaDirection::ToDevice,
        Some("from") => DmaDirection::FromDevice,
        Some(_) => DmaDirection::Bidirectional,
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let src_ptr = mem
        .get_slice(GuestAddress(0x10000), len as usize)
        .unwrap()
        .ptr_guard()
        .as_ptr();
    // `direct`: the same API without bouncing (the cost of the DMA API itself).
    let dma = if cfg == "direct" {
        Dma::direct(mem)
    } else {
        Dma::bounced_from_str(mem, &cfg).unwrap()
    };
    let src = DmaSource::default();
    let round = || {
        let t = Instant::now();
        for _ in 0..iters {
            let buf = dma.map(src, GuestAddress(0x10000), len, dir).unwrap();
            std::hint::black_box(&buf);
            buf.unmap().unwrap();
        }
        t.elapsed().as_nanos() as f64 / iters as f64
    };
    if let Some(t) = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
    {
        // Wall-clock scaling: `iters` round trips split over `t` threads (one queue and area
        // each), alternating with one thread, best of `ROUNDS` rounds each.
        let run = |threads: u64| {
            let per = iters / threads;
            let t0 = Instant::now();
            std::thread::scope(|sc| {
                for q in 0..threads {
                    let dma = dma.clone();
                    sc.spawn(move || {
                        let src = DmaSource {
                            device: 0,
                            queue: q as u16,
                        };
                        let addr = GuestAddress(0x100000 * (q + 1));
                        for _ in 0..per {
                            let buf = dma.map(src, addr, len, dir).unwrap();
                            std::hint::black_box(&buf);
                            buf.unmap().unwrap();
                        }
                    });
                }
            });
            t0.elapsed().as_nanos() as f64 / (per * threads) as f64
        };
        // The floor: the same copies (guest -> private buffer -> guest, as a from-device round
        // trip) without the pool, so the machine's own scaling of the copies is known.
        let copies = |threads: u64| {
            let per = iters / threads;
            let t0 = Instant::now();
            std::thread::scope(|sc| {
                for q in 0..threads {
                    // Thread `q`'s own part of guest memory (a raw pointer is not `Send`).
                    let offset = 0x100000 * (q as usize + 1);
                    assert!(
                        0x10000 + offset + len as usize <= 4 << 20,
                        "past guest memory"
                    );
                    let src = src_ptr as usize + offset;
                    sc.spawn(move || {
                        let src = src as *mut u8;
                        // Page aligned, as a bounce slot (see `DST_OFFSET` below).
                        let mut backing = vec![0u8; len as usize + 4096];
                        let at = backing.as_ptr().align_offset(4096);
                        let buf = &mut backing[at..at + len as usize];
                        for _ in 0..per {
                            // SAFETY: `src` is `len` bytes of guest memory (checked above to
                            // lie inside the 4 MiB region), `buf` our own.
                            unsafe {
                                std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), len as usize);
                                std::hint::black_box(&mut *buf);
                                std::ptr::copy_nonoverlapping(buf.as_ptr(), src, len as usize);
                            }
                        }
                    });
                }
            });
            t0.elapsed().as_nanos() as f64 / (per * threads) as f64
        };
        let (mut one, mut many, mut c1, mut cn) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..rounds() {
            one = one.min(run(1));
            many = many.min(run(t));
            c1 = c1.min(copies(1));
            cn = cn.min(copies(t));
        }
        println!(
            "bounce: 1 thread {one:.1} ns/op, {t} threads {many:.1} ns/op, scaling {:.2}x; \
             copies alone: {c1:.1} / {cn:.1} ns/op, scaling {:.2}x",
            one / many,
            c1 / cn
        );
        return;
    }
    if std::env::var_os("TIME").is_none() {
        round();
        if let Some(s) = dma.stats() {
            println!(
                "maps {} unmaps {} hiwater {}",
                s.maps, s.unmaps, s.slots_used_hiwater
            );
        }
        return;
    }
    // `DST_OFFSET=n`: the floor's destination at `n` bytes past a page boundary (default 0: page
    // aligned, as the bounce slot; `rep movsb` into a merely 16-byte aligned buffer can be several
    // times slower, which would flatter the ratio).
    let off: usize = std::env::var("DST_OFFSET").map_or(0, |v| v.parse().unwrap());
    let mut backing = vec![0u8; len as usize + 2 * 4096];
    let skip = backing.as_ptr().align_offset(4096) + off;
    let dst = backing[skip..skip + len as usize].as_mut_ptr();
    // The floors, each one round: the copy alone; with the area lock taken on map and on unmap
    // as Linux does (`locks`); and with the global used-slots counter's add and subtract too
    // (`total`, Linux with CONFIG_DEBUG_FS, `total-used=on`).
    let lock = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let lock_round_trip = || {
        while lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {}
        std::hint::black_box(&lock);
        lock.store(false, Ordering::Release);
    };
    let floor = |locks: bool, counter: bool| {
        let t = Instant::now();
        for _ in 0..iters {
            if locks {
                lock_round_trip();
            }
            if counter {
                total.fetch_add(2, Ordering::Relaxed);
            }
            // SAFETY: both ranges are valid for `len` bytes and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst, len as usize) };
            std::hint::black_box(dst);
            if locks {
                lock_round_trip();
            }
            if counter {
                total.fetch_sub(2, Ordering::Relaxed);
            }
        }
        t.elapsed().as_nanos() as f64 / iters as f64
    };
    let mut best = [f64::MAX; 4];
    for _ in 0..rounds() {
        best[0] = best[0].min(floor(false, false));
        best[1] = best[1].min(floor(true, false));
        best[2] = best[2].min(floor(true, true));
        best[3] = best[3].min(round());
    }
    let [m, l, lt, b] = best;
    println!(
        "len {len} memcpy {m:.1} ns  +locks {l:.1} ns ({:.2}x)  +locks+total {lt:.1} ns ({:.2}x)  \
         bounce {b:.1} ns  ratio {:.2}x",
        l / m,
        lt / m,
        b / m
    );
}

/// Alternating timed rounds per variant (`ROUNDS`, default 15); the best of each is reported.
fn rounds() -> usize {
    std::env::var("ROUNDS").map_or(15, |r| r.parse().unwrap())
}
