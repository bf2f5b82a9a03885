//! One virtio-blk request: its validation, its mappings, its synchronous execution and its
//! answer.
//!
//! [`Disk::start`] checks a chain and maps what its I/O needs, as a driver's `dma_map_sg` maps the
//! whole request before handing it to the device: the status byte, then every data buffer. What
//! needs no I/O (GET_ID, a discard or write zeroes of nothing, and every failure) is answered at
//! once; a read, a write, a flush, a discard or a write zeroes comes back as a [`Prepared`]
//! request that holds its mappings until an engine has done its I/O ([`Disk::run_sync`] here, or
//! the io_uring engine in `uring.rs`, whose outcome [`Disk::finish_async`] turns into a result)
//! and [`Disk::complete`] writes the status and unmaps.
//!
//! The first data buffer of a request is mapped with `MapAttrs::may_block`: with
//! `exhaustion=wait|throttle` the pools may answer `DmaError::WouldBlock`, and the request is
//! then [`Start::Deferred`]: whatever it had mapped is released and the device keeps the chain
//! to retry when its waker fires. Only one mapping per request opts in, so that under `throttle`
//! (one semaphore for every throttled mapping) a request never waits for a semaphore it holds
//! itself; the header and status byte, a few bytes each, never wait.

use std::io;

use bounce::{Chain, Desc, DmaError, DmaQueue, MapAttrs, OwnedDmaBuffer};
use thiserror::Error;

use super::image::Image;
use super::*;

/// Why a request failed; each maps to the status the spec asks for.
#[derive(Debug, Error)]
pub(super) enum RequestError {
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

/// The I/O a [`Prepared`] request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IoKind {
    Read,
    Write,
    Flush,
    /// DISCARD of the whole granules in the range (`fallocate(PUNCH_HOLE)`); a hint: a failure
    /// is an IOERR, never a lost write.
    Discard,
    /// WRITE_ZEROES of the range: `fallocate(PUNCH_HOLE)` if the driver allows unmapping, else
    /// `fallocate(ZERO_RANGE)`; if that fails, zeroes written (a write: a failure is sticky).
    WriteZeroes {
        unmap: bool,
    },
}

/// A read, write or flush, checked and mapped, waiting for its I/O.
pub(super) struct Prepared {
    pub head: u16,
    pub kind: IoKind,
    /// Byte offset in the image (0 for a flush).
    pub offset: u64,
    /// Data bytes (the sum of `data`'s lengths); for a discard or write zeroes, the bytes of
    /// the range (no data buffers).
    pub len: u64,
    /// A flush: [`Disk::late_writes`] when it was submitted to io_uring (see
    /// [`Disk::finish_async`]).
    pub late_writes: u32,
    /// The data buffers, in order, each at most one bounce segment.
    pub data: Vec<OwnedDmaBuffer>,
    /// The status byte.
    pub status: OwnedDmaBuffer,
}

/// What [`Disk::start`] made of a chain.
pub(super) enum Start {
    /// Answered: return the chain with this used length.
    Done(u32),
    /// A mapping must wait for pool space: nothing is held; keep the chain and retry it when
    /// the source's waker fires.
    Deferred,
    /// Ready for its I/O.
    Io(Prepared),
}

/// What [`Disk::execute`] made of the part of a chain before its status byte.
enum Parsed {
    /// Done; this many bytes were written into the driver's buffers.
    Inline(u32),
    Io {
        kind: IoKind,
        offset: u64,
        len: u64,
        data: Vec<OwnedDmaBuffer>,
    },
}

