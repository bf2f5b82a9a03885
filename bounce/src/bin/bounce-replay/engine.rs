//! Replays one trace against one pool configuration: one thread per recorded device queue
//! (so the queues' area locks contend as they did), each queue's records in their order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bounce::trace::error_kind;
use bounce::{
    Dma, DmaBuffer, DmaError, DmaSource, MapAttrs, StatsSnapshot, Swiotlb, SwiotlbConfig, TraceOp,
    TraceRecord,
};
use hdrhistogram::Histogram;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub timed: bool,
    pub may_block: bool,
    pub lanes: Lanes,
}

/// Which records a replay thread takes, each in the trace's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lanes {
    /// `thread` when the trace records threads (microvm's version-2 traces, Linux's PIDs),
    /// else `queue` (version-1 traces).
    Auto,
    /// One thread per recorded (device, queue).
    Queue,
    /// One thread per recorded thread (a mapping's syncs and unmap go with its map).
    Thread,
    /// Every record on one thread (the replay before 2026-12-01).
    One,
}

/// Latency histograms, ns, per operation.
pub const OPS: [&str; 4] = ["map", "unmap", "sync_for_cpu", "sync_for_device"];

fn op_index(op: TraceOp) -> usize {
    match op {
        TraceOp::Map => 0,
        TraceOp::Unmap => 1,
        TraceOp::SyncForCpu => 2,
        TraceOp::SyncForDevice => 3,
    }
}

/// Latencies up to a minute at 3 significant figures. (An auto-resizing `Histogram::new` does
/// not resize on `saturating_record`: it clamped every value to its first range, 2 us.)
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// What one replay of a trace against one configuration gave.
pub struct Outcome {
    pub cfg: SwiotlbConfig,
    pub records: usize,
    /// The lane mode replayed (`auto` resolved).
    pub lanes: Lanes,
    pub threads: usize,
    pub wall_ns: u64,
    pub map_failures: u64,
    /// Map failures by error kind.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Maps the trace recorded as failed (tried again here; unmapped at once if they map).
    pub recorded_failures: u64,
    pub op_failures: u64,
    pub skipped: u64,
    pub deferred: u64,
    pub never_mapped: u64,
    pub live_at_end: usize,
    /// Per operation (`OPS`); a map's runs from its first attempt to its success.
    pub latency: [Histogram<u64>; 4],
    pub stats: StatsSnapshot,
}

impl Outcome {
    pub fn percentile(&self, op: usize, p: f64) -> u64 {
        let h = &self.latency[op];
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    }
}

/// Per-thread tallies, merged into the outcome.
struct Tally {
    map_failures: u64,
    failures_by_kind: BTreeMap<String, u64>,
    recorded_failures: u64,
    op_failures: u64,
    skipped: u64,
    deferred: u64,
    never_mapped: u64,
    live_at_end: usize,
    latency: [Histogram<u64>; 4],
}

impl Tally {
    fn new() -> Self {
        Tally {
            map_failures: 0,
            failures_by_kind: BTreeMap::new(),
            recorded_failures: 0,
            op_failures: 0,
            skipped: 0,
            deferred: 0,
            never_mapped: 0,
            live_at_end: 0,
            latency: [histogram(), histogram(), histogram(), histogram()],
        }
    }

    fn add(&mut self, t: Tally) {
        self.map_failures += t.map_failures;
        for (k, v) in t.failures_by_kind {
            *self.failures_by_kind.entry(k).or_default() += v;
        }
        self.recorded_failures += t.recorded_failures;
        self.op_failures += t.op_failures;
        self.skipped += t.skipped;
        self.deferred += t.deferred;
        self.never_mapped += t.never_mapped;
        self.live_at_end += t.live_at_end;
        for (a, b) in self.latency.iter_mut().zip(t.latency.iter()) {
            a.add(b).expect("histograms of the same kind");
        }
    }

    fn time(&mut self, op: TraceOp, since: Instant) {
        let ns = since.elapsed().as_nanos() as u64;
        self.latency[op_index(op)].saturating_record(ns.max(1));
    }
}

