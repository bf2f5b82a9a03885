//! virtio-blk driven by a minimal in-process driver (no guest) against a 64 MiB temp file (page
//! cache; `rand_read_4k_disk` drops each request's range from it first, so it reads the host's
//! disk): 32 requests per iteration, posted `iodepth` at a time (1: post one, wait for it; 32:
//! post 32, notify once, wait for all), with the sync and io_uring engines, direct vs bounced DMA.
//! Completions are waited for as the event loop does: poll the device's eventfd, then
//! `process_backend`. After criterion's groups, one table with the ratios side by side
//! (bounced/direct time, uring vs sync IOPS), from its own interleaved timing.
//! A second table measures `--metrics` at 100 ms: bounced DMA with and without a metrics
//! thread that, every 100 ms, snapshots the pool statistics (JSON) and the queue's counters and
//! appends the line to a file, as microvm's event loop does on its own thread beside the
//! disk's (`vmm/src/metrics.rs`), with a second plain bounced driver as an A/A control (the
//! noise floor of the same measurement).
//! The engine table compares, beside sync and plain io_uring, io_uring with a registered file,
//! with `IOSQE_ASYNC`, with SQPOLL, and with writes on the device thread (`UringOptions`),
//! after the time of the bare `memcpy`s a bounced read adds (the floor of its overhead).
//! `CARGO_TARGET_DIR=... cargo bench -p devices --bench block`
//! (`BLK_BENCH_TABLE_ONLY=1`: the tables alone; `BLK_BENCH_ENGINES_ONLY=1`: the engine table
//! alone, `BLK_BENCH_ENGINE_ROUNDS=N` rounds, default 15; `BLK_BENCH_METRICS_ONLY=1`: the
//! metrics table alone, `BLK_BENCH_ROUNDS=N` interleaved rounds of 120 ms samples, default 21;
//! `BLK_BENCH_PROFILE=...`: one driver alone, see `profile`.)

use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce::{Dma, DmaQueue, DmaSource, QueueCounters};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::virtio::block::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use devices::virtio::{Block, BlockConfig, Engine, Interrupt, UringOptions, VirtioDevice};
use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const QSIZE: u16 = 256;
const BATCH: u16 = 32;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HDRS: u64 = 0x3000;
const STATUS: u64 = 0x4000;
const DATA: u64 = 0x10_0000;
const DISK: u64 = 64 << 20;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// `--metrics PATH,interval=100ms`: a thread (microvm's event loop) appending a line every
/// 100 ms from the pool statistics and the queue's counters; stopped and joined on drop.
struct MetricsThread {
    stop: Arc<AtomicBool>,
    /// Lines written and the thread's CPU time (ns).
    handle: Option<std::thread::JoinHandle<(u64, u64)>>,
    started: Instant,
}

/// This thread's CPU time so far (ns).
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one timespec, valid across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl MetricsThread {
    fn start(dma: Dma, counters: Arc<QueueCounters>) -> MetricsThread {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let file = TempFile::new().unwrap();
                let mut f = file.as_file();
                let mut lines = 0u64;
                let mut next = Instant::now() + Duration::from_millis(100);
                while !s.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                        continue;
                    }
                    next += Duration::from_millis(100);
                    let stats = dma.stats().map(|s| s.to_json()).unwrap_or_default();
                    let line = format!(
                        "{{\"seq\":{lines},\"queue\":{:?},\"bounce\":{stats}}}\n",
                        counters.snapshot()
                    );
                    f.write_all(line.as_bytes()).unwrap();
                    lines += 1;
                }
                (lines, thread_cpu_ns())
            })
            .unwrap();
        MetricsThread {
            stop,
            handle: Some(handle),
            started: Instant::now(),
        }
    }

    /// Stops the thread: (lines, its CPU time, the time it ran).
    fn finish(&mut self) -> (u64, Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let ran = self.started.elapsed();
        let (lines, cpu) = self
            .handle
            .take()
            .map_or((0, 0), |h| h.join().unwrap_or((0, 0)));
        (lines, Duration::from_nanos(cpu), ran)
    }
}

