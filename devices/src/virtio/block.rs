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

use std::fs::File;
use std::io;
use std::sync::Arc;

use bounce::{Chain, Desc, DmaBuffer, DmaError, DmaQueue};
use image::Image;
use thiserror::Error;

use crate::rate_limiter::{self, LimiterConfig, RateLimiter, RateLimiterError};

use super::{
    drain_queue_limited, feature, read_config_bytes, ActivateError, DeviceError, Interrupt,
    QueueState, VirtioDevice, QUEUE_BUDGET, TYPE_BLOCK,
};

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
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            readonly: false,
            serial: String::new(),
            num_queues: 1,
            queue_size: 256,
            size_max: SIZE_MAX,
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
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// Why a request failed; each maps to the status the spec asks for.
#[derive(Debug, Error)]
enum RequestError {
    #[error("chain has no header descriptor")]
    NoHeader,
    #[error("header descriptor is device-writable or not 16 bytes ({0})")]
    BadHeader(u32),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("descriptor has the wrong direction for the request")]
    WrongDirection,
    #[error("{0} data segments exceed seg_max")]
    TooManySegments(usize),
    #[error("data segment of {0} bytes exceeds size_max")]
    SegmentTooLarge(u32),
    #[error("request of {0} bytes is not a whole number of sectors")]
    NotSectorMultiple(u64),
    #[error("sectors {sector}+{bytes}B are outside the disk")]
    OutOfRange { sector: u64, bytes: u64 },
    #[error("{num_sectors} sectors exceed the advertised maximum of {max}")]
    TooManySectors { num_sectors: u32, max: u32 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request has a data segment it must not have")]
    UnexpectedData,
    #[error("malformed discard/write-zeroes segment")]
    BadSegment,
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    UnsupportedFlags(u32),
    #[error("an earlier write or fdatasync failed: the disk may lack data reported written")]
    EarlierWriteFailed,
    #[error("DMA: {0}")]
    Dma(#[from] DmaError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// The backend: the image and the request limits.
struct Disk {
    image: Image,
    /// Disk size in bytes (a whole number of sectors).
    size: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    seg_max: u32,
    size_max: u32,
    discard: bool,
    /// A write or fdatasync failed since the last reset: every FLUSH fails.
    write_failed: bool,
}

/// virtio-blk device.
pub struct Block {
    disk: Disk,
    max_sizes: Vec<u16>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queues: Vec<DmaQueue>,
    interrupt: Option<Arc<Interrupt>>,
    /// Shared by all queues; kept across resets (a reset must not refill the buckets).
    limiter: Option<RateLimiter>,
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
            disk: Disk {
                image,
                size,
                readonly: cfg.readonly,
                id,
                seg_max,
                size_max,
                discard: !cfg.readonly,
                write_failed: false,
            },
            max_sizes: vec![qs; usize::from(cfg.num_queues)],
            features,
            config,
            queues: Vec::new(),
            interrupt: None,
            limiter,
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
        self.queues = queues;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        let Block {
            disk,
            queues,
            interrupt,
            limiter,
            ..
        } = self;
        let (Some(queue), Some(interrupt)) = (queues.get_mut(index), interrupt.as_ref()) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        if !virtio_queue::QueueT::ready(queue.queue()) {
            crate::warn_limited!(
                "virtio-blk: notification for queue {index}, which is not enabled"
            );
            return Ok(QueueState::Drained);
        }
        let limiter = limiter
            .as_mut()
            .map(|l| (l, limit::request_bytes as fn(&Chain) -> u64));
        drain_queue_limited(queue, interrupt, QUEUE_BUDGET, limiter, |q, chain| {
            disk.process_chain(q, chain)
        })
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
        self.queues.clear();
        self.interrupt = None;
        self.disk.write_failed = false;
    }
}

impl Disk {
    /// Passes on the result of a write or fdatasync of the image, remembering a failure.
    fn durability(&mut self, what: &str, r: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &r {
            if !self.write_failed {
                crate::error_limited!(
                    "virtio-blk: {what} of the image failed ({e}): every FLUSH fails until the \
                     driver resets the device"
                );
            }
            self.write_failed = true;
        }
        r
    }

    /// Executes one request; returns the used length (bytes written to the driver's buffers).
    fn process_chain(&mut self, q: &DmaQueue, chain: &Chain) -> u32 {
        let Some((status_desc, rest)) = chain.descs.split_last() else {
            crate::warn_limited!("virtio-blk: empty chain {}", chain.head);
            return 0;
        };
        if !status_desc.writable || status_desc.len == 0 {
            crate::warn_limited!(
                "virtio-blk: chain {} has no writable status byte; returned unused",
                chain.head
            );
            return 0;
        }
        let mut written = 0u32;
        let status = match self.execute(q, rest, &mut written) {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e) => {
                log::debug!("virtio-blk: request at head {} failed: {e}", chain.head);
                e.status()
            }
        };
        let wrote_status = q.map(status_desc).and_then(|mut b| {
            b.write_at(0, &[status])?;
            b.unmap()
        });
        match wrote_status {
            Ok(()) => written.saturating_add(1),
            Err(e) => {
                crate::warn_limited!("virtio-blk: chain {}: status byte: {e}", chain.head);
                written
            }
        }
    }

    fn execute(
        &mut self,
        q: &DmaQueue,
        descs: &[Desc],
        written: &mut u32,
    ) -> Result<(), RequestError> {
        let (hdr_desc, data) = descs.split_first().ok_or(RequestError::NoHeader)?;
        if hdr_desc.writable || hdr_desc.len != HEADER_LEN {
            return Err(RequestError::BadHeader(hdr_desc.len));
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        let b = q.map(hdr_desc)?;
        b.read_at(0, &mut hdr)?;
        b.unmap()?;
        let (t, s) = hdr.split_at(8);
        let req_type = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let sector = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);

        if data.len() > self.seg_max as usize {
            return Err(RequestError::TooManySegments(data.len()));
        }
        match req_type {
            VIRTIO_BLK_T_IN => self.read(q, sector, data, written),
            VIRTIO_BLK_T_OUT => {
                if self.readonly {
                    return Err(RequestError::ReadOnly);
                }
                self.write(q, sector, data)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !data.is_empty() {
                    return Err(RequestError::UnexpectedData);
                }
                // The status byte says OK only once the data is on stable storage, and never
                // again after a write or fdatasync failed (see the module's documentation).
                if self.write_failed {
                    return Err(RequestError::EarlierWriteFailed);
                }
                let r = self.image.sync_data();
                Ok(self.durability("fdatasync", r)?)
            }
            VIRTIO_BLK_T_GET_ID => {
                let [d] = data else {
                    return Err(RequestError::UnexpectedData);
                };
                if !d.writable {
                    return Err(RequestError::WrongDirection);
                }
                let n = (d.len as usize).min(ID_LEN);
                let mut b = q.map(d)?;
                b.write_at(0, &self.id[..n])?;
                b.unmap()?;
                *written = n as u32;
                Ok(())
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if self.discard => {
                self.discard_or_zero(q, req_type, data)
            }
            t => Err(RequestError::Unsupported(t)),
        }
    }

    /// Checks directions and lengths of the data segments and the sector range; returns the
    /// byte offset in the image.
    fn check_data(&self, sector: u64, data: &[Desc], writable: bool) -> Result<u64, RequestError> {
        let mut total = 0u64;
        for d in data {
            if d.writable != writable {
                return Err(RequestError::WrongDirection);
            }
            if d.len > self.size_max {
                return Err(RequestError::SegmentTooLarge(d.len));
            }
            total += u64::from(d.len); // ≤ seg_max * SIZE_MAX: no overflow
        }
        if total & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::NotSectorMultiple(total));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(total).is_some_and(|end| end <= self.size))
            .ok_or(RequestError::OutOfRange {
                sector,
                bytes: total,
            })
    }

    fn read(
        &self,
        q: &DmaQueue,
        sector: u64,
        data: &[Desc],
        written: &mut u32,
    ) -> Result<(), RequestError> {
        let mut offset = self.check_data(sector, data, true)?;
        for b in map_all(q, data)? {
            self.image.read_at(&b.slice(), offset)?;
            offset += b.len() as u64;
            *written = written.saturating_add(b.len() as u32);
            b.unmap()?;
        }
        Ok(())
    }

    fn write(&mut self, q: &DmaQueue, sector: u64, data: &[Desc]) -> Result<(), RequestError> {
        let mut offset = self.check_data(sector, data, false)?;
        for b in map_all(q, data)? {
            let r = self.image.write_at(&b.slice(), offset);
            self.durability("write", r)?;
            offset += b.len() as u64;
            b.unmap()?;
        }
        Ok(())
    }

    fn discard_or_zero(&mut self, q: &DmaQueue, t: u32, data: &[Desc]) -> Result<(), RequestError> {
        // max_discard_seg = max_write_zeroes_seg = 1: exactly one 16-byte segment.
        let [d] = data else {
            return Err(RequestError::BadSegment);
        };
        if d.writable {
            return Err(RequestError::WrongDirection);
        }
        if d.len as usize != DISCARD_SEG_LEN {
            return Err(RequestError::BadSegment);
        }
        let mut seg = [0u8; DISCARD_SEG_LEN];
        let b = q.map(d)?;
        b.read_at(0, &mut seg)?;
        b.unmap()?;
        let (s, rest) = seg.split_at(8);
        let sector = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let num_sectors = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let flags = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);

        let (max, allowed_flags) = if t == VIRTIO_BLK_T_DISCARD {
            (MAX_DISCARD_SECTORS, 0)
        } else {
            (MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
        };
        if flags & !allowed_flags != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        let bytes = u64::from(num_sectors) << SECTOR_SHIFT;
        if num_sectors > max {
            return Err(RequestError::TooManySectors { num_sectors, max });
        }
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(bytes).is_some_and(|end| end <= self.size))
            .ok_or(RequestError::OutOfRange { sector, bytes })?;
        if bytes == 0 {
            return Ok(());
        }
        if t == VIRTIO_BLK_T_DISCARD {
            // Only whole DISCARD_SECTOR_ALIGNMENT granules are deallocated. Linux splits its
            // discards at that granularity but sends the unaligned head and tail of a range
            // too (`blkdiscard -o 512`, ext4 with 1 KiB blocks): they are left as they are, as
            // a discard is a hint the device MAY honour (§5.2.6.2), rather than failed (the
            // guest would see I/O errors) or punched (the host filesystem zeroes partial
            // blocks by writing them).
            let align = u64::from(DISCARD_SECTOR_ALIGNMENT);
            // Cannot overflow: both ends are sectors inside the disk.
            let start = sector.next_multiple_of(align);
            let end = (sector + u64::from(num_sectors)) / align * align;
            if end <= start {
                return Ok(());
            }
            // A hint: a failure loses nothing the driver wrote.
            let r = self
                .image
                .punch_hole(start << SECTOR_SHIFT, (end - start) << SECTOR_SHIFT);
            return Ok(r?);
        }
        let mut r = Err(io::Error::from(io::ErrorKind::Unsupported));
        if flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            r = self.image.punch_hole(offset, bytes);
        }
        if let Err(e) = r {
            log::debug!("virtio-blk: punch hole: {e}; writing zeroes");
            r = self.image.write_zeroes(offset, bytes);
        }
        Ok(self.durability("write zeroes", r)?)
    }
}

/// Maps every data buffer of a request before any I/O, as a driver's `dma_map_sg` does: the
/// whole request holds pool space at once, so the pool pressure the model sees is the guest's.
/// Buffers longer than a bounce segment are mapped in pieces. On failure the buffers mapped so
/// far are unmapped (dropped) and the request fails.
fn map_all<'q>(q: &'q DmaQueue, data: &[Desc]) -> Result<Vec<DmaBuffer<'q>>, RequestError> {
    let max = q.max_mapping_len();
    data.iter()
        .flat_map(|d| d.pieces(max))
        .map(|piece| q.map(&piece).map_err(RequestError::from))
        .collect()
}

mod image;
mod limit;

#[cfg(test)]
mod tests;
