//! virtio-blk driven by a minimal in-process driver (no guest) against a 64 MiB temp file (page
//! cache; `rand_read_4k_disk` drops each request's range from it first, so it reads the host's
//! disk): 32 requests per iteration, posted `iodepth` at a time (1: post one, wait for it; 32:
//! post 32, notify once, wait for all), with the sync and io_uring engines, direct vs bounced DMA.
//! Completions are waited for as the event loop does: poll the device's eventfd, then
//! `process_backend`. After criterion's groups, one table with the ratios side by side
//! (bounced/direct time, uring vs sync IOPS), from its own interleaved timing.
//! `CARGO_TARGET_DIR=... cargo bench -p devices --bench block`
//! (`BLK_BENCH_TABLE_ONLY=1`: the table alone.)

use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bounce::{Dma, DmaQueue, DmaSource};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::virtio::block::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use devices::virtio::{Block, BlockConfig, Engine, Interrupt, VirtioDevice};
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

struct Driver {
    mem: GuestMemoryMmap,
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
            ..Default::default()
        };
        let mut blk = Block::new(f, cfg).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let mut dq = DmaQueue::new(QSIZE, dma, DmaSource::default()).unwrap();
        *dq.queue_mut() = q;
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        blk.activate(vec![dq], Interrupt::new(irq.try_clone().unwrap()))
            .unwrap();
        Driver {
            mem,
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
    if std::env::var_os("BLK_BENCH_TABLE_ONLY").is_some() {
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

/// Median time of one iteration (32 requests) of each of `configs` (engine, bounced), measured
/// interleaved (one sample of each in turn, 15 rounds of ~20 ms samples after a warm-up), so
/// that a machine whose load drifts skews the ratios less than the absolute figures.
fn measure(w: &Workload, depth: u16, configs: &[(Engine, bool)]) -> Vec<Duration> {
    let mut drivers: Vec<Driver> = configs
        .iter()
        .map(|&(engine, bounced)| {
            let mut d = Driver::new(bounced, engine);
            d.iteration(w, depth);
            d.check(w.name, depth);
            d
        })
        .collect();
    let per: Vec<u32> = drivers
        .iter_mut()
        .map(|d| {
            let t = Instant::now();
            let mut n = 0u32;
            while t.elapsed() < Duration::from_millis(20) {
                d.iteration(w, depth);
                n += 1;
            }
            n.max(1)
        })
        .collect();
    let mut samples = vec![Vec::new(); configs.len()];
    for _ in 0..15 {
        for ((d, &n), out) in drivers.iter_mut().zip(&per).zip(samples.iter_mut()) {
            let t = Instant::now();
            for _ in 0..n {
                d.iteration(w, depth);
            }
            out.push(t.elapsed() / n);
        }
    }
    samples
        .into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

/// The side-by-side table: per workload and depth, µs per request for each engine and mode,
/// bounced/direct time ratios, and uring/sync IOPS ratios.
fn table(_: &mut Criterion) {
    println!();
    println!(
        "virtio-blk, {BATCH} requests per iteration, medians of 15 interleaved samples (µs per \
         request; b/d = bounced/direct time; u/s = uring/sync IOPS)"
    );
    println!(
        "{:<16} {:>3} | {:>9} {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>7} {:>7}",
        "workload",
        "qd",
        "sync dir",
        "sync bnc",
        "b/d",
        "uring dir",
        "uring bnc",
        "b/d",
        "u/s dir",
        "u/s bnc"
    );
    let configs = [
        (Engine::Sync, false),
        (Engine::Sync, true),
        (Engine::Uring, false),
        (Engine::Uring, true),
    ];
    for w in &WORKLOADS {
        for depth in DEPTHS {
            let us: Vec<f64> = measure(w, depth, &configs)
                .iter()
                .map(|t| t.as_secs_f64() * 1e6 / f64::from(BATCH))
                .collect();
            let (sd, sb, ud, ub) = (us[0], us[1], us[2], us[3]);
            println!(
                "{:<16} {:>3} | {:>9.2} {:>9.2} {:>5.2} | {:>9.2} {:>9.2} {:>5.2} | {:>7.2} {:>7.2}",
                w.name,
                depth,
                sd,
                sb,
                sb / sd,
                ud,
                ub,
                ub / ud,
                sd / ud,
                sb / ub
            );
        }
    }
}

criterion_group!(benches, blk, table);
criterion_main!(benches);
