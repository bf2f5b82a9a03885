//! virtio-net driven by a minimal in-process driver (no guest) over a `SOCK_SEQPACKET`
//! socketpair standing for the tap (one frame per read/write, as a tap; the bench holds the
//! other end), direct vs bounced DMA:
//!
//! * TX: per iteration the driver posts 32 frames (a 12-byte header buffer and a payload
//!   buffer each, as Linux sends them), notifies once; the device writes them to the socket; the
//!   bench reads them back.
//! * RX: per iteration the bench writes 32 frames into the socket; the device moves them into
//!   the driver's buffers (`process_backend`, as when the tap is readable), the driver takes the
//!   used entries and posts the buffers again. Without MRG_RXBUF each frame takes one chain:
//!   1536 bytes for MTU frames, 17 x 4 KiB buffers for 64 KiB frames (Linux's "big packets");
//!   with it, buffers of 1536 bytes (MTU) or 4 KiB (64 KiB frames: 17 chains per frame).
//! * blk interference: TX of 64 KiB frames on this thread (net's event loop) alone, then while
//!   a virtio-blk device on its own thread (as `blkN` in microvm) serves 64 KiB sequential reads
//!   at iodepth 32 with io_uring, bounced, without pause.
//!
//! Each figure is the median of 15 interleaved samples (one sample of each configuration in
//! turn, ~20 ms each), so a machine whose load drifts skews the ratios less than the absolute
//! figures. `CARGO_TARGET_DIR=... cargo bench -p devices --bench net` prints the table.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bounce::{Dma, DmaQueue, DmaSource};
use devices::virtio::block::VIRTIO_BLK_T_IN;
use devices::virtio::net::{Net, NetConfig, Tap, VIRTIO_NET_F_MRG_RXBUF};
use devices::virtio::{Block, BlockConfig, Engine, Interrupt, VirtioDevice};
use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const QSIZE: u16 = 256;
const BATCH: usize = 32;
const HDR: usize = 12;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM: usize = 32 << 20;
const DATA: u64 = 0x10_0000;

/// A split ring laid out at `base` in guest memory, driven as a driver does.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    next_desc: u16,
}

impl Ring {
    fn new(base: u64) -> Ring {
        let n = u64::from(QSIZE);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        Ring {
            desc: base,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        }
    }

