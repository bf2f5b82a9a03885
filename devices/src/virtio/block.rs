//! virtio-blk (virtio 1.2 §5.2) on a raw image file.
//!
//! Data moves between the image and the driver's buffers without a host copy: each data
//! descriptor is mapped with `bounce::DmaQueue::map` and `pread`/`pwrite` go straight to
//! `DmaBuffer::slice()` (the guest pages, or the bounce slot in bounced mode). A request's data
//! buffers are all mapped before its I/O and unmapped after it, as a driver's `dma_map_sg`.
//!
//! Every request is validated before any I/O: a 16-byte driver-readable header first, a
//! device-writable status descriptor (≥ 1 byte) last, data descriptors in the direction the
//! request type needs, at most `seg_max` of them and each at most `size_max` bytes, and a sector
//! range inside the disk computed with checked arithmetic. Failures get `VIRTIO_BLK_S_IOERR`
//! (or `S_UNSUPP` for unknown requests and flags); a chain without a usable status byte is
//! returned with used length 0. Discard and write zeroes fail beyond their advertised maximum
//! sectors; a discard deallocates only the whole `discard_sector_alignment` granules it covers,
//! write zeroes zeroes exactly the range asked for.
//!
//! Once a write or an `fdatasync` of the image has failed, every FLUSH fails until the driver
//! resets the device: after a writeback error Linux may drop the dirty pages and report the
//! error once, so a later `fdatasync` can succeed although data the driver was told is written
//! never reached the disk ("fsyncgate").
//!
//! Two engines do the reads, writes and flushes ([`Engine`]): `sync` (`pread`/`pwrite`/
//! `fdatasync` on the event loop, one request at a time) and `uring` (io_uring, many requests in
//! flight per queue, at most the queue's size; see `block/uring.rs`; `UringOptions`: SQPOLL,
//! `IOSQE_ASYNC`, a registered file). With `uring`, DISCARD and WRITE_ZEROES are `FALLOCATE`s on
//! the ring too (asynchronous, ordered before a later FLUSH like writes); GET_ID runs inline.
//! A request's mappings are held until it completes.
//!
//! A mapping that must wait for bounce pool space (`exhaustion=wait|throttle`: `WouldBlock`)
//! defers its request: the chain is kept, in order, and the queue takes no new request until the
//! deferred ones have started; the pools' waker (an eventfd, the same one io_uring signals)
//! brings the event loop back to retry them. `block/request.rs` has one request's life.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bounce::{Chain, DmaQueue, DmaWaker, EventNotifier, QueueError};
use event_manager::EventSet;
use image::Image;
use request::{Disk, IoKind, Prepared, Start};
use thiserror::Error;
use virtio_queue::QueueT;

use crate::rate_limiter::{self, LimiterConfig, RateLimiter, RateLimiterError};

use super::{
    feature, read_config_bytes, ActivateError, DeviceError, Interrupt, QueueState, VirtioDevice,
    QUEUE_BUDGET, TYPE_BLOCK,
};

pub use uring::probe as probe_uring;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

// Feature bits (§5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_RO: u32 = 5;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
pub const VIRTIO_BLK_F_MQ: u32 = 12;
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

// Request types and status values (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Length of the device ID returned by GET_ID.
pub const ID_LEN: usize = 20;
const HEADER_LEN: u32 = 16;
const DISCARD_SEG_LEN: usize = 16;

/// Largest single data segment (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Discard and write-zeroes limits advertised in config space.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) >> SECTOR_SHIFT;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = (128 << 20) >> SECTOR_SHIFT;
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 4096 >> SECTOR_SHIFT;

/// Config space length (up to `write_zeroes_may_unmap` and padding, §5.2.4).
const CONFIG_LEN: usize = 60;

/// Device options chosen by the VMM.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Offer `VIRTIO_BLK_F_RO` and fail writes.
    pub readonly: bool,
    /// GET_ID answer (truncated / zero-padded to 20 bytes).
    pub serial: String,
    /// Number of request queues (> 1 offers `VIRTIO_BLK_F_MQ`).
    pub num_queues: u16,
    /// Maximum size of each queue (power of two, ≤ 32768).
    pub queue_size: u16,
    /// Largest data segment offered to the driver (config `size_max`), clamped to 4 KiB..=
    /// [`SIZE_MAX`]. With restricted DMA the VMM passes the pools' longest mapping: the device's
    /// DMA limit, which Linux applies to virtio-blk segments too (`dma_max_mapping_size`).
    pub size_max: u32,
    /// Bytes and operations per second (none: unlimited); see [`crate::rate_limiter`].
    pub rate_limit: LimiterConfig,
    /// What does the reads, writes and flushes.
    pub engine: Engine,
    /// How the io_uring engine uses its ring (ignored by `sync`).
    pub uring: UringOptions,
}