/// A map the replay deferred (`WouldBlock`, or queued behind one of its source).
struct Deferred {
    rec: usize,
    first: Instant,
    /// Its unmap came while it waited: unmap it as soon as it maps.
    unmap: bool,
}

/// One thread's replay: the records of its queues, in order.
struct Lane<'a> {
    dma: &'a Dma,
    recs: &'a [TraceRecord],
    idx: Vec<usize>,
    may_block: bool,
    live: HashMap<u64, DmaBuffer<'a>>,
    deferred: HashMap<DmaSource, VecDeque<Deferred>>,
    woken: HashMap<DmaSource, Arc<AtomicBool>>,
    t: Tally,
}

fn src_of(r: &TraceRecord) -> DmaSource {
    DmaSource {
        device: r.device,
        queue: r.queue,
    }
}

impl<'a> Lane<'a> {
    fn attrs(&self, r: &TraceRecord) -> MapAttrs {
        MapAttrs {
            may_block: r.may_block || self.may_block,
            ..r.attrs()
        }
    }

    /// Maps record `i`; `false`: it must wait.
    fn try_map(&mut self, i: usize, first: Instant) -> bool {
        let r = &self.recs[i];
        let attrs = self.attrs(r);
        match self
            .dma
            .map_with(src_of(r), GuestAddress(r.addr), r.len, r.dir, attrs)
        {
            Ok(b) => {
                self.t.time(TraceOp::Map, first);
                if r.failed() {
                    // Failed when recorded: its request never did I/O, nor will here.
                    self.t.op_failures += b.unmap().is_err() as u64;
                } else {
                    self.live.insert(r.id, b);
                }
                true
            }
            Err(DmaError::WouldBlock { .. }) => false,
            Err(e) => {
                self.t.map_failures += 1;
                *self
                    .t
                    .failures_by_kind
                    .entry(error_kind(&e).to_string())
                    .or_default() += 1;
                true
            }
        }
    }

    fn unmap(&mut self, id: u64) -> bool {
        match self.live.remove(&id) {
            Some(b) => {
                let now = Instant::now();
                self.t.op_failures += b.unmap().is_err() as u64;
                self.t.time(TraceOp::Unmap, now);
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
                if r.failed() {
                    self.t.recorded_failures += 1;
                }
                let now = Instant::now();
                let queued = self.deferred.get(&src).is_some_and(|q| !q.is_empty());
                if queued || !self.try_map(i, now) {
                    self.t.deferred += 1;
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
                    // Its map's queue (a converted Linux trace unmaps on whichever CPU).
                    match self
                        .deferred
                        .values_mut()
                        .find_map(|q| q.iter_mut().find(|d| recs[d.rec].id == id))
                    {
                        Some(d) => d.unmap = true,
                        None => self.t.skipped += 1,
                    }
                }
            }
            TraceOp::SyncForCpu | TraceOp::SyncForDevice => {
                let partial = r.partial_sync();
                match self.live.get_mut(&r.id) {
                    Some(b) => {
                        let now = Instant::now();
                        let res = match (r.op, partial) {
                            (TraceOp::SyncForCpu, None) => b.sync_for_cpu(),
                            (TraceOp::SyncForCpu, Some((o, l))) => {
                                b.sync_range_for_cpu(o as usize, l as usize)
                            }
                            (_, None) => b.sync_for_device(),
                            (_, Some((o, l))) => b.sync_range_for_device(o as usize, l as usize),
                        };
                        self.t.op_failures += res.is_err() as u64;
                        self.t.time(r.op, now);
                    }
                    None => self.t.skipped += 1,
                }
            }
        }
    }