/// The backend: the image and the request limits.
pub(super) struct Disk {
    pub image: Image,
    /// Disk size in bytes (a whole number of sectors).
    pub size: u64,
    pub readonly: bool,
    pub id: [u8; ID_LEN],
    pub seg_max: u32,
    pub size_max: u32,
    pub discard: bool,
    /// A write or fdatasync failed since the last reset: every FLUSH fails.
    pub write_failed: bool,
    /// Writes done synchronously when an io_uring completion was reaped (the rest of a short
    /// write, a write zeroes' fallback): a flush submitted before one of them was not ordered
    /// after it by `IOSQE_IO_DRAIN` (the drain waits for the completion, not for what the device
    /// does on reaping it), so it syncs again ([`Disk::finish_async`]). Wraps (compared for
    /// equality only).
    pub late_writes: u32,
}

impl Disk {
    /// Passes on the result of a write or fdatasync of the image, remembering a failure.
    pub fn durability(&mut self, what: &str, r: io::Result<()>) -> io::Result<()> {
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

    /// Checks a chain and maps its status byte and data; answers it at once when there is no
    /// I/O to wait for.
    pub fn start(&mut self, q: &DmaQueue, chain: &Chain) -> Start {
        let Some((status_desc, rest)) = chain.descs.split_last() else {
            crate::warn_limited!("virtio-blk: empty chain {}", chain.head);
            return Start::Done(0);
        };
        if !status_desc.writable || status_desc.len == 0 {
            crate::warn_limited!(
                "virtio-blk: chain {} has no writable status byte; returned unused",
                chain.head
            );
            return Start::Done(0);
        }
        // Only the status byte itself: the rest of a longer descriptor is never written.
        let status_byte = Desc {
            len: 1,
            ..*status_desc
        };
        let status = match q.map_owned(&status_byte, MapAttrs::default()) {
            Ok(b) => b,
            Err(DmaError::WouldBlock { .. }) => return Start::Deferred,
            Err(e) => {
                crate::warn_limited!("virtio-blk: chain {}: status byte: {e}", chain.head);
                return Start::Done(0);
            }
        };
        match self.execute(q, rest) {
            Ok(Parsed::Io {
                kind,
                offset,
                len,
                data,
            }) => Start::Io(Prepared {
                head: chain.head,
                kind,
                offset,
                len,
                late_writes: 0,
                data,
                status,
            }),
            Ok(Parsed::Inline(written)) => {
                Start::Done(answer(q, chain.head, status, written, Ok(())))
            }
            Err(RequestError::Dma(DmaError::WouldBlock { .. })) => Start::Deferred,
            Err(e) => Start::Done(answer(q, chain.head, status, 0, Err(e))),
        }
    }

    /// Does a prepared request's I/O here and now (the sync engine).
    pub fn run_sync(&mut self, p: &Prepared) -> Result<(), RequestError> {
        match p.kind {
            IoKind::Flush => self.flush(),
            IoKind::Read | IoKind::Write => self.transfer(p, 0),
            // A hint: a failure loses nothing the driver wrote.
            IoKind::Discard => Ok(self.image.punch_hole(p.offset, p.len)?),
            IoKind::WriteZeroes { unmap } => {
                let first = if unmap {
                    self.image.punch_hole(p.offset, p.len)
                } else {
                    Err(io::Error::from(io::ErrorKind::Unsupported))
                };
                self.write_zeroes(p, first)
            }
        }
    }

    /// WRITE_ZEROES after a first attempt (a hole punch or a `ZERO_RANGE`): if it failed,
    /// zeroes are written (`ZERO_RANGE`, else plain writes). A failure of both is a failed
    /// write: every FLUSH fails.
    fn write_zeroes(&mut self, p: &Prepared, first: io::Result<()>) -> Result<(), RequestError> {
        let r = match first {
            Ok(()) => Ok(()),
            Err(e) => {
                log::debug!("virtio-blk: write zeroes: fallocate: {e}; writing zeroes");
                self.image.write_zeroes(p.offset, p.len)
            }
        };
        Ok(self.durability("write zeroes", r)?)
    }

    /// The outcome of a request whose I/O io_uring did: `result` is the completion's (bytes
    /// transferred, or the error). Finishes what the kernel left undone synchronously (the rest
    /// of a short transfer, a write zeroes whose fallocate failed), counting such writes in
    /// [`Disk::late_writes`]; a flush submitted before one of them syncs again.
    pub fn finish_async(
        &mut self,
        p: &Prepared,
        result: io::Result<u64>,
    ) -> Result<(), RequestError> {
        match (result, p.kind) {
            (Err(e), IoKind::Write) => Err(self.durability("write", Err(e)).unwrap_err().into()),
            (Err(e), IoKind::Flush) => {
                Err(self.durability("fdatasync", Err(e)).unwrap_err().into())
            }
            (Err(e), IoKind::Read | IoKind::Discard) => Err(e.into()),
            (r, IoKind::WriteZeroes { .. }) => {
                if r.is_err() {
                    self.late_writes = self.late_writes.wrapping_add(1);
                }
                self.write_zeroes(p, r.map(|_| ()))
            }
            (Ok(_), IoKind::Discard) => Ok(()),
            // Everything submitted before the flush completed before it started
            // (IOSQE_IO_DRAIN) and was reaped before it: a failure among them is known.
            (Ok(_), IoKind::Flush) if self.write_failed => Err(RequestError::EarlierWriteFailed),
            // Some of it was written after the drained fdatasync had started.
            (Ok(_), IoKind::Flush) if self.late_writes != p.late_writes => self.flush(),
            (Ok(_), IoKind::Flush) => Ok(()),
            // A short transfer: the rest synchronously.
            (Ok(n), IoKind::Read | IoKind::Write) if n < p.len => {
                if p.kind == IoKind::Write {
                    self.late_writes = self.late_writes.wrapping_add(1);
                }
                self.transfer(p, n)
            }
            (Ok(_), IoKind::Read | IoKind::Write) => Ok(()),
        }
    }

    /// Moves `p`'s data from byte `done` of the request on, synchronously (all of it for the
    /// sync engine; the rest after a short transfer for io_uring).
    pub fn transfer(&mut self, p: &Prepared, done: u64) -> Result<(), RequestError> {
        let mut offset = p.offset;
        let mut skip = done;
        for b in &p.data {
            let len = b.len() as u64;
            if skip >= len {
                skip -= len;
                offset += len;
                continue;
            }
            // `skip` < `len` ≤ one segment: fits in usize.
            let s = b.slice();
            let s = s.offset(skip as usize).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "offset past a DMA buffer")
            })?;
            let at = offset + skip;
            match p.kind {
                IoKind::Read => self.image.read_at(&s, at)?,
                IoKind::Write => {
                    let r = self.image.write_at(&s, at);
                    self.durability("write", r)?;
                }
                IoKind::Flush | IoKind::Discard | IoKind::WriteZeroes { .. } => {}
            }
            offset += len;
            skip = 0;
        }
        Ok(())
    }

    /// FLUSH: OK only once the data is on stable storage, and never again after a write or
    /// fdatasync failed (see the module's documentation).
    pub fn flush(&mut self) -> Result<(), RequestError> {
        if self.write_failed {
            return Err(RequestError::EarlierWriteFailed);
        }
        let r = self.image.sync_data();
        Ok(self.durability("fdatasync", r)?)
    }

    /// Answers a prepared request with the outcome of its I/O: unmaps its data (a read's data
    /// reaches the guest here), then writes and unmaps the status byte. Returns the used length.
    pub fn complete(&mut self, q: &DmaQueue, p: Prepared, r: Result<(), RequestError>) -> u32 {
        let Prepared {
            head,
            kind,
            len,
            data,
            status,
            ..
        } = p;
        let mut r = r;
        for b in data {
            if let Err(e) = b.unmap() {
                if r.is_ok() {
                    r = Err(e.into());
                }
            }
        }
        let written = match (&r, kind) {
            // ≤ seg_max * size_max: the sum fits in u32 only when small; saturate.
            (Ok(()), IoKind::Read) => u32::try_from(len).unwrap_or(u32::MAX),
            _ => 0,
        };
        answer(q, head, status, written, r)
    }

    fn execute(&mut self, q: &DmaQueue, descs: &[Desc]) -> Result<Parsed, RequestError> {
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
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let read = req_type == VIRTIO_BLK_T_IN;
                if !read && self.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let (offset, len) = self.check_data(sector, data, read)?;
                Ok(Parsed::Io {
                    kind: if read { IoKind::Read } else { IoKind::Write },
                    offset,
                    len,
                    data: map_all(q, data)?,
                })
            }
            VIRTIO_BLK_T_FLUSH => {
                if !data.is_empty() {
                    return Err(RequestError::UnexpectedData);
                }
                Ok(Parsed::Io {
                    kind: IoKind::Flush,
                    offset: 0,
                    len: 0,
                    data: Vec::new(),
                })
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
                Ok(Parsed::Inline(n as u32))
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if self.discard => {
                self.discard_or_zero(q, req_type, data)
            }
            t => Err(RequestError::Unsupported(t)),
        }
    }

    /// Checks directions and lengths of the data segments and the sector range; returns the
    /// byte offset in the image and the length.
    fn check_data(
        &self,
        sector: u64,
        data: &[Desc],
        writable: bool,
    ) -> Result<(u64, u64), RequestError> {
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
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(total).is_some_and(|end| end <= self.size))
            .ok_or(RequestError::OutOfRange {
                sector,
                bytes: total,
            })?;
        Ok((offset, total))
    }

    /// Checks a DISCARD or WRITE_ZEROES and its segment; the range to deallocate or zero, or
    /// nothing to do.
    fn discard_or_zero(
        &mut self,
        q: &DmaQueue,
        t: u32,
        data: &[Desc],
    ) -> Result<Parsed, RequestError> {
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
            return Ok(Parsed::Inline(0));
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
                return Ok(Parsed::Inline(0));
            }
            return Ok(Parsed::Io {
                kind: IoKind::Discard,
                offset: start << SECTOR_SHIFT,
                len: (end - start) << SECTOR_SHIFT,
                data: Vec::new(),
            });
        }
        Ok(Parsed::Io {
            kind: IoKind::WriteZeroes {
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            },
            offset,
            len: bytes,
            data: Vec::new(),
        })
    }
}

