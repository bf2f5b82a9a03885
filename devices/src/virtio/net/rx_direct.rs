//! RX with `VIRTIO_NET_F_MRG_RXBUF`: the tap `readv`s a frame straight into the next RX chain's
//! mapped buffers (the bounce slots when bouncing), with a host buffer behind them for what does
//! not fit.
//!
//! A frame's length is known only once it is read, and mapping buffers before that costs their
//! whole length twice under bouncing (a map copies the guest buffer in for every direction, the
//! unmap copies it back: Linux's swiotlb since CVE-2022-0854). So only the first chain is mapped
//! ahead: with mergeable buffers it is page-sized at most, and holds an MTU frame whole, which
//! then reaches the guest with no host copy at all. The part of a larger frame (GSO) beyond it
//! lands in `rx_buf` and is copied into the chains [`super::rx::take`] pops next. If the ring
//! has not enough of them yet, the frame is reassembled in `rx_buf` (the first chain's part
//! copied back out of its mapping) and waits as any pending frame does.
//!
//! The price: the chain is mapped before the tap says whether it has a frame, so the last
//! `readv` of every burst (the one that finds the tap empty) maps and unmaps one chain for
//! nothing: under bouncing, its length copied in and back out once per tap event.
//!
//! Not used with an RX rate limiter (it charges a frame before it is delivered, so it must know
//! the frame's length first), without MRG_RXBUF (a "big packets" chain is 64 KiB: mapping it for
//! every MTU frame would copy far more than it saves), for a pending frame, or when the first
//! chain is not a plain device-writable chain of fewer than [`IOV_MAX`] buffers: those go the
//! way of [`super::rx`] (read into `rx_buf`, then copied), which also answers hostile chains.

use std::io;

use bounce::{DmaQueue, MapAttrs, OwnedDmaBuffer, QueueError};

use super::rx::{self, Take};
use super::tx::IOV_MAX;
use super::{Tap, VNET_HDR_LEN};
use crate::virtio::DeviceError;

/// What [`read`] did.
pub enum Direct {
    /// A frame was delivered (or dropped): go on with the next.
    Done,
    /// The frame is in `rx_buf` (this many bytes), pending: not enough buffers for it yet
    /// (notifications are enabled), or the first chain was not one this path takes (nothing
    /// read: `None`).
    Fallback(Option<usize>),
    /// The tap is empty.
    Empty,
}

