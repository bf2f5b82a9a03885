//! Replays a DMA trace (JSON lines, see the crate README) against a pool configuration and prints
//! the statistics as JSON.
//!
//! ```text
//! bounce-replay TRACE.jsonl [--config 'size=64M,lookup=list,...' | --config @cfg.json] [--timed]
//! ```
//! The trace's guest addresses are backed by one sparse anonymous guest memory region, and every
//! record goes through the same `Dma` map/sync/unmap path the devices use, so copies are real.
//! `--timed` keeps the recorded gaps between operations (for the worker's growth and shrink);
//! without it the trace runs as fast as possible.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bounce::{read_trace, Dma, DmaSource, Swiotlb, SwiotlbConfig, TraceOp};
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn usage() -> ExitCode {
    eprintln!("usage: bounce-replay TRACE.jsonl [--config KEY=VALUE,...|@FILE.json] [--timed]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut trace, mut config, mut timed) = (None, String::new(), false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(c) => config = c.clone(),
                None => return usage(),
            },
            "--timed" => timed = true,
            "-h" | "--help" => return usage(),
            _ if trace.is_none() => trace = Some(a.clone()),
            _ => return usage(),
        }
    }
    let Some(trace) = trace else { return usage() };
    match run(&trace, &config, timed) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bounce-replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(trace: &str, config: &str, timed: bool) -> Result<String, String> {
    let config = match config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => config.to_string(),
    };
    let cfg = SwiotlbConfig::from_json_or_kv(&config).map_err(|e| e.to_string())?;
    let file = File::open(trace).map_err(|e| format!("{trace}: {e}"))?;
    let recs = read_trace(BufReader::new(file)).map_err(|e| format!("{trace}: {e}"))?;
    let end = recs
        .iter()
        .map(|r| r.addr.saturating_add(r.len as u64))
        .max()
        .unwrap_or(0)
        .max(4096)
        .next_multiple_of(4096);
    let size = usize::try_from(end).map_err(|_| "trace addresses too large".to_string())?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
        .map_err(|e| format!("guest memory of {size:#x} bytes: {e}"))?;
    let swiotlb = Swiotlb::new(cfg.clone()).map_err(|e| e.to_string())?;
    let dma = Dma::bounced(mem, swiotlb);
    let mut live = HashMap::new();
    let (mut map_failures, mut op_failures, mut skipped) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for r in &recs {
        if timed {
            let at = Duration::from_nanos(r.t_ns);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let src = DmaSource {
            device: r.device,
            queue: r.queue,
        };
        match r.op {
            TraceOp::Map => match dma.map(src, GuestAddress(r.addr), r.len, r.dir) {
                Ok(b) => {
                    live.insert(r.id, b);
                }
                Err(_) => map_failures += 1,
            },
            TraceOp::Unmap => match live.remove(&r.id) {
                Some(b) => op_failures += b.unmap().is_err() as u64,
                None => skipped += 1,
            },
            TraceOp::SyncForCpu | TraceOp::SyncForDevice => match live.get_mut(&r.id) {
                Some(b) => {
                    let res = if r.op == TraceOp::SyncForCpu {
                        b.sync_for_cpu()
                    } else {
                        b.sync_for_device()
                    };
                    op_failures += res.is_err() as u64;
                }
                None => skipped += 1,
            },
        }
    }
    let still_live = live.len();
    let wall_ns = start.elapsed().as_nanos() as u64;
    let stats_before_drop = dma.stats();
    drop(live);
    let out = serde_json::json!({
        "trace": trace,
        "records": recs.len(),
        "config": cfg,
        "wall_ns": wall_ns,
        "map_failures": map_failures,
        "op_failures": op_failures,
        "skipped_records": skipped,
        "live_at_end": still_live,
        "stats": stats_before_drop,
    });
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}