/// How the io_uring engine uses its ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// `IORING_SETUP_SQPOLL` with this idle time (ms): a kernel thread polls the submission
    /// ring and issues the requests (a page-cache read's copy runs on it, beside the device
    /// thread's bounce copies), so submitting needs no system call while it is awake. It spins
    /// on a host core while the disk is busy and for the idle time after. `None`: the device
    /// thread submits with `io_uring_enter`.
    pub sqpoll_idle_ms: Option<u32>,
    /// `IOSQE_ASYNC` on reads and writes: the kernel punts every one to an io-wq worker
    /// instead of trying it inline first.
    pub force_async: bool,
    /// The image registered with the ring (`IORING_REGISTER_FILES`): SQEs name it by index, so
    /// the kernel takes no reference on the file per request.
    pub fixed_file: bool,
    /// Writes done on the device thread (`pwritev`, as the sync engine does them) instead of
    /// through the ring; reads, flushes, discards and write-zeroes still go through it. A
    /// buffered write to a file system without asynchronous buffered writes (ext4) is punted
    /// to an io-wq worker, a hand-off that costs more than the write (docs/results). A FLUSH
    /// still covers every write answered before it: those are done before it is submitted.
    pub inline_writes: bool,
}

/// The I/O engine of a block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// `pread`/`pwrite`/`fdatasync` on the event-loop thread, one request at a time.
    #[default]
    Sync,
    /// io_uring: many requests in flight per queue, completions through an eventfd. Check
    /// [`probe_uring`] first (at start-up, before seccomp filters).
    Uring,
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Engine::Sync),
            "uring" | "io_uring" => Ok(Engine::Uring),
            _ => Err(format!(
                "unknown block engine {s:?} (expected uring or sync)"
            )),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Sync => "sync",
            Engine::Uring => "uring",
        })
    }
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            readonly: false,
            serial: String::new(),
            num_queues: 1,
            queue_size: 256,
            size_max: SIZE_MAX,
            engine: Engine::Sync,
            uring: UringOptions::default(),
            rate_limit: LimiterConfig::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("disk image metadata: {0}")]
    Metadata(io::Error),
    #[error("invalid queue configuration: {num_queues} queues of size {queue_size}")]
    QueueConfig { num_queues: u16, queue_size: u16 },
    /// Another open of the image holds a conflicting lock: another VMM uses it.
    #[error("the disk image is in use by another process (locked)")]
    Locked,
    #[error("cannot lock the disk image: {0}")]
    Lock(io::Error),
    #[error("cannot set up the wake-up eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot set up io_uring: {0}")]
    Uring(io::Error),
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// Per-queue state beside the `DmaQueue`.
#[derive(Default)]
struct QueueCtx {
    /// Chains whose mappings must wait for pool space, oldest first: retried before any new
    /// chain of the queue. At most one: the queue takes no new chain while it is not empty.
    deferred: VecDeque<Chain>,
    /// Requests submitted to io_uring and not yet answered (at most the queue's size).
    in_flight: usize,
}

/// virtio-blk device.
pub struct Block {
    // `uring` before `disk`: the ring is dropped (waiting for its requests) before the image fd
    // its requests use is closed.
    uring: Option<uring::Uring>,
    disk: Disk,
    /// Wakes the event loop: io_uring completions and bounce pool space for deferred maps.
    notifier: Arc<EventNotifier>,
    max_sizes: Vec<u16>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queues: Vec<DmaQueue>,
    ctx: Vec<QueueCtx>,
    interrupt: Option<Arc<Interrupt>>,
    /// Shared by all queues; kept across resets (a reset must not refill the buckets).
    limiter: Option<RateLimiter>,
    /// Scratch space reused by every pass (no allocation per pass): completions reaped, and
    /// chains answered per queue.
    done: Vec<uring::Completion>,
    used: Vec<usize>,
}

