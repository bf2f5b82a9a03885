//! A fixed number of map -> copy -> unmap round trips, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike timings), and a quick
//! side-by-side timing against `memcpy` (alternating rounds, best of each):
//! `cargo build -p bounce --release --example fastpath` then
//! `valgrind --tool=callgrind target/release/examples/fastpath [len] [iters] [config] [dir]`
//! (`dir`: `to` (default, as the criterion bench), `from`, `bi`), or with `TIME=1` in the
//! environment for the timing, or `THREADS=2` for wall-clock scaling over that many threads.

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
                        let mut buf = vec![0u8; len as usize];
                        for _ in 0..per {
                            // SAFETY: `src` is `len` bytes of guest memory (checked above to
                            // lie inside the 4 MiB region), `buf` our own.
                            unsafe {
                                std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), len as usize);
                                std::hint::black_box(&mut buf);
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
    // `DST_OFFSET=n`: the floor's destination at `n` bytes past a page boundary (the bounce slot
    // is page aligned, as the guest buffer here).
    let off: usize = std::env::var("DST_OFFSET").map_or(0x40, |v| v.parse().unwrap());
    let mut backing = vec![0u8; len as usize + 2 * 4096];
    let skip = backing.as_ptr().align_offset(4096) + off;
    let dst = &mut backing[skip..skip + len as usize];
    let mut memcpy = || {
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: both ranges are valid for `len` bytes and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst.as_mut_ptr(), len as usize) };
            std::hint::black_box(&dst);
        }
        t.elapsed().as_nanos() as f64 / iters as f64
    };
    let (mut best_m, mut best_b) = (f64::MAX, f64::MAX);
    for _ in 0..rounds() {
        best_m = best_m.min(memcpy());
        best_b = best_b.min(round());
    }
    if std::env::var_os("SLOT").is_some() {
        // The floor with the bounce slot itself as the destination (no map/unmap).
        let buf = dma.map(src, GuestAddress(0x10000), len, dir).unwrap();
        let slot = buf.slice().ptr_guard_mut().as_ptr();
        let mut best = f64::MAX;
        for _ in 0..rounds() {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: the mapping owns `len` bytes at `slot`; the guest range is disjoint.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr, slot, len as usize) };
                std::hint::black_box(slot);
            }
            best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        println!("memcpy into the bounce slot: {best:.1} ns");
    }
    if std::env::var_os("FENCE").is_some() {
        // The floor plus one atomic read-modify-write per copy: it waits for the copy's stores
        // to drain, as the first atomic after the copy in a round trip does.
        let a = std::sync::atomic::AtomicU64::new(0);
        let mut best = f64::MAX;
        for _ in 0..rounds() {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: as in `memcpy`.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr, dst.as_mut_ptr(), len as usize) };
                std::hint::black_box(&dst);
                a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        println!("memcpy + 1 atomic: {best:.1} ns");
    }
    println!(
        "len {len} memcpy {best_m:.1} ns  bounce {best_b:.1} ns  ratio {:.2}x",
        best_b / best_m
    );
}

/// Alternating timed rounds per variant (`ROUNDS`, default 15); the best of each is reported.
fn rounds() -> usize {
    std::env::var("ROUNDS").map_or(15, |r| r.parse().unwrap())
}
