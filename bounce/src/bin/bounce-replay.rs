//! Replays a DMA trace (JSON lines, see the crate README) against one pool configuration and
//! prints the statistics as JSON, or against several and prints one table.
//!
//! ```text
//! bounce-replay TRACE.jsonl [--config 'size=64M,lookup=list,...' | --config @cfg.json]...
//!               [--vary 'KEY=V1|V2|...']... [--timed] [--may-block] [--repeat N] [--json]
//! ```
//! The trace's guest addresses are backed by one sparse anonymous guest memory region, and every
//! record goes through the same `Dma` map/sync/unmap path the devices use, so copies are real.
//! `--timed` keeps the recorded gaps between operations (for the worker's growth and shrink, and
//! the time a deferred map waits); without it the trace runs as fast as possible.
//!
//! `--may-block`: every map passes `MapAttrs::may_block` (the device opts in, as a driver passes
//! `DMA_ATTR_MAY_BLOCK`): with `exhaustion=throttle` or `wait` a map may answer `WouldBlock`.
//! The replay then does what a device would: it defers the request and every later map of the
//! same source (queue order is kept), and retries them in order when that source's waker fires;
//! an unmap that arrives for a deferred map is done right after it maps. A map's latency runs
//! from its first attempt to its success.
//!
//! Several configurations (more than one `--config`, or `--vary`, which crosses every value of
//! each key with every configuration) print a Markdown table, one row each: I/O failures,
//! deferred maps, conversion time on the I/O path and in the background, peak shared memory,
//! map latency p50/p99, transient pools and extensions; `--json` prints one JSON object per
//! line instead. `--repeat N` runs each configuration N times; a table cell is then the median
//! of the N runs (each column on its own; failures and deferred maps with their range), and a
//! `--json` line is printed per run.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce::{
    read_trace, Dma, DmaBuffer, DmaError, DmaSource, MapAttrs, StatsSnapshot, Swiotlb,
    SwiotlbConfig, TraceOp, TraceRecord,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn usage() -> ExitCode {
    eprintln!(
        "usage: bounce-replay TRACE.jsonl [--config KEY=VALUE,...|@FILE.json]... \
         [--vary 'KEY=V1|V2|...']... [--timed] [--may-block] [--repeat N] [--json]"
    );
    ExitCode::from(2)
}