impl Drop for MetricsThread {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An engine and how it uses io_uring: what a row of the tables compares.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    engine: Engine,
    uring: UringOptions,
}

/// The SQPOLL thread's idle time in the bench: short, as each driver's samples alternate with
/// the others' and a polling thread left spinning would take a core from the next one (the
/// bench also waits this long, untimed, after each SQPOLL sample).
const BENCH_SQPOLL_IDLE_MS: u32 = 2;

const SYNC: Variant = Variant {
    name: "sync",
    engine: Engine::Sync,
    ..URING
};
const URING: Variant = Variant {
    name: "uring",
    engine: Engine::Uring,
    uring: UringOptions {
        sqpoll_idle_ms: None,
        force_async: false,
        fixed_file: false,
        inline_writes: false,
    },
};

/// Every variant the engine table compares, the old ones (sync, uring) first.
const VARIANTS: [Variant; 6] = [
    SYNC,
    URING,
    Variant {
        name: "u+fixed",
        uring: UringOptions {
            fixed_file: true,
            ..URING.uring
        },
        ..URING
    },
    Variant {
        name: "u+async",
        uring: UringOptions {
            force_async: true,
            ..URING.uring
        },
        ..URING
    },
    Variant {
        name: "u+sqpoll",
        uring: UringOptions {
            sqpoll_idle_ms: Some(BENCH_SQPOLL_IDLE_MS),
            ..URING.uring
        },
        ..URING
    },
    Variant {
        name: "u+wsync",
        uring: UringOptions {
            inline_writes: true,
            ..URING.uring
        },
        ..URING
    },
];

struct Driver {
    mem: GuestMemoryMmap,
    /// Wait after a sample (untimed): an SQPOLL thread's idle spin.
    settle: Duration,
    _metrics: Option<MetricsThread>,
    blk: Block,
    avail_idx: u16,
    _irq: EventFd,
    _disk: TempFile,
    seed: u64,
    /// Where the next sequential request goes (bytes).
    pos: u64,
}

impl Driver {
    fn new(bounced: bool, engine: Engine) -> Driver {
        Driver::with_metrics(bounced, engine, false)
    }

    fn with_metrics(bounced: bool, engine: Engine, metrics: bool) -> Driver {
        let v = if engine == Engine::Sync { SYNC } else { URING };
        Driver::build(bounced, v, metrics)
    }

