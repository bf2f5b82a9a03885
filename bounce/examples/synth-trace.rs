//! Writes a **synthetic** DMA trace (JSON lines, the format `bounce-replay` reads): a block
//! device's queues kept full, each request one map and one unmap, as virtio-blk maps a data
//! buffer. No guest recorded it; the mix is a stand-in for a database-like load:
//!
//! - 70 % random 4 KiB requests (4 KiB-aligned anywhere in a 128 MiB region), 30 % sequential
//!   64 KiB requests (one stream per queue, in a second 128 MiB region);
//! - 60 % reads (`from_device`), 40 % writes (`to_device`);
//! - `queues` queues of `depth` requests in flight each: each slot starts within the first
//!   5 ms, then issues its next request 5 us after the last completes; service time 400 us for
//!   4 KiB and 1.2 ms for 64 KiB, +-25 %.
//!
//! ```text
//! cargo run -p bounce --release --example synth-trace -- OUT.jsonl [requests] [queues] [depth] [seed]
//! ```
//! Defaults: 40000 requests, 2 queues, depth 64, seed 1 (205 ms of trace, 128 requests
//! and 4.6 MiB in flight on average, 5.7 MiB at the peak).

use std::collections::BinaryHeap;
use std::io::BufWriter;

use bounce::{DmaDirection, TraceOp, TraceRecord};

/// xorshift64*: repeatable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `ns` +- 25 %.
    fn jitter(&mut self, ns: u64) -> u64 {
        ns - ns / 4 + self.below(ns / 2 + 1)
    }
}

const REGION: u64 = 128 << 20;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: synth-trace OUT.jsonl [requests] [queues] [depth] [seed]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |a| a.parse().expect("a number"));
    let (requests, queues, depth, seed) = (arg(1, 40_000), arg(2, 2), arg(3, 64), arg(4, 1));
    let mut rng = Rng(seed.max(1) * 0x9e37_79b9_7f4a_7c15);
    // (negated time, slot): the slot whose next request is due first.
    let mut due: BinaryHeap<(i64, u64)> = (0..queues * depth)
        .map(|s| (-(rng.below(5_000_000) as i64), s))
        .collect();
    let mut stream = vec![0u64; queues as usize];
    let mut recs = Vec::with_capacity(2 * requests as usize);
    for id in 1..=requests {
        let (neg_t, slot) = due.pop().expect("slots");
        let t = (-neg_t) as u64;
        let queue = (slot / depth) as u16;
        let (addr, len, service) = if rng.below(100) < 70 {
            (
                rng.below(REGION / 4096) * 4096,
                4096u32,
                rng.jitter(400_000),
            )
        } else {
            let s = &mut stream[queue as usize];
            let addr = REGION + *s;
            *s = (*s + (64 << 10)) % REGION;
            (addr, 64 << 10, rng.jitter(1_200_000))
        };
        let dir = if rng.below(100) < 60 {
            DmaDirection::FromDevice
        } else {
            DmaDirection::ToDevice
        };
        let rec = |t_ns, op| TraceRecord {
            t_ns,
            op,
            id,
            device: 0,
            queue,
            addr,
            len,
            dir,
            ..Default::default()
        };
        recs.push(rec(t, TraceOp::Map));
        recs.push(rec(t + service, TraceOp::Unmap));
        due.push((-((t + service + 5_000) as i64), slot));
    }
    recs.sort_by_key(|r| (r.t_ns, r.op == TraceOp::Map));
    bounce::write_trace(BufWriter::new(std::fs::File::create(out)?), &recs)?;
    let end = recs.last().map_or(0, |r| r.t_ns);
    eprintln!(
        "synth-trace: {} records, {requests} requests, {queues} queues x {depth}, {} ms",
        recs.len(),
        end / 1_000_000
    );
    Ok(())
}