impl Block {
    /// A block device on `file` (opened by the VMM, read-write unless `cfg.readonly`), which it
    /// locks: exclusively if read-write, shared if read-only ([`BlockError::Locked`] if another
    /// open of the image holds a conflicting lock). The capacity is the file size rounded down
    /// to whole sectors.
    pub fn new(file: File, cfg: BlockConfig) -> Result<Self, BlockError> {
        let qs = cfg.queue_size;
        if cfg.num_queues == 0 || qs < 2 || !qs.is_power_of_two() || qs > 32768 {
            return Err(BlockError::QueueConfig {
                num_queues: cfg.num_queues,
                queue_size: qs,
            });
        }
        let limiter = rate_limiter::optional(cfg.rate_limit)?;
        let image = Image::new(file);
        image.lock(cfg.readonly)?;
        let notifier = Arc::new(EventNotifier::new().map_err(BlockError::EventFd)?);
        let uring = match cfg.engine {
            Engine::Sync => None,
            Engine::Uring => {
                let capacity = usize::from(qs) * usize::from(cfg.num_queues);
                Some(
                    uring::Uring::new(image.as_raw_fd(), capacity, notifier.as_raw_fd(), cfg.uring)
                        .map_err(BlockError::Uring)?,
                )
            }
        };
        let len = image.len().map_err(BlockError::Metadata)?;
        let size = len & !(SECTOR_SIZE - 1);
        let mut id = [0u8; ID_LEN];
        let serial = cfg.serial.as_bytes();
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial[..n]);
        let seg_max = u32::from(qs) - 2;
        let size_max = cfg.size_max.clamp(4096, SIZE_MAX);

