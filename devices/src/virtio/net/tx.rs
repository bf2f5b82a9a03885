//! TX: a chain's buffers go to the tap in one `writev`, straight from their mappings.
//!
//! Each driver-readable buffer of the chain is mapped (with bouncing, the map copies the guest
//! buffer into its bounce slot: the modelled cost) and the tap reads the frame from those
//! mappings: no host buffer in between. Only the 12-byte virtio net header is copied, into a
//! small owned array, because it must be sanitised ([`super::hdr::sanitize_tx`]) before the host
//! kernel parses it, and a copy is what the kernel then reads: the driver cannot change it after
//! the check. The header may span descriptors; the payload's iovecs start where it ends.
//!
//! A chain with more buffers than one `writev` takes ([`IOV_MAX`], Linux's `UIO_MAXIOV`: no
//! driver sends that, but a hostile one may) is gathered into a host buffer and written with
//! one `write`, as before.

use std::io;

use bounce::{Chain, DmaBuffer, DmaError, DmaQueue};

use super::hdr::{self, TxHeaderError};
use super::{Tap, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Linux's `UIO_MAXIOV`: a `writev` with more iovecs fails with EINVAL.
pub const IOV_MAX: usize = 1024;

/// Why a TX chain was not sent.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("a TX chain has a device-writable buffer")]
    WritableBuffer,
    #[error(
        "frame of {0} bytes (header included) is not between {VNET_HDR_LEN} and {MAX_FRAME_LEN}"
    )]
    BadLength(u64),
    #[error("{0}")]
    Dma(#[from] DmaError),
    #[error("{0}")]
    Header(#[from] TxHeaderError),
    /// The tap refused the frame (full: dropped, as a NIC with a full wire would).
    #[error("tap write: {0}")]
    Tap(io::Error),
}

impl TxError {
    /// Whether the driver is to blame (worth a rate-limited warning), as opposed to the host.
    pub fn is_guest_error(&self) -> bool {
        !matches!(self, TxError::Tap(_))
    }
}

/// Sends one TX chain to `tap`; `acked` is what the driver negotiated (what its header may
/// ask for). `gather_buf` is used (grown to the frame's length) only for chains of [`IOV_MAX`]
/// buffers or more.
pub fn send(
    q: &DmaQueue,
    chain: &Chain,
    tap: &Tap,
    acked: u64,
    gather_buf: &mut Vec<u8>,
) -> Result<(), TxError> {
    let mut total = 0u64;
    for d in &chain.descs {
        if d.writable {
            return Err(TxError::WritableBuffer);
        }
        total += u64::from(d.len);
    }
    if total < VNET_HDR_LEN as u64 || total > MAX_FRAME_LEN as u64 {
        return Err(TxError::BadLength(total));
    }
    if chain.descs.len() >= IOV_MAX {
        return send_gathered(q, chain, tap, acked, gather_buf, total as usize);
    }
    // Every buffer stays mapped until the `writev` has returned: the iovecs point into them.
    let bufs = chain
        .descs
        .iter()
        .map(|d| q.map(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut header = [0u8; VNET_HDR_LEN];
    let (mut got, mut first) = (0usize, 0usize);
    // Where the payload starts: buffer `first`, byte `skip`.
    let mut skip = 0usize;
    while got < VNET_HDR_LEN {
        let b = &bufs[first]; // total ≥ VNET_HDR_LEN: the header ends in some buffer.
        let n = b.len().min(VNET_HDR_LEN - got);
        b.read_at(0, &mut header[got..got + n])?;
        got += n;
        if n == b.len() {
            first += 1;
        } else {
            skip = n;
        }
    }
    hdr::sanitize_tx(&mut header, acked)?;
    let r = write_mapped(tap, &header, &bufs[first..], skip);
    unmap_all(bufs)?;
    r.map(|_| ()).map_err(TxError::Tap)
}

/// `writev` of `header` then `bufs` (the first without its `skip` leading bytes).
fn write_mapped(
    tap: &Tap,
    header: &[u8; VNET_HDR_LEN],
    bufs: &[DmaBuffer<'_>],
    skip: usize,
) -> io::Result<usize> {
    let mut iov = Vec::with_capacity(bufs.len() + 1);
    iov.push(libc::iovec {
        iov_base: header.as_ptr().cast_mut().cast(),
        iov_len: VNET_HDR_LEN,
    });
    for (i, b) in bufs.iter().enumerate() {
        let off = if i == 0 { skip } else { 0 };
        let s = b.slice();
        if off >= s.len() {
            continue;
        }
        // The guard only tracks dirty pages (none for these slices); the pointer is valid for
        // `len` bytes while the mapping lives, which `bufs` (borrowed for this call) ensures.
        let base = s.ptr_guard().as_ptr();
        iov.push(libc::iovec {
            // `off` < `len`: stays inside the mapping.
            iov_base: base.wrapping_add(off).cast_mut().cast(),
            iov_len: s.len() - off,
        });
    }
    // SAFETY: every iovec points at memory valid for reads of its length for the whole call:
    // `header` is borrowed, and each buffer's mapping (a bounce slot, or guest memory that the
    // `Dma` handle keeps mapped) lives while `bufs` is borrowed. The kernel only reads them.
    unsafe { tap.writev(&iov) }
}

/// Unmaps every buffer, reporting the first error (all are unmapped regardless).
pub(super) fn unmap_all(bufs: Vec<DmaBuffer<'_>>) -> Result<(), DmaError> {
    let mut first = Ok(());
    for b in bufs {
        if let Err(e) = b.unmap() {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// The fallback for chains of too many buffers: the frame is copied into `buf` and written.
fn send_gathered(
    q: &DmaQueue,
    chain: &Chain,
    tap: &Tap,
    acked: u64,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), TxError> {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let frame = &mut buf[..len];
    let mut off = 0usize;
    for d in &chain.descs {
        let n = d.len as usize;
        let b = q.map(d)?;
        b.read_at(0, &mut frame[off..off + n])?;
        b.unmap()?;
        off += n;
    }
    let header: &mut [u8; VNET_HDR_LEN] = (&mut frame[..VNET_HDR_LEN])
        .try_into()
        .map_err(|_| TxError::BadLength(len as u64))?;
    hdr::sanitize_tx(header, acked)?;
    tap.write_frame(frame).map(|_| ()).map_err(TxError::Tap)
}