/// Reads the next frame from `tap` into the next RX chain (and, for its tail, `rx_buf` and the
/// chains after it). `used` is set when something was added to the used ring.
pub fn read(
    q: &mut DmaQueue,
    tap: &Tap,
    rx_buf: &mut [u8],
    used: &mut bool,
) -> Result<Direct, DeviceError> {
    let first = match q.pop() {
        Ok(Some(c)) => c,
        // An empty ring, a malformed chain: the other path deals with them.
        Ok(None) => return Ok(Direct::Fallback(None)),
        Err(QueueError::MalformedChain { .. }) => {
            q.undo_pop();
            return Ok(Direct::Fallback(None));
        }
        Err(e) => return Err(e.into()),
    };
    let cap: u64 = first.descs.iter().map(|d| u64::from(d.len)).sum();
    let plain = first.descs.iter().all(|d| d.writable && d.len > 0);
    if !plain || first.descs.len() >= IOV_MAX || cap > rx_buf.len() as u64 {
        q.undo_pop();
        return Ok(Direct::Fallback(None));
    }
    let cap = cap as usize;
    let Ok(mut bufs) = first
        .descs
        .iter()
        .map(|d| q.map_owned(d, MapAttrs::default()))
        .collect::<Result<Vec<_>, _>>()
    else {
        // The other path maps again and drops the frame if it fails again.
        q.undo_pop();
        return Ok(Direct::Fallback(None));
    };
    let n = match readv_into(tap, &bufs, rx_buf) {
        Ok(n) => n,
        Err(e) => {
            // Nothing was written: the unmaps copy the guest's own bytes back.
            drop(bufs);
            q.undo_pop();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(Direct::Empty),
                io::ErrorKind::Interrupted => Ok(Direct::Done),
                _ => Err(DeviceError::Backend(e)),
            };
        }
    };
    if n < VNET_HDR_LEN {
        log::debug!("virtio-net: runt frame of {n} bytes from the tap");
        drop(bufs);
        q.undo_pop();
        return Ok(Direct::Done);
    }
    if n > rx_buf.len() {
        // Longer than any frame a tap gives (what does not fit is lost): dropped, as the other
        // path would cut it.
        drop(bufs);
        q.undo_pop();
        crate::warn_limited!(
            "virtio-net: frame over {} bytes from the tap dropped",
            rx_buf.len()
        );
        return Ok(Direct::Done);
    }
    if n <= cap {
        let r = set_num_buffers(&mut bufs, 1).and_then(|()| unmap(bufs));
        q.add_used(first.head, if r.is_some() { n as u32 } else { 0 })?;
        *used = true;
        return Ok(Direct::Done);
    }
    // The tail, `n - cap` bytes at the start of `rx_buf`, goes to the chains after this one.
    let tail = n - cap;
    match rx::take(q, tail, true, used, first.descs.len() as u64)? {
        Take::Ready(chains) => {
            let nb = u16::try_from(chains.len() + 1).unwrap_or(u16::MAX);
            let ok = set_num_buffers(&mut bufs, nb).and_then(|()| unmap(bufs));
            let lens = if ok.is_some() {
                rx::write(q, &chains, &mut rx_buf[..tail], true)
            } else {
                chains.iter().map(|c| (c.head, 0)).collect()
            };
            // A failed tail (all 0) takes the head's bytes with it: the frame is dropped.
            let head_len = if lens.iter().all(|&(_, l)| l > 0) {
                cap as u32
            } else {
                0
            };
            q.add_used(first.head, head_len)?;
            for (head, l) in lens {
                q.add_used(head, if head_len == 0 { 0 } else { l })?;
            }
            *used = true;
            Ok(Direct::Done)
        }
        Take::Empty => {
            // Reassemble the frame in `rx_buf` and let it wait for buffers.
            rx_buf.copy_within(..tail, cap);
            let mut off = 0;
            let mut ok = true;
            for b in &bufs {
                ok &= b.read_at(0, &mut rx_buf[off..off + b.len()]).is_ok();
                off += b.len();
            }
            drop(bufs);
            q.undo_pop();
            if !ok {
                return Ok(Direct::Done);
            }
            Ok(Direct::Fallback(Some(n)))
        }
        Take::TooBig => {
            drop(bufs);
            q.undo_pop();
            crate::warn_limited!("virtio-net: a {n}-byte frame does not fit the RX ring; dropped");
            Ok(Direct::Done)
        }
        Take::Drop => {
            // The chains after this one were returned unused; so is this one.
            drop(bufs);
            q.add_used(first.head, 0)?;
            *used = true;
            Ok(Direct::Done)
        }
    }
}

/// `readv` of one frame into `bufs`, then `rx_buf` for what does not fit.
fn readv_into(tap: &Tap, bufs: &[OwnedDmaBuffer], rx_buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = Vec::with_capacity(bufs.len() + 1);
    for b in bufs {
        let s = b.slice();
        iov.push(libc::iovec {
            // The guard only tracks dirty pages (none for these slices); the pointer stays
            // valid while the mapping lives, which `bufs` (borrowed for this call) ensures.
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        });
    }
    iov.push(libc::iovec {
        iov_base: rx_buf.as_mut_ptr().cast(),
        iov_len: rx_buf.len(),
    });
    // SAFETY: every iovec points at memory valid for writes of its length for the whole call
    // and accessed by nothing else meanwhile: the device-writable mappings in `bufs` (bounce
    // slots, or guest pages the `Dma` handle each buffer holds keeps mapped), borrowed for the
    // call, and `rx_buf`, borrowed mutably.
    unsafe { tap.readv(&iov) }
}

/// Writes `num_buffers` (header bytes 10..12) into the chain's mapped buffers; `None` (frame
/// to drop) if they cannot be written.
fn set_num_buffers(bufs: &mut [OwnedDmaBuffer], nb: u16) -> Option<()> {
    let bytes = nb.to_le_bytes();
    for (k, byte) in bytes.iter().enumerate() {
        let mut at = VNET_HDR_LEN - 2 + k;
        for b in bufs.iter_mut() {
            if at < b.len() {
                b.write_at(at, &[*byte]).ok()?;
                break;
            }
            at -= b.len();
        }
    }
    Some(())
}

/// Unmaps `bufs` (device writes become the guest's); `None` if one failed.
fn unmap(bufs: Vec<OwnedDmaBuffer>) -> Option<()> {
    let mut ok = true;
    for b in bufs {
        ok &= b.unmap().is_ok();
    }
    ok.then_some(())
}