        let mut features = feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_FLUSH);
        if cfg.readonly {
            features |= feature(VIRTIO_BLK_F_RO);
        } else {
            features |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if cfg.num_queues > 1 {
            features |= feature(VIRTIO_BLK_F_MQ);
        }

        let mut config = [0u8; CONFIG_LEN];
        let mut put =
            |off: usize, bytes: &[u8]| config[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &(size >> SECTOR_SHIFT).to_le_bytes()); // capacity
        put(8, &size_max.to_le_bytes());
        put(12, &seg_max.to_le_bytes()); // seg_max
        put(20, &512u32.to_le_bytes()); // blk_size (informational, BLK_SIZE not offered)
        put(34, &cfg.num_queues.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap

        Ok(Block {
            uring,
            notifier,
            ctx: Vec::new(),
            disk: Disk {
                image,
                size,
                readonly: cfg.readonly,
                id,
                seg_max,
                size_max,
                discard: !cfg.readonly,
                write_failed: false,
                late_writes: 0,
            },
            max_sizes: vec![qs; usize::from(cfg.num_queues)],
            features,
            config,
            queues: Vec::new(),
            interrupt: None,
            limiter,
            done: Vec::new(),
            used: Vec::new(),
        })
    }

    /// Replaces the rate limiter made from `BlockConfig::rate_limit` (e.g. one on a
    /// [`crate::rate_limiter::ManualClock`]); before the device joins an event loop.
    pub fn set_rate_limiter(&mut self, limiter: Option<RateLimiter>) {
        self.limiter = limiter;
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size >> SECTOR_SHIFT
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        if self.uring.is_some() {
            Engine::Uring
        } else {
            Engine::Sync
        }
    }

    /// Requests submitted to the engine and not answered yet (always 0 with `sync`).
    pub fn in_flight(&self) -> usize {
        self.ctx.iter().map(|c| c.in_flight).sum()
    }

    /// Requests waiting for bounce pool space.
    pub fn deferred(&self) -> usize {
        self.ctx.iter().map(|c| c.deferred.len()).sum()
    }

    /// Serves queue `index`: deferred chains first, then the ring, for at most
    /// [`QUEUE_BUDGET`] chains, with at most the queue's size in flight. Returns what is left
    /// and how many chains were returned to the driver.
    fn run_queue(&mut self, index: usize) -> Result<(QueueState, usize), DeviceError> {
        let Block {
            disk,
            uring,
            queues,
            ctx,
            limiter,
            ..
        } = self;
        let (Some(q), Some(cx)) = (queues.get_mut(index), ctx.get_mut(index)) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        let limit = usize::from(q.queue().size()).max(1);
        let mut served = 0usize;
        let mut used = 0usize;
        // Starts a prepared request's I/O; returns how many chains it answered (1 if done now).
        let mut dispatch = |q: &mut DmaQueue,
                            cx: &mut QueueCtx,
                            disk: &mut Disk,
                            p: Prepared|
         -> Result<usize, QueueError> {
            // Tests inject the image's failures before the kernel is asked, as if it had
            // answered with them.
            #[cfg(test)]
            let p = match (uring.is_some(), p.kind) {
                (true, IoKind::Read) | (false, _) => p,
                (true, kind) => match disk.image.faults.injected(kind != IoKind::Flush) {
                    Ok(()) => p,
                    Err(e) => {
                        let r = disk.finish_async(&p, Err(e));
                        let head = p.head;
                        let len = disk.complete(q, p, r);
                        q.add_used(head, len)?;
                        return Ok(1);
                    }
                },
            };
            let mut p = p;
            if p.kind == IoKind::Flush {
                p.late_writes = disk.late_writes;
            }
            let p = match uring.as_mut() {
                Some(u) => match u.push(index, p) {
                    Ok(()) => {
                        cx.in_flight += 1;
                        return Ok(0);
                    }
                    Err(p) => p,
                },
                None => p,
            };
            let r = disk.run_sync(&p);
            let head = p.head;
            let len = disk.complete(q, p, r);
            q.add_used(head, len)?;
            Ok(1)
        };

        // Deferred chains first, in order: none may be overtaken by a newer one.
        let mut state = None;
        while let Some(chain) = cx.deferred.front() {
            if served >= QUEUE_BUDGET {
                state = Some(QueueState::MoreWork);
                break;
            }
            if cx.in_flight >= limit {
                break;
            }
            match disk.start(q, chain) {
                Start::Deferred => break,
                Start::Done(len) => {
                    let head = chain.head;
                    cx.deferred.pop_front();
                    q.add_used(head, len)?;
                    used += 1;
                }
                Start::Io(p) => {
                    cx.deferred.pop_front();
                    used += dispatch(q, cx, disk, p)?;
                }
            }
            served += 1;
        }
        if state.is_none() && (!cx.deferred.is_empty() || cx.in_flight >= limit) {
            // The waker or a completion brings the event loop back.
            state = Some(QueueState::Drained);
        }

        let state = match state {
            Some(s) => s,
            None => 'drain: loop {
                q.disable_notification()?;
                loop {
                    if served >= QUEUE_BUDGET {
                        break 'drain QueueState::MoreWork;
                    }
                    if cx.in_flight >= limit {
                        // Completions bring the event loop back (driver notifications stay off).
                        break 'drain QueueState::Drained;
                    }
                    if limiter.as_ref().is_some_and(|l| l.is_blocked()) {
                        // The limiter's timer brings the event loop back.
                        break 'drain QueueState::Throttled;
                    }
                    match q.pop() {
                        // Charged once, when first taken: a chain deferred for pool space
                        // below is not charged again when it is retried.
                        Ok(Some(chain))
                            if limiter
                                .as_mut()
                                .is_some_and(|l| !l.consume(limit::request_bytes(&chain))) =>
                        {
                            q.undo_pop();
                            break 'drain QueueState::Throttled;
                        }
                        Ok(Some(chain)) => match disk.start(q, &chain) {
                            Start::Deferred => {
                                cx.deferred.push_back(chain);
                                break 'drain QueueState::Drained;
                            }
                            Start::Done(len) => {
                                q.add_used(chain.head, len)?;
                                used += 1;
                            }
                            Start::Io(p) => used += dispatch(q, cx, disk, p)?,
                        },
                        Ok(None) => break,
                        Err(QueueError::MalformedChain { head }) => {
                            crate::warn_limited!(
                                "malformed descriptor chain at head {head}: returned unused"
                            );
                            q.add_used(head, 0)?;
                            used += 1;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    served += 1;
                }
                if !q.enable_notification()? {
                    break QueueState::Drained;
                }
            },
        };
        if let Some(u) = uring.as_mut() {
            if let Err(e) = u.submit() {
                // The SQEs stay queued; the next pass submits them again.
                crate::error_limited!("virtio-blk: io_uring submit: {e}");
            }
        }
        Ok((state, used))
    }

    /// Answers every request io_uring has completed; counts them per queue in `used`.
    fn reap(&mut self, used: &mut [usize]) -> Result<(), DeviceError> {
        let Some(u) = self.uring.as_mut() else {
            return Ok(());
        };
        let mut done = std::mem::take(&mut self.done);
        u.reap(&mut done);
        for c in done.drain(..) {
            let (Some(q), Some(cx)) = (self.queues.get_mut(c.queue), self.ctx.get_mut(c.queue))
            else {
                continue; // cannot happen: completions from before a reset are dropped
            };
            cx.in_flight = cx.in_flight.saturating_sub(1);
            let p = c.req;
            let r = self.disk.finish_async(&p, c.result);
            let head = p.head;
            let len = self.disk.complete(q, p, r);
            if let Some(slot) = used.get_mut(c.queue) {
                *slot += 1;
            }
            q.add_used(head, len)?;
        }
        self.done = done;
        Ok(())
    }

    /// The per-queue count of chains answered, zeroed (the scratch vector, taken: give it back).
    fn take_used(&mut self) -> Vec<usize> {
        let mut used = std::mem::take(&mut self.used);
        used.clear();
        used.resize(self.queues.len(), 0);
        used
    }

    /// Raises the used-ring interrupt for queue `index` if the driver wants one.
    fn notify(&mut self, index: usize, used: usize) -> Result<(), DeviceError> {
        if used == 0 {
            return Ok(());
        }
        let (Some(q), Some(irq)) = (self.queues.get_mut(index), self.interrupt.as_ref()) else {
            return Ok(());
        };
        if q.needs_notification()? {
            irq.signal_used_queue().map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }

    /// Waits for every io_uring request to complete and answers them (tests: no event loop).
    #[cfg(test)]
    fn complete_all(&mut self) {
        while self.in_flight() > 0 {
            self.uring.as_mut().unwrap().wait_one().unwrap();
            self.process_backend(EventSet::IN).unwrap();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        queues: Vec<DmaQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if !self.queues.is_empty() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != self.max_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.max_sizes.len(),
                got: queues.len(),
            });
        }
        if !queues
            .first()
            .is_some_and(|q| virtio_queue::QueueT::ready(q.queue()))
        {
            return Err(ActivateError::QueueNotReady(0));
        }
        // One waker per (device, queue) source, all on the device's eventfd.
        for q in &queues {
            let waker: Arc<dyn DmaWaker> = self.notifier.clone();
            q.dma().set_waker(q.source(), Some(waker));
        }
        self.ctx = queues.iter().map(|_| QueueCtx::default()).collect();
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        let Some(q) = self.queues.get(index) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        if !q.queue().ready() {
            crate::warn_limited!(
                "virtio-blk: notification for queue {index}, which is not enabled"
            );
            return Ok(QueueState::Drained);
        }
        let (state, used) = self.run_queue(index)?;
        // What io_uring completed during the submission (reads from the page cache complete
        // inline) is answered now rather than one event-loop pass later.
        let mut done = self.take_used();
        if let Some(u) = done.get_mut(index) {
            *u = used;
        }
        self.reap(&mut done)?;
        for (i, &u) in done.iter().enumerate() {
            self.notify(i, u)?;
        }
        self.used = done;
        Ok(state)
    }

    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        (!self.queues.is_empty()).then(|| (self.notifier.as_raw_fd(), EventSet::IN))
    }

    /// io_uring completions or bounce pool space: answers what completed, then serves every
    /// queue again (deferred chains first; queues that had reached their in-flight limit).
    fn process_backend(&mut self, _events: EventSet) -> Result<(), DeviceError> {
        self.notifier.drain();
        let mut used = self.take_used();
        self.reap(&mut used)?;
        let mut more = false;
        for (i, u) in used.iter_mut().enumerate() {
            if !self.queues[i].queue().ready() {
                continue;
            }
            let (state, n) = self.run_queue(i)?;
            more |= state == QueueState::MoreWork;
            *u += n;
        }
        // What completed inside those submissions: now, not one event-loop pass later.
        self.reap(&mut used)?;
        for (i, &u) in used.iter().enumerate() {
            self.notify(i, u)?;
        }
        self.used = used;
        if more {
            // Out of budget: come back after the other ready fds.
            self.notifier.wake();
        }
        Ok(())
    }

    fn rate_limiter_fds(&self) -> Vec<(usize, std::os::unix::io::RawFd)> {
        self.limiter.iter().map(|l| (0, l.timer_fd())).collect()
    }

    fn rate_limiter_event(&mut self, _index: usize) {
        if let Some(l) = &mut self.limiter {
            l.on_timer();
        }
    }

    fn reset(&mut self) {
        // Runs on a vCPU thread: waits (sleeping, no io_uring call) for the requests in flight,
        // whose buffers the driver may reuse once the reset is seen; they are not answered.
        if let Some(u) = self.uring.as_mut() {
            let left = u.wait_idle(RESET_TIMEOUT);
            if left > 0 {
                crate::error_limited!(
                    "virtio-blk: {left} io_uring requests still in flight {RESET_TIMEOUT:?} after \
                     a reset; they will not be answered"
                );
            }
        }
        for q in &self.queues {
            q.dma().set_waker(q.source(), None);
        }
        self.ctx.clear();
        self.queues.clear();
        self.interrupt = None;
        self.disk.write_failed = false;
    }
}

/// How long a reset waits for io_uring requests in flight.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

mod image;
mod limit;
mod request;
mod uring;

#[cfg(test)]
mod tests;
