//! A fixed number of map -> copy -> unmap round trips, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike timings), and a quick
//! side-by-side timing against `memcpy` (alternating rounds, best of each):
//! `cargo build -p bounce --release --example fastpath` then
//! `valgrind --tool=callgrind target/release/examples/fastpath [len] [iters] [config] [dir]`
//! (`dir`: `to` (default, as the criterion bench), `from`, `bi`), or with `TIME=1` in the
//! environment for the timing.

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
    let dma = Dma::bounced_from_str(mem, &cfg).unwrap();
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
    if std::env::var_os("TIME").is_none() {
        round();
        let s = dma.stats().unwrap();
        println!(
            "maps {} unmaps {} hiwater {}",
            s.maps, s.unmaps, s.slots_used_hiwater
        );
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
    for _ in 0..15 {
        best_m = best_m.min(memcpy());
        best_b = best_b.min(round());
    }
    if std::env::var_os("SLOT").is_some() {
        // The floor with the bounce slot itself as the destination (no map/unmap).
        let buf = dma.map(src, GuestAddress(0x10000), len, dir).unwrap();
        let slot = buf.slice().ptr_guard_mut().as_ptr();
        let mut best = f64::MAX;
        for _ in 0..15 {
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
        for _ in 0..15 {
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