struct Opts {
    timed: bool,
    may_block: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut trace, mut configs, mut vary, mut json) = (None, Vec::new(), Vec::new(), false);
    let mut repeat = 1usize;
    let mut opts = Opts {
        timed: false,
        may_block: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(c) => configs.push(c.clone()),
                None => return usage(),
            },
            "--vary" => match it.next().and_then(|v| v.split_once('=')) {
                Some((k, vs)) => vary.push((k.to_string(), vs.split('|').map(String::from))),
                None => return usage(),
            },
            "--timed" => opts.timed = true,
            "--may-block" => opts.may_block = true,
            "--json" => json = true,
            "--repeat" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => repeat = n,
                _ => return usage(),
            },
            "-h" | "--help" => return usage(),
            _ if trace.is_none() => trace = Some(a.clone()),
            _ => return usage(),
        }
    }
    let Some(trace) = trace else { return usage() };
    if configs.is_empty() {
        configs.push(String::new());
    }
    // Each configuration, crossed with each value of each varied key: (row labels, config).
    let mut rows: Vec<(Vec<String>, String)> = configs
        .iter()
        .map(|c| (vec![c.clone()], c.clone()))
        .collect();
    let keys: Vec<String> = vary.iter().map(|(k, _)| k.clone()).collect();
    for (k, vs) in vary {
        let vs: Vec<String> = vs.collect();
        rows = rows
            .into_iter()
            .flat_map(|(labels, c)| {
                vs.iter()
                    .map(|v| {
                        let mut l = labels.clone();
                        l.push(v.clone());
                        let sep = if c.is_empty() { "" } else { "," };
                        (l, format!("{c}{sep}{k}={v}"))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    let recs = match load(&trace) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bounce-replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table = rows.len() > 1 && !json;
    // One configuration crossed with varied keys: say it once, above the table.
    let base_col = configs.len() != 1 || keys.is_empty();
    if table {
        if !base_col {
            println!("Base configuration: `{}`\n", configs[0]);
        }
        let mut head = if base_col {
            vec!["config".to_string()]
        } else {
            Vec::new()
        };
        head.extend(keys.iter().cloned());
        head.extend(COLUMNS.iter().map(|c| c.to_string()));
        println!("| {} |", head.join(" | "));
        println!("|{}", " --- |".repeat(head.len()));
    }
    for (labels, config) in rows {
        let mut runs = Vec::new();
        for _ in 0..repeat {
            match replay(&recs, &config, &opts) {
                Ok(o) => runs.push(o),
                Err(e) => {
                    eprintln!("bounce-replay: {config}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if table {
            let mut cells = if base_col {
                labels
            } else {
                labels[1..].to_vec()
            };
            cells.extend(median_cells(&runs));
            println!("| {} |", cells.join(" | "));
        } else {
            for out in &runs {
                let j = out.json(&trace, &config);
                let s = if json {
                    serde_json::to_string(&j)
                } else {
                    serde_json::to_string_pretty(&j)
                };
                println!("{}", s.unwrap_or_default());
            }
        }
    }
    ExitCode::SUCCESS
}

fn load(trace: &str) -> Result<Vec<TraceRecord>, String> {
    let file = File::open(trace).map_err(|e| format!("{trace}: {e}"))?;
    read_trace(BufReader::new(file)).map_err(|e| format!("{trace}: {e}"))
}

const COLUMNS: [&str; 9] = [
    "I/O failures",
    "deferred maps",
    "conversion ms: I/O path",
    "background",
    "peak shared MiB",
    "map p50 ns",
    "map p99 ns",
    "transient pools",
    "extensions (sync)",
];

/// Each column's median over the runs.
fn median_cells(runs: &[Outcome]) -> Vec<String> {
    let mut cols: Vec<Vec<(f64, String)>> = vec![Vec::new(); COLUMNS.len()];
    for r in runs {
        for (c, (v, s)) in cols.iter_mut().zip(r.cells()) {
            c.push((v, s));
        }
    }
    cols.into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lo, hi) = (c[0].0, c[c.len() - 1].0);
            let mid = c.swap_remove(c.len() / 2).1;
            // The counts that vary most between runs (the worker's timing) get their range.
            if i < 2 && lo != hi {
                format!("{mid} ({lo}-{hi})")
            } else {
                mid
            }
        })
        .collect()
}

struct Outcome {
    cfg: SwiotlbConfig,
    records: usize,
    wall_ns: u64,
    map_failures: u64,
    op_failures: u64,
    skipped: u64,
    deferred: u64,
    never_mapped: u64,
    live_at_end: usize,
    /// Per successful map: ns from its first attempt to its success.
    latencies: Vec<u64>,
    stats: StatsSnapshot,
}

impl Outcome {
    fn percentile(&self, p: f64) -> u64 {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The table's cells, each with the number it is sorted by for the median.
    fn cells(&self) -> Vec<(f64, String)> {
        let s = &self.stats;
        let n = |v: u64| (v as f64, v.to_string());
        let ms = |c: &bounce::ConversionsBy| {
            let v = (c.to_shared.ns + c.to_private.ns) as f64 / 1e6;
            (v, format!("{v:.1}"))
        };
        let mib = s.shared_bytes_hiwater as f64 / (1 << 20) as f64;
        let ext = s.extensions + s.blocking.sync_growths;
        vec![
            n(self.map_failures + self.never_mapped),
            n(self.deferred),
            ms(&s.conversions.io_path),
            ms(&s.conversions.background),
            (mib, format!("{mib:.1}")),
            n(self.percentile(0.5)),
            n(self.percentile(0.99)),
            n(s.transient_created),
            (
                ext as f64,
                format!("{} ({})", s.extensions, s.blocking.sync_growths),
            ),
        ]
    }

    fn json(&self, trace: &str, config: &str) -> serde_json::Value {
        serde_json::json!({
            "trace": trace,
            "config_given": config,
            "records": self.records,
            "config": self.cfg,
            "wall_ns": self.wall_ns,
            "map_failures": self.map_failures,
            "op_failures": self.op_failures,
            "skipped_records": self.skipped,
            "deferred_maps": self.deferred,
            "never_mapped": self.never_mapped,
            "live_at_end": self.live_at_end,
            "map_latency_ns": {"p50": self.percentile(0.5), "p99": self.percentile(0.99)},
            "stats": self.stats,
        })
    }
}

/// A map the replay deferred (`WouldBlock`, or queued behind one of its source).
struct Deferred {
    rec: usize,
    first: Instant,
    /// Its unmap came while it waited: unmap it as soon as it maps.
    unmap: bool,
}

struct Replay<'a> {
    dma: &'a Dma,
    recs: &'a [TraceRecord],
    attrs: MapAttrs,
    live: HashMap<u64, DmaBuffer<'a>>,
    deferred: HashMap<DmaSource, VecDeque<Deferred>>,
    woken: HashMap<DmaSource, Arc<AtomicBool>>,
    out: Outcome,
}

fn src_of(r: &TraceRecord) -> DmaSource {
    DmaSource {
        device: r.device,
        queue: r.queue,
    }
}

impl<'a> Replay<'a> {
    /// Maps record `i`; `Ok(false)`: it must wait.
    fn try_map(&mut self, i: usize, first: Instant) -> bool {
        let r = &self.recs[i];
        let res = self
            .dma
            .map_with(src_of(r), GuestAddress(r.addr), r.len, r.dir, self.attrs);
        match res {
            Ok(b) => {
                self.out.latencies.push(first.elapsed().as_nanos() as u64);
                self.live.insert(r.id, b);
                true
            }
            Err(DmaError::WouldBlock { .. }) => false,
            Err(_) => {
                self.out.map_failures += 1;
                true
            }
        }
    }

    fn unmap(&mut self, id: u64) -> bool {
        match self.live.remove(&id) {
            Some(b) => {
                self.out.op_failures += b.unmap().is_err() as u64;
                true
            }
            None => false,
        }
    }

    /// Retries, in order, the deferred maps of every source whose waker fired.
    fn service_wakes(&mut self) {
        let fired: Vec<DmaSource> = self
            .woken
            .iter()
            .filter(|(_, w)| w.swap(false, Ordering::AcqRel))
            .map(|(s, _)| *s)
            .collect();
        for src in fired {
            while let Some(d) = self.deferred.get_mut(&src).and_then(|q| q.pop_front()) {
                if !self.try_map(d.rec, d.first) {
                    self.deferred.get_mut(&src).unwrap().push_front(d);
                    break;
                }
                if d.unmap {
                    self.unmap(self.recs[d.rec].id);
                }
            }
        }
    }

    fn pending(&self) -> bool {
        self.deferred.values().any(|q| !q.is_empty())
    }

    fn record(&mut self, i: usize) {
        let r = &self.recs[i];
        let src = src_of(r);
        match r.op {
            TraceOp::Map => {
                let now = Instant::now();
                let queued = self.deferred.get(&src).is_some_and(|q| !q.is_empty());
                if queued || !self.try_map(i, now) {
                    self.out.deferred += 1;
                    self.deferred.entry(src).or_default().push_back(Deferred {
                        rec: i,
                        first: now,
                        unmap: false,
                    });
                }
            }
            TraceOp::Unmap => {
                if !self.unmap(r.id) {
                    let id = r.id;
                    let recs = self.recs;
                    match self
                        .deferred
                        .get_mut(&src)
                        .and_then(|q| q.iter_mut().find(|d| recs[d.rec].id == id))
                    {
                        Some(d) => d.unmap = true,
                        None => self.out.skipped += 1,
                    }
                }
            }
            TraceOp::SyncForCpu | TraceOp::SyncForDevice => match self.live.get_mut(&r.id) {
                Some(b) => {
                    let res = if r.op == TraceOp::SyncForCpu {
                        b.sync_for_cpu()
                    } else {
                        b.sync_for_device()
                    };
                    self.out.op_failures += res.is_err() as u64;
                }
                None => self.out.skipped += 1,
            },
        }
    }
}

fn replay(recs: &[TraceRecord], config: &str, opts: &Opts) -> Result<Outcome, String> {
    let config = match config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => config.to_string(),
    };
    let cfg = SwiotlbConfig::from_json_or_kv(&config).map_err(|e| e.to_string())?;
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
    // Touch every page now, so that the replay times the pools, not first-touch page faults.
    for page in (0..size as u64).step_by(4096) {
        mem.write_obj(0u8, GuestAddress(page))
            .map_err(|e| format!("guest memory: {e}"))?;
    }
    let swiotlb = Swiotlb::new(cfg.clone()).map_err(|e| e.to_string())?;
    let dma = Dma::bounced(mem, swiotlb);
    let mut rp = Replay {
        dma: &dma,
        recs,
        attrs: MapAttrs {
            may_block: opts.may_block,
            ..Default::default()
        },
        live: HashMap::new(),
        deferred: HashMap::new(),
        woken: HashMap::new(),
        out: Outcome {
            cfg,
            records: recs.len(),
            wall_ns: 0,
            map_failures: 0,
            op_failures: 0,
            skipped: 0,
            deferred: 0,
            never_mapped: 0,
            live_at_end: 0,
            latencies: Vec::with_capacity(recs.len() / 2),
            stats: StatsSnapshot::default(),
        },
    };
    for r in recs {
        let src = src_of(r);
        rp.woken.entry(src).or_insert_with(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            dma.set_waker(
                src,
                Some(Arc::new(move || f.store(true, Ordering::Release))),
            );
            flag
        });
    }
    let start = Instant::now();
    for (i, r) in recs.iter().enumerate() {
        if opts.timed {
            let at = Duration::from_nanos(r.t_ns);
            // Sleep through long gaps (timer slack is tens of us), spin through short ones.
            while let Some(wait) = at.checked_sub(start.elapsed()) {
                rp.service_wakes();
                if wait > Duration::from_micros(300) {
                    std::thread::sleep(Duration::from_micros(200));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        rp.service_wakes();
        rp.record(i);
    }
    // Deferred maps still waiting: give their wakers time (the worker's timeouts, growth).
    let drain = Instant::now();
    while rp.pending() && drain.elapsed() < Duration::from_secs(10) {
        rp.service_wakes();
        std::thread::sleep(Duration::from_micros(100));
    }
    rp.out.never_mapped = rp.deferred.values().map(|q| q.len() as u64).sum();
    rp.out.live_at_end = rp.live.len();
    rp.out.wall_ns = start.elapsed().as_nanos() as u64;
    rp.out.stats = dma.stats().unwrap_or_default();
    let Replay { live, out, .. } = rp;
    drop(live);
    Ok(out)
}
