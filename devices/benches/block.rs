//! virtio-blk driven by a minimal in-process driver (no guest): batches of 32 requests per
//! queue notification against a 64 MiB temp file (page cache), direct vs bounced DMA side by
//! side, and bounced with a `--metrics` line every 100 ms taken on the same thread (as microvm's
//! event loop does: the pool statistics as JSON, the queue's counters, one append to a file).
//! `CARGO_TARGET_DIR=... cargo bench -p devices --bench block`

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce::{Dma, DmaQueue, DmaSource, QueueCounters};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::virtio::block::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use devices::virtio::{Block, BlockConfig, Interrupt, VirtioDevice};
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

/// A metrics line every 100 ms, as `microvm --metrics PATH,interval=100ms` writes it.
struct Metrics {
    file: TempFile,
    last: Instant,
    counters: Arc<QueueCounters>,
}

struct Driver {
    mem: GuestMemoryMmap,
    dma: Dma,
    metrics: Option<Metrics>,
    blk: Block,
    avail_idx: u16,
    _irq: EventFd,
    _disk: TempFile,
    seed: u64,
}

impl Driver {
    fn new(bounced: bool, metrics: bool) -> Driver {
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
        let mut blk = Block::new(f, BlockConfig::default()).unwrap();
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
        let metrics = metrics.then(|| Metrics {
            file: TempFile::new().unwrap(),
            last: Instant::now(),
            counters,
        });
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        blk.activate(vec![dq], Interrupt::new(irq.try_clone().unwrap()))
            .unwrap();
        Driver {
            mem,
            dma,
            metrics,
            blk,
            avail_idx: 0,
            _irq: irq,
            _disk: disk,
            seed: 1,
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

    /// Posts BATCH requests of `len` bytes (sequential or random) and notifies once.
    fn batch(&mut self, write: bool, len: u32, random: bool, pos: &mut u64) {
        let dflags = if write { NEXT } else { NEXT | WRITE };
        for i in 0..BATCH {
            let sector = if random {
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((self.seed >> 33) % (DISK / u64::from(len))) * u64::from(len) / 512
            } else {
                let s = *pos / 512;
                *pos = (*pos + u64::from(len)) % DISK;
                s
            };
            let t = if write {
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
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.blk.process_queue(0).unwrap();
        if let Some(m) = &mut self.metrics {
            if m.last.elapsed() >= Duration::from_millis(100) {
                m.last = Instant::now();
                let stats = self.dma.stats().map(|s| s.to_json()).unwrap_or_default();
                let line = format!(
                    "{{\"queue\":{:?},\"bounce\":{stats}}}\n",
                    m.counters.snapshot()
                );
                m.file.as_file().write_all(line.as_bytes()).unwrap();
            }
        }
    }
}

fn blk(c: &mut Criterion) {
    for (name, write, len, random) in [
        ("blk_seq_read_64k", false, 64 << 10, false),
        ("blk_seq_write_64k", true, 64 << 10, false),
        ("blk_rand_read_4k", false, 4 << 10, true),
        ("blk_rand_write_4k", true, 4 << 10, true),
    ] {
        let mut g = c.benchmark_group(name);
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(20)
            .throughput(Throughput::Bytes(u64::from(BATCH) * u64::from(len)));
        for (mode, bounced, metrics) in [
            ("direct", false, false),
            ("bounced", true, false),
            ("bounced+metrics100ms", true, true),
        ] {
            let mut d = Driver::new(bounced, metrics);
            let mut pos = 0;
            d.batch(write, len, random, &mut pos);
            let mut st = [0xffu8; BATCH as usize];
            d.mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
            assert!(st.iter().all(|&s| s == 0), "{name}/{mode}: requests failed");
            g.bench_function(mode, |b| b.iter(|| d.batch(write, len, random, &mut pos)));
        }
        g.finish();
    }
}

criterion_group!(benches, blk);
criterion_main!(benches);