    fn build(bounced: bool, v: Variant, metrics: bool) -> Driver {
        let engine = v.engine;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        mem.write_slice(&vec![0x5a; 8 << 20], GuestAddress(0))
            .unwrap();
        let dma = if bounced {
            Dma::bounced_from_str(mem.clone(), "").unwrap()
        } else {
            Dma::direct(mem.clone())
        };
        let disk = TempFile::new().unwrap();
        let f = disk.as_file().try_clone().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![0xa5; DISK as usize], 0).unwrap();
        // Clean pages, so that `uncached` workloads can drop them.
        f.sync_all().unwrap();
        let cfg = BlockConfig {
            engine,
            uring: v.uring,
            ..Default::default()
        };
        let mut blk = Block::new(f, cfg).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let mut dq = DmaQueue::new(QSIZE, dma.clone(), DmaSource::default()).unwrap();
        *dq.queue_mut() = q;
        let counters = Arc::new(QueueCounters::default());
        dq.set_counters(counters.clone());
        let metrics = metrics.then(|| MetricsThread::start(dma, counters));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        blk.activate(vec![dq], Interrupt::new(irq.try_clone().unwrap()))
            .unwrap();
        Driver {
            mem,
            settle: v
                .uring
                .sqpoll_idle_ms
                .filter(|_| engine == Engine::Uring)
                .map_or(Duration::ZERO, |ms| {
                    Duration::from_millis(u64::from(ms) + 1)
                }),
            _metrics: metrics,
            blk,
            avail_idx: 0,
            _irq: irq,
            _disk: disk,
            seed: 1,
            pos: 0,
        }
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(DESC + u64::from(i) * 16))
            .unwrap();
    }

    /// Posts request `i` of a batch (slot `i`'s header, data and status).
    fn post(&mut self, i: u16, w: &Workload) {
        let len = w.len;
        let dflags = if w.write { NEXT } else { NEXT | WRITE };
        let sector = if w.random {
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((self.seed >> 33) % (DISK / u64::from(len))) * u64::from(len) / 512
        } else {
            let s = self.pos / 512;
            self.pos = (self.pos + u64::from(len)) % DISK;
            s
        };
        if w.uncached {
            // Out of the page cache: the read goes to the host's disk. The whole 2 MiB around
            // it, as the page cache may hold the file in folios that large (a smaller range
            // inside one is not dropped).
            const FOLIO: u64 = 2 << 20;
            let fd = self._disk.as_file().as_raw_fd();
            // SAFETY: an advice on our own fd; no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    fd,
                    ((sector * 512) & !(FOLIO - 1)) as libc::off_t,
                    FOLIO as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
        let t = if w.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        let hdr = HDRS + u64::from(i) * 16;
        self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let d = i * 3;
        self.desc(d, hdr, 16, NEXT, d + 1);
        let data = DATA + u64::from(i) * u64::from(len);
        self.desc(d + 1, data, len, dflags, d + 2);
        self.desc(d + 2, STATUS + u64::from(i), 1, WRITE, 0);
        let slot = AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(d, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Notifies, then serves completions (poll the device's eventfd, `process_backend`) until
    /// every posted request is answered.
    fn run(&mut self) {
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.blk.process_queue(0).unwrap();
        while self.used_idx() != self.avail_idx {
            let (fd, _) = self.blk.backend_interest().expect("device has an eventfd");
            poll_in(fd);
            self.blk.process_backend(EventSet::IN).unwrap();
        }
    }

    /// One iteration: 32 requests, `depth` at a time.
    fn iteration(&mut self, w: &Workload, depth: u16) {
        let mut i = 0;
        while i < BATCH {
            for k in 0..depth.min(BATCH - i) {
                self.post(k, w);
            }
            i += depth;
            self.run();
        }
    }

    /// The status bytes of the last `depth` requests say OK.
    fn check(&self, name: &str, depth: u16) {
        let mut st = vec![0xffu8; usize::from(depth.min(BATCH))];
        self.mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
        assert!(st.iter().all(|&s| s == 0), "{name}: requests failed");
    }
}

fn poll_in(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid across the call.
    unsafe { libc::poll(&mut p, 1, 1000) };
}

struct Workload {
    name: &'static str,
    write: bool,
    len: u32,
    random: bool,
    /// Each request's range is dropped from the page cache first (`POSIX_FADV_DONTNEED`): the
    /// read waits for the host's disk, where requests in flight together overlap.
    uncached: bool,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "seq_read_64k",
        write: false,
        len: 64 << 10,
        random: false,
        uncached: false,
    },
    Workload {
        name: "seq_write_64k",
        write: true,
        len: 64 << 10,
        random: false,
        uncached: false,
    },
    Workload {
        name: "rand_read_4k",
        write: false,
        len: 4 << 10,
        random: true,
        uncached: false,
    },
    Workload {
        name: "rand_write_4k",
        write: true,
        len: 4 << 10,
        random: true,
        uncached: false,
    },
    Workload {
        name: "rand_read_4k_disk",
        write: false,
        len: 4 << 10,
        random: true,
        uncached: true,
    },
];

const ENGINES: [Engine; 2] = [Engine::Sync, Engine::Uring];
const DEPTHS: [u16; 2] = [1, 32];

fn blk(c: &mut Criterion) {
    if std::env::var_os("BLK_BENCH_TABLE_ONLY").is_some()
        || std::env::var_os("BLK_BENCH_METRICS_ONLY").is_some()
        || std::env::var_os("BLK_BENCH_ENGINES_ONLY").is_some()
    {
        return;
    }
    for w in &WORKLOADS {
        for depth in DEPTHS {
            let mut g = c.benchmark_group(format!("blk_{}_qd{depth}", w.name));
            g.measurement_time(Duration::from_secs(1))
                .warm_up_time(Duration::from_millis(300))
                .sample_size(10)
                .throughput(Throughput::Bytes(u64::from(BATCH) * u64::from(w.len)));
            for engine in ENGINES {
                for (mode, bounced) in [("direct", false), ("bounced", true)] {
                    let mut d = Driver::new(bounced, engine);
                    d.iteration(w, depth);
                    d.check(w.name, depth);
                    g.bench_function(format!("{engine}/{mode}"), |b| {
                        b.iter(|| d.iteration(w, depth))
                    });
                }
            }
            g.finish();
        }
    }
}

/// Median time of one iteration (32 requests) of each of `configs` (variant, bounced), measured
/// interleaved (one sample of each in turn, `rounds` rounds of ~20 ms samples after a warm-up),
/// so that a machine whose load drifts skews the ratios less than the absolute figures.
fn measure(w: &Workload, depth: u16, configs: &[(Variant, bool)], rounds: usize) -> Vec<Duration> {
    let mut drivers: Vec<Driver> = configs
        .iter()
        .map(|&(v, bounced)| Driver::build(bounced, v, false))
        .collect();
    samples(w, depth, &mut drivers, rounds, Duration::from_millis(20))
        .into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

/// `rounds` interleaved samples of about `len` each (time per iteration) of each driver, after
/// a warm-up.
fn samples(
    w: &Workload,
    depth: u16,
    drivers: &mut [Driver],
    rounds: usize,
    len: Duration,
) -> Vec<Vec<Duration>> {
    for d in drivers.iter_mut() {
        d.iteration(w, depth);
        d.check(w.name, depth);
    }
    let per: Vec<u32> = drivers
        .iter_mut()
        .map(|d| {
            let t = Instant::now();
            let mut n = 0u32;
            while t.elapsed() < len {
                d.iteration(w, depth);
                n += 1;
            }
            n.max(1)
        })
        .collect();
    let mut samples = vec![Vec::new(); drivers.len()];
    for round in 0..rounds {
        // Each round in a different order, so no driver always runs right after another.
        let k = drivers.len();
        for j in 0..k {
            let i = (j + round) % k;
            let t = Instant::now();
            for _ in 0..per[i] {
                drivers[i].iteration(w, depth);
            }
            samples[i].push(t.elapsed() / per[i]);
            if !drivers[i].settle.is_zero() {
                std::thread::sleep(drivers[i].settle);
            }
        }
    }
    samples
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Quartiles of a sample.
fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[(3 * v.len()) / 4])
}

/// `--metrics` at 100 ms: per workload, depth and engine, bounced DMA without metrics (A),
/// with the metrics thread (M) and a second plain driver (A', the A/A control), sampled
/// interleaved. Ratios are per round (M/A and A'/A of the same round), then their median and
/// interquartile range: an M/A ratio inside the A'/A range is no measurable overhead.
fn metrics_table(_: &mut Criterion) {
    if (std::env::var_os("BLK_BENCH_METRICS_ONLY").is_none()
        && std::env::var_os("BLK_BENCH_TABLE_ONLY").is_none())
        || std::env::var_os("BLK_BENCH_ENGINES_ONLY").is_some()
    {
        return;
    }
    let rounds: usize = std::env::var("BLK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    println!();
    println!(
        "--metrics at 100 ms (a thread writing a line every 100 ms beside the device, as \
         microvm's event loop), bounced DMA; {rounds} interleaved rounds; per-round ratios: \
         median [interquartile range]"
    );
    println!(
        "{:<16} {:>3} {:<5} | {:>8} {:>8} | {:>21} | {:>21}",
        "workload", "qd", "eng", "A us/req", "M us/req", "M/A (metrics)", "A'/A (control)"
    );
    let mut all_m = Vec::new();
    let mut all_c = Vec::new();
    // Summed time per iteration over every sample: A, M, A'.
    let mut tot = [0.0f64; 3];
    // The metrics threads' lines, CPU time and lifetime.
    let (mut lines, mut line_cpu, mut line_ran) = (0u64, Duration::ZERO, Duration::ZERO);
    // The page-cache workloads (the disk one's noise is the disk's).
    for w in WORKLOADS.iter().filter(|w| !w.uncached) {
        for depth in DEPTHS {
            for engine in ENGINES {
                let mut drivers = vec![
                    Driver::with_metrics(true, engine, false),
                    Driver::with_metrics(true, engine, true),
                    Driver::with_metrics(true, engine, false),
                ];
                // Samples longer than the interval: each holds one or two lines.
                let s = samples(w, depth, &mut drivers, rounds, Duration::from_millis(120));
                if let Some(m) = drivers[1]._metrics.as_mut() {
                    let (n, cpu, ran) = m.finish();
                    lines += n;
                    line_cpu += cpu;
                    line_ran += ran;
                }
                let secs =
                    |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64()).collect() };
                let (a, m, c) = (secs(&s[0]), secs(&s[1]), secs(&s[2]));
                tot[0] += a.iter().sum::<f64>();
                tot[1] += m.iter().sum::<f64>();
                tot[2] += c.iter().sum::<f64>();
                let rm: Vec<f64> = m.iter().zip(&a).map(|(m, a)| m / a).collect();
                let rc: Vec<f64> = c.iter().zip(&a).map(|(c, a)| c / a).collect();
                all_m.extend(rm.iter().copied());
                all_c.extend(rc.iter().copied());
                let per_req = |v: Vec<f64>| median(v) * 1e6 / f64::from(BATCH);
                let (m25, m75) = quartiles(rm.clone());
                let (c25, c75) = quartiles(rc.clone());
                println!(
                    "{:<16} {:>3} {:<5} | {:>8.2} {:>8.2} | {:>5.3} [{:.3}-{:.3}] | {:>5.3} [{:.3}-{:.3}]",
                    w.name,
                    depth,
                    engine.to_string(),
                    per_req(a),
                    per_req(m),
                    median(rm),
                    m25,
                    m75,
                    median(rc),
                    c25,
                    c75
                );
            }
        }
    }
    let (m25, m75) = quartiles(all_m.clone());
    let (c25, c75) = quartiles(all_c.clone());
    println!(
        "{:<26} | {:>8} {:>8} | {:>5.3} [{:.3}-{:.3}] | {:>5.3} [{:.3}-{:.3}]",
        "all rounds of all rows",
        "",
        "",
        median(all_m),
        m25,
        m75,
        median(all_c),
        c25,
        c75
    );
    println!(
        "summed over every sample: M/A {:.4}, A'/A {:.4}",
        tot[1] / tot[0],
        tot[2] / tot[0]
    );
    // What the metrics thread costs whatever the noise: its own CPU time, per line and as a
    // share of the time it ran (on a machine with no core to spare, the most it can take from
    // the device's thread).
    println!(
        "metrics threads: {lines} lines in {:.1} s, {:.1} us CPU per line, CPU {:.4} % of the \
         time they ran",
        line_ran.as_secs_f64(),
        line_cpu.as_secs_f64() * 1e6 / lines.max(1) as f64,
        100.0 * line_cpu.as_secs_f64() / line_ran.as_secs_f64().max(1e-9)
    );
}

/// What a bounced request copies in user space, timed alone: 64 KiB and 4 KiB `memcpy`s
/// (`copy_nonoverlapping`, what vm-memory's `copy_to_volatile_slice` compiles to) between two
/// buffers the size of the bench's guest data and bounce pool, so that they are not all in cache.
fn copy_floor() {
    let mut src = vec![0x5au8; 4 << 20];
    let mut dst = vec![0u8; 4 << 20];
    for len in [64usize << 10, 4 << 10] {
        let n = src.len() / len;
        let mut best = f64::MAX;
        for _ in 0..15 {
            let t = Instant::now();
            let mut reps = 0u32;
            while t.elapsed() < Duration::from_millis(10) {
                for i in 0..n {
                    let (s, d) = (&src[i * len..][..len], &mut dst[i * len..][..len]);
                    d.copy_from_slice(std::hint::black_box(s));
                }
                reps += 1;
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(reps) / n as f64);
        }
        std::hint::black_box(&mut dst);
        src[0] = dst[1];
        println!(
            "memcpy {:>2} KiB: {best:.2} us (the bounced read's two extra copies: {:.2} us)",
            len >> 10,
            2.0 * best
        );
    }
}

/// The engine table: per workload and depth, µs per request of every [`VARIANTS`] entry,
/// direct and bounced, all measured interleaved in one run; then the ratios side by side:
/// bounced/direct time per variant, and each variant's IOPS over sync's (bounced).
/// `BLK_BENCH_ENGINE_ROUNDS=N`: interleaved rounds (default 15).
fn table(_: &mut Criterion) {
    if std::env::var_os("BLK_BENCH_METRICS_ONLY").is_some() {
        return;
    }
    let rounds: usize = std::env::var("BLK_BENCH_ENGINE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    println!();
    copy_floor();
    println!();
    println!(
        "virtio-blk, {BATCH} requests per iteration, medians of {rounds} interleaved samples; \
         variants: {} (u+: io_uring with a registered file, IOSQE_ASYNC, SQPOLL idle {} ms)",
        VARIANTS.map(|v| v.name).join(", "),
        BENCH_SQPOLL_IDLE_MS
    );
    let configs: Vec<(Variant, bool)> = VARIANTS
        .iter()
        .flat_map(|&v| [(v, false), (v, true)])
        .collect();
    let mut rows = Vec::new();
    for w in &WORKLOADS {
        for depth in DEPTHS {
            let us: Vec<f64> = measure(w, depth, &configs, rounds)
                .iter()
                .map(|t| t.as_secs_f64() * 1e6 / f64::from(BATCH))
                .collect();
            rows.push((w.name, depth, us));
        }
    }
    println!();
    println!("µs per request, direct / bounced");
    print!("{:<17} {:>3} |", "workload", "qd");
    for v in VARIANTS {
        print!(" {:>15} |", v.name);
    }
    println!();
    for (name, depth, us) in &rows {
        print!("{name:<17} {depth:>3} |");
        for i in 0..VARIANTS.len() {
            print!(" {:>7.2}/{:<7.2} |", us[2 * i], us[2 * i + 1]);
        }
        println!();
    }
    println!();
    println!("bounced/direct time (b/d) per variant; IOPS over sync's, bounced (x/s)");
    print!("{:<17} {:>3} |", "workload", "qd");
    for v in VARIANTS {
        print!(" {:>8}", v.name);
    }
    print!(" |");
    for v in &VARIANTS[1..] {
        print!(" {:>8}", v.name);
    }
    println!();
    for (name, depth, us) in &rows {
        print!("{name:<17} {depth:>3} |");
        for i in 0..VARIANTS.len() {
            print!(" {:>8.2}", us[2 * i + 1] / us[2 * i]);
        }
        print!(" |");
        for i in 1..VARIANTS.len() {
            print!(" {:>8.2}", us[1] / us[2 * i + 1]);
        }
        println!();
    }
}

/// `BLK_BENCH_PROFILE=WORKLOAD,QD,VARIANT,direct|bounced[,SECONDS]`: runs that one driver for
/// the time given (default 5 s) and nothing else, for `perf record`.
fn profile(_: &mut Criterion) {
    let Some(spec) = std::env::var_os("BLK_BENCH_PROFILE") else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let f: Vec<&str> = spec.split(',').collect();
    let w = WORKLOADS.iter().find(|w| w.name == f[0]).expect("workload");
    let depth: u16 = f[1].parse().expect("qd");
    let v = *VARIANTS.iter().find(|v| v.name == f[2]).expect("variant");
    let bounced = f[3] == "bounced";
    let secs: u64 = f.get(4).map_or(5, |s| s.parse().expect("seconds"));
    let mut d = Driver::build(bounced, v, false);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        d.iteration(w, depth);
        n += 1;
    }
    d.check(w.name, depth);
    println!(
        "{spec}: {:.2} us per request",
        t.elapsed().as_secs_f64() * 1e6 / (n * u64::from(BATCH)) as f64
    );
    std::process::exit(0);
}

criterion_group!(benches, profile, blk, table, metrics_table);
criterion_main!(benches);