    fn queue(&self, dma: Dma) -> DmaQueue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        let mut dq = DmaQueue::new(QSIZE, dma, DmaSource::default()).unwrap();
        *dq.queue_mut() = q;
        dq
    }

    /// Posts a chain of `(addr, len, writable)` (not yet published: see [`Ring::publish`]).
    fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&((idx + 1) % QSIZE).to_le_bytes());
            mem.write_slice(&d, GuestAddress(self.desc + u64::from(idx) * 16))
                .unwrap();
        }
        let slot = self.avail + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
    }

    fn publish(&self, mem: &GuestMemoryMmap) {
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The used entries since the last call: `(head, len)`.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            out.push((
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

fn socketpair() -> (File, File) {
    let (a, b) = devices::virtio::seqpacket_pair().expect("socketpair");
    for f in [&a, &b] {
        // A whole batch of 64 KiB frames in flight (SO_SNDBUFFORCE: root; else the default).
        let v: libc::c_int = 8 << 20;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: setsockopt reads one int through the pointer, valid for the call.
            unsafe {
                libc::setsockopt(
                    f.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }
    (a, b)
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Clone, Copy)]
struct Cfg {
    dir: Dir,
    frame: usize,
    bounced: bool,
    mrg: bool,
}

impl Cfg {
    /// RX buffers per chain and their size.
    fn rx_chain(&self) -> (usize, u32) {
        match (self.mrg, self.frame > 2048) {
            (_, false) => (1, 1536),
            (false, true) => (17, 4096),
            (true, true) => (1, 4096),
        }
    }
}

struct NetDriver {
    mem: GuestMemoryMmap,
    net: Net,
    rx: Ring,
    tx: Ring,
    peer: File,
    cfg: Cfg,
    frame: Vec<u8>,
    buf: Vec<u8>,
    _irq: EventFd,
}

impl NetDriver {
    fn new(cfg: Cfg) -> NetDriver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let dma = if cfg.bounced {
            Dma::bounced_from_str(mem.clone(), "").unwrap()
        } else {
            Dma::direct(mem.clone())
        };
        let (a, peer) = socketpair();
        let mut net = Net::new(Tap::from_file(a), NetConfig::default()).unwrap();
        if cfg.mrg {
            net.ack_features(1 << VIRTIO_NET_F_MRG_RXBUF);
        }
        let (rx, tx) = (Ring::new(0), Ring::new(0x1_0000));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        net.activate(
            vec![rx.queue(dma.clone()), tx.queue(dma)],
            Interrupt::new(irq.try_clone().unwrap()),
        )
        .unwrap();
        let mut frame = vec![0u8; cfg.frame];
        for (i, b) in frame.iter_mut().enumerate().skip(HDR) {
            *b = i as u8;
        }
        let mut d = NetDriver {
            mem,
            net,
            rx,
            tx,
            peer,
            cfg,
            frame,
            buf: vec![0u8; 70_000],
            _irq: irq,
        };
        if cfg.dir == Dir::Rx {
            // Fill the RX ring once; `rx_iteration` reposts what it takes.
            let (n, size) = cfg.rx_chain();
            let chains = usize::from(QSIZE) / n;
            for _ in 0..chains {
                d.post_rx(n, size);
            }
            d.rx.publish(&d.mem);
        } else {
            // The TX frames: slot i's header and payload, written once.
            for i in 0..BATCH {
                let (h, p) = d.tx_slot(i);
                d.mem.write_slice(&d.frame[..HDR], GuestAddress(h)).unwrap();
                d.mem.write_slice(&d.frame[HDR..], GuestAddress(p)).unwrap();
            }
        }
        d
    }

    /// Addresses of TX slot `i`'s header and payload.
    fn tx_slot(&self, i: usize) -> (u64, u64) {
        // Above the RX buffers (256 x 4 KiB from DATA).
        let p = DATA + (1 << 20) + (i as u64) * 0x1_1000;
        (p + 0xf00, p + 0x1000)
    }

    /// Posts an RX chain of `n` buffers of `size` bytes; descriptor `i`'s buffer is always at
    /// `DATA + i * 4 KiB` (the ring hands descriptors out round-robin and the device returns
    /// chains in order, so a reposted chain reuses the descriptors, and buffers, just freed).
    fn post_rx(&mut self, n: usize, size: u32) {
        let first = u64::from(self.rx.next_desc);
        let bufs: Vec<(u64, u32, bool)> = (0..n as u64)
            .map(|k| (DATA + ((first + k) % u64::from(QSIZE)) * 0x1000, size, true))
            .collect();
        self.rx.add(&self.mem, &bufs);
    }

    fn tx_iteration(&mut self) {
        for i in 0..BATCH {
            let (h, p) = self.tx_slot(i);
            let len = (self.frame.len() - HDR) as u32;
            self.tx
                .add(&self.mem, &[(h, HDR as u32, false), (p, len, false)]);
        }
        self.tx.publish(&self.mem);
        self.net.process_queue(1).unwrap();
        assert_eq!(self.tx.take_used(&self.mem).len(), BATCH);
        for _ in 0..BATCH {
            let n = self.peer.read(&mut self.buf).expect("a frame per chain");
            assert_eq!(n, self.frame.len());
        }
    }

    fn rx_iteration(&mut self) {
        for _ in 0..BATCH {
            self.peer.write_all(&self.frame).unwrap();
        }
        let (n, size) = self.cfg.rx_chain();
        let mut frames = 0;
        while frames < BATCH {
            self.net.process_backend(EventSet::IN).unwrap();
            let used = self.rx.take_used(&self.mem);
            let mut bytes = 0usize;
            for &(_, len) in &used {
                bytes += len as usize;
                self.post_rx(n, size);
            }
            assert_eq!(bytes % self.frame.len(), 0, "whole frames");
            frames += bytes / self.frame.len();
            self.rx.publish(&self.mem);
            if used.is_empty() {
                // The ring ran dry: the device waits for a kick.
                self.net.process_queue(0).unwrap();
            }
        }
    }

    fn iteration(&mut self) {
        match self.cfg.dir {
            Dir::Tx => self.tx_iteration(),
            Dir::Rx => self.rx_iteration(),
        }
    }
}

/// A virtio-blk device on its own thread serving 64 KiB sequential reads at iodepth 32
/// (io_uring, bounced) while `busy` is set.
struct BlkLoad {
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl BlkLoad {
    fn start() -> BlkLoad {
        let busy = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (busy.clone(), stop.clone());
        let thread = std::thread::spawn(move || blk_thread(&b, &s));
        BlkLoad {
            busy,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BlkLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn blk_thread(busy: &AtomicBool, stop: &AtomicBool) -> u64 {
    const DISK: u64 = 64 << 20;
    const LEN: u32 = 64 << 10;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let dma = Dma::bounced_from_str(mem.clone(), "").unwrap();
    let disk = TempFile::new().unwrap();
    let f = disk.as_file().try_clone().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0xa5; DISK as usize], 0).unwrap();
    let cfg = BlockConfig {
        engine: Engine::Uring,
        ..Default::default()
    };
    let mut blk = Block::new(f, cfg).unwrap();
    let mut ring = Ring::new(0);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    blk.activate(
        vec![ring.queue(dma)],
        Interrupt::new(irq.try_clone().unwrap()),
    )
    .unwrap();
    let (mut pos, mut done) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        if !busy.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for i in 0..32u64 {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            h[8..].copy_from_slice(&(pos / 512).to_le_bytes());
            pos = (pos + u64::from(LEN)) % DISK;
            let hdr = 0x3_0000 + i * 16;
            mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            ring.add(
                &mem,
                &[
                    (hdr, 16, false),
                    (0x10_0000 + i * u64::from(LEN), LEN, true),
                    (0x4_0000 + i, 1, true),
                ],
            );
        }
        ring.publish(&mem);
        blk.process_queue(0).unwrap();
        let mut got = ring.take_used(&mem).len();
        while got < 32 {
            let (fd, _) = blk.backend_interest().expect("an eventfd");
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, valid across the call.
            unsafe { libc::poll(&mut p, 1, 1000) };
            blk.process_backend(EventSet::IN).unwrap();
            got += ring.take_used(&mem).len();
        }
        done += 32;
    }
    done
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, valid for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Median wall time and median CPU time of this thread for one iteration of each driver,
/// measured interleaved (15 rounds of ~20 ms samples after a warm-up); `between(k)` runs
/// before each sample of driver `k`.
fn measure(drivers: &mut [NetDriver], mut between: impl FnMut(usize)) -> Vec<(Duration, Duration)> {
    let per: Vec<u32> = drivers
        .iter_mut()
        .map(|d| {
            d.iteration();
            let t = Instant::now();
            let mut n = 0u32;
            while t.elapsed() < Duration::from_millis(20) {
                d.iteration();
                n += 1;
            }
            n.max(1)
        })
        .collect();
    let mut samples = vec![(Vec::new(), Vec::new()); drivers.len()];
    for _ in 0..15 {
        for (k, (d, &n)) in drivers.iter_mut().zip(&per).enumerate() {
            between(k);
            let (t, c) = (Instant::now(), thread_cpu());
            for _ in 0..n {
                d.iteration();
            }
            samples[k].0.push(t.elapsed() / n);
            samples[k].1.push((thread_cpu() - c) / n);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    samples
        .into_iter()
        .map(|(w, c)| (median(w), median(c)))
        .collect()
}

/// Gbit/s of frame bytes (header included) for one iteration taking `t`.
fn gbps(frame: usize, t: Duration) -> f64 {
    (BATCH * frame * 8) as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    println!(
        "virtio-net over a socketpair, {BATCH} frames per iteration, medians of 15 interleaved \
         samples (Gbit/s of frames, header included; b/d = bounced/direct throughput)"
    );
    println!(
        "{:<4} {:>6} {:<8} | {:>8} {:>8} {:>5}",
        "dir", "frame", "rx bufs", "direct", "bounced", "b/d"
    );
    for (dir, name) in [(Dir::Tx, "tx"), (Dir::Rx, "rx")] {
        for frame in [1514 + HDR, 65_536] {
            let mrgs: &[bool] = if dir == Dir::Tx {
                &[false]
            } else {
                &[false, true]
            };
            for &mrg in mrgs {
                let cfgs = [false, true].map(|bounced| Cfg {
                    dir,
                    frame,
                    bounced,
                    mrg,
                });
                let mut drivers: Vec<NetDriver> = cfgs.iter().map(|&c| NetDriver::new(c)).collect();
                let t = measure(&mut drivers, |_| {});
                let (d, b) = (gbps(frame, t[0].0), gbps(frame, t[1].0));
                let bufs = match (dir, mrg) {
                    (Dir::Tx, _) => "-",
                    (Dir::Rx, false) => "chain",
                    (Dir::Rx, true) => "mrg",
                };
                println!(
                    "{name:<4} {frame:>6} {bufs:<8} | {d:>8.2} {b:>8.2} {:>5.2}",
                    b / d
                );
            }
        }
    }
    println!();
    println!(
        "net TX of 64 KiB frames on this thread, alone vs while a virtio-blk thread serves 64 KiB \
         reads at iodepth 32 (io_uring, bounced); same interleaving. Gbit/s, and this thread's \
         CPU time per 32 frames (µs): if it does not grow, the blk thread costs net only the \
         CPU it takes from a machine without a core to spare"
    );
    println!(
        "{:<8} | {:>8} {:>8} {:>6} | {:>9} {:>9}",
        "net dma", "alone", "blk busy", "ratio", "cpu alone", "cpu busy"
    );
    let load = BlkLoad::start();
    for bounced in [false, true] {
        let cfg = Cfg {
            dir: Dir::Tx,
            frame: 65_536,
            bounced,
            mrg: false,
        };
        // The same configuration measured twice per round: without, then with the blk load.
        let mut drivers = vec![NetDriver::new(cfg), NetDriver::new(cfg)];
        let t = measure(&mut drivers, |k| load.busy.store(k == 1, Ordering::Relaxed));
        load.busy.store(false, Ordering::Relaxed);
        let (alone, busy) = (gbps(65_536, t[0].0), gbps(65_536, t[1].0));
        let mode = if bounced { "bounced" } else { "direct" };
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{mode:<8} | {alone:>8.2} {busy:>8.2} {:>6.2} | {:>9.1} {:>9.1}",
            busy / alone,
            us(t[0].1),
            us(t[1].1)
        );
    }
    drop(load);
    let _ = std::io::stdout().flush();
}