/// Writes the status for `r` into the mapped status byte and unmaps it; returns the used length
/// (`written` data bytes plus the status byte, or `written` alone if the status byte could not
/// be written).
fn answer(
    q: &DmaQueue,
    head: u16,
    mut status: OwnedDmaBuffer,
    written: u32,
    r: Result<(), RequestError>,
) -> u32 {
    let code = match r {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(e) => {
            log::debug!("virtio-blk: request at head {head} failed: {e}");
            q.count_error();
            e.status()
        }
    };
    match status.write_at(0, &[code]).and_then(|()| status.unmap()) {
        Ok(()) => written.saturating_add(1),
        Err(e) => {
            crate::warn_limited!("virtio-blk: chain {head}: status byte: {e}");
            written
        }
    }
}

/// Maps every data buffer of a request before any I/O, as a driver's `dma_map_sg` does: the
/// whole request holds pool space at once (until its completion, with io_uring), so the pool
/// pressure the model sees is the guest's. Buffers longer than a bounce segment are mapped in
/// pieces. The first piece may block (see the module's documentation). On failure the buffers
/// mapped so far are unmapped (dropped).
fn map_all(q: &DmaQueue, data: &[Desc]) -> Result<Vec<OwnedDmaBuffer>, RequestError> {
    let max = q.max_mapping_len();
    data.iter()
        .flat_map(|d| d.pieces(max))
        .enumerate()
        .map(|(i, piece)| {
            let attrs = MapAttrs {
                may_block: i == 0,
                ..MapAttrs::default()
            };
            q.map_owned(&piece, attrs).map_err(RequestError::from)
        })
        .collect()
}