    fn run(mut self, start: Instant, timed: bool) -> Tally {
        for k in 0..self.idx.len() {
            let i = self.idx[k];
            if timed {
                let at = Duration::from_nanos(self.recs[i].t_ns);
                // Sleep through long gaps (timer slack is tens of us), spin through short ones.
                while let Some(wait) = at.checked_sub(start.elapsed()) {
                    self.service_wakes();
                    if wait > Duration::from_micros(300) {
                        std::thread::sleep(Duration::from_micros(200));
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            self.service_wakes();
            self.record(i);
        }
        // Deferred maps still waiting: give their wakers time (the worker's timeouts, growth).
        let drain = Instant::now();
        while self.pending() && drain.elapsed() < Duration::from_secs(10) {
            self.service_wakes();
            std::thread::sleep(Duration::from_micros(100));
        }
        self.t.never_mapped = self.deferred.values().map(|q| q.len() as u64).sum();
        self.t.live_at_end = self.live.len();
        let Lane { live, t, .. } = self;
        drop(live);
        t
    }
}

/// Guest memory covering every address of the trace, every page touched (so that the replay
/// times the pools, not first-touch page faults).
pub fn guest_memory(recs: &[TraceRecord]) -> Result<GuestMemoryMmap, String> {
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
    for page in (0..size as u64).step_by(4096) {
        mem.write_obj(0u8, GuestAddress(page))
            .map_err(|e| format!("guest memory: {e}"))?;
    }
    Ok(mem)
}

/// What `auto` means for this trace.
pub fn resolve(lanes: Lanes, recs: &[TraceRecord]) -> Lanes {
    match lanes {
        Lanes::Auto if recs.iter().any(|r| r.thread.is_some()) => Lanes::Thread,
        Lanes::Auto => Lanes::Queue,
        l => l,
    }
}

/// Replays `recs` against `config` (a `key=value,...` string, a JSON object, or `@FILE`).
pub fn replay(
    recs: &[TraceRecord],
    mem: &GuestMemoryMmap,
    config: &str,
    opts: &Opts,
) -> Result<Outcome, String> {
    let config = match config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => config.to_string(),
    };
    let cfg = SwiotlbConfig::from_json_or_kv(&config).map_err(|e| e.to_string())?;
    let swiotlb = Swiotlb::new(cfg.clone()).map_err(|e| e.to_string())?;
    let dma = Dma::bounced(mem.clone(), swiotlb);
    // The lanes: one per (device, queue), per recorded thread, or one for all.
    let mode = resolve(opts.lanes, recs);
    let mut lanes: BTreeMap<(u32, u16, u16), Vec<usize>> = BTreeMap::new();
    let mut lane_of_map: HashMap<u64, (u32, u16, u16)> = HashMap::new();
    // A record without a thread (a failed map some recorders leave unattributed) goes with
    // the last thread seen on its queue, else the trace's first thread.
    let first_thread = recs.iter().find_map(|r| r.thread).unwrap_or(0);
    let mut thread_of_queue: HashMap<(u16, u16), u32> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        let own = match mode {
            Lanes::Queue | Lanes::Auto => (0, r.device, r.queue),
            Lanes::Thread => {
                let t = match r.thread {
                    Some(t) => {
                        thread_of_queue.insert((r.device, r.queue), t);
                        t
                    }
                    None => thread_of_queue
                        .get(&(r.device, r.queue))
                        .copied()
                        .unwrap_or(first_thread),
                };
                (t, 0, 0)
            }
            Lanes::One => (0, 0, 0),
        };
        let key = if r.op == TraceOp::Map {
            lane_of_map.insert(r.id, own);
            own
        } else {
            lane_of_map.get(&r.id).copied().unwrap_or(own)
        };
        lanes.entry(key).or_default().push(i);
    }
    let mut woken: HashMap<DmaSource, Arc<AtomicBool>> = HashMap::new();
    for r in recs {
        let src = src_of(r);
        woken.entry(src).or_insert_with(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            dma.set_waker(
                src,
                Some(Arc::new(move || f.store(true, Ordering::Release))),
            );
            flag
        });
    }
    let threads = lanes.len().max(1);
    let barrier = Barrier::new(threads + 1);
    let (tally, wall_ns) = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_values()
            .map(|idx| {
                let sources: std::collections::HashSet<DmaSource> =
                    idx.iter().map(|&i| src_of(&recs[i])).collect();
                let lane = Lane {
                    dma: &dma,
                    recs,
                    idx,
                    may_block: opts.may_block,
                    live: HashMap::new(),
                    deferred: HashMap::new(),
                    woken: woken
                        .iter()
                        .filter(|(s, _)| sources.contains(s))
                        .map(|(s, w)| (*s, w.clone()))
                        .collect(),
                    t: Tally::new(),
                };
                let (barrier, timed) = (&barrier, opts.timed);
                s.spawn(move || {
                    barrier.wait();
                    lane.run(Instant::now(), timed)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut total = Tally::new();
        for h in handles {
            total.add(h.join().expect("a replay thread panicked"));
        }
        (total, start.elapsed().as_nanos() as u64)
    });
    let stats = dma.stats().unwrap_or_default();
    Ok(Outcome {
        cfg,
        records: recs.len(),
        lanes: mode,
        threads,
        wall_ns,
        map_failures: tally.map_failures,
        failures_by_kind: tally.failures_by_kind,
        recorded_failures: tally.recorded_failures,
        op_failures: tally.op_failures,
        skipped: tally.skipped,
        deferred: tally.deferred,
        never_mapped: tally.never_mapped,
        live_at_end: tally.live_at_end,
        latency: tally.latency,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two queues served by one recorded thread, as microvm's virtio-blk event loop serves them.
    fn one_thread_two_queues() -> Vec<TraceRecord> {
        let mut recs = Vec::new();
        for id in 1..=40u64 {
            let map = TraceRecord {
                id,
                queue: (id % 2) as u16,
                thread: Some(1),
                thread_name: (id == 1).then(|| "blk0".to_string()),
                addr: id * 4096,
                len: 4096,
                dir: bounce::DmaDirection::ToDevice,
                ..Default::default()
            };
            recs.push(map.clone());
            recs.push(TraceRecord {
                op: TraceOp::Unmap,
                thread_name: None,
                ..map
            });
        }
        // A failed map without a thread goes with its queue's thread.
        recs.push(TraceRecord {
            id: 41,
            len: 4096,
            error: Some("no_space".into()),
            ..Default::default()
        });
        recs
    }

    #[test]
    fn a_one_thread_trace_replays_on_one_lane_by_default() {
        let recs = one_thread_two_queues();
        let mem = guest_memory(&recs).unwrap();
        let run = |lanes| {
            let opts = Opts {
                timed: false,
                may_block: false,
                lanes,
            };
            replay(&recs, &mem, "size=1M", &opts).unwrap()
        };
        let auto = run(Lanes::Auto);
        assert_eq!((auto.threads, auto.lanes), (1, Lanes::Thread));
        assert_eq!(auto.stats.maps, 41);
        assert_eq!(auto.live_at_end, 0);
        // Asked for: a thread per queue, contention the recording did not have.
        let queue = run(Lanes::Queue);
        assert_eq!((queue.threads, queue.lanes), (2, Lanes::Queue));
        assert_eq!(run(Lanes::One).threads, 1);
        // A trace without threads (version 1) keeps a thread per queue.
        let v1: Vec<TraceRecord> = recs
            .iter()
            .map(|r| TraceRecord {
                thread: None,
                thread_name: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(resolve(Lanes::Auto, &v1), Lanes::Queue);
    }

    #[test]
    fn histograms_keep_long_latencies() {
        let mut t = Tally::new();
        t.latency[0].saturating_record(5_000_000);
        t.latency[0].saturating_record(100);
        assert!(t.latency[0].max() >= 4_990_000, "{}", t.latency[0].max());
        assert!(t.latency[0].value_at_quantile(0.99) >= 4_990_000);
        let mut u = Tally::new();
        u.latency[0].saturating_record(10_000_000_000);
        t.add(u);
        assert!(t.latency[0].max() >= 9_990_000_000);
    }
}
