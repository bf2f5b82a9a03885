//! [`OwnedDmaBuffer`]: a streaming mapping that owns its handle, for devices that keep mappings
//! across event-loop iterations (asynchronous I/O).

use vm_memory::GuestAddress;

use crate::dma::{Dma, DmaBuffer};
use crate::error::DmaError;
use crate::pool::MapAttrs;
use crate::types::{DmaDirection, DmaSource};

/// A [`DmaBuffer`] that owns a clone of its [`Dma`] handle instead of borrowing it, for devices
/// that keep mappings across event-loop iterations (asynchronous I/O: the buffer is mapped when
/// the request is submitted and unmapped when it completes, as a driver holds its `dma_map_sg`
/// until the interrupt). One reference count more than a borrowed buffer, paid once per map.
///
/// Only shared access to the inner buffer is handed out ([`std::ops::Deref`]), plus the few
/// `&mut` operations forwarded below, so the inner buffer can never be moved out or swapped
/// with another's (which would break the invariant below).
pub struct OwnedDmaBuffer {
    // Field order matters: `buf` is dropped (unmapped) before `_dma`, which keeps what it
    // borrows alive.
    buf: DmaBuffer<'static>,
    _dma: Dma,
}

impl OwnedDmaBuffer {
    /// Maps like [`Dma::map_with`], keeping a clone of `dma`.
    pub fn map(
        dma: &Dma,
        src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
        attrs: MapAttrs,
    ) -> Result<OwnedDmaBuffer, DmaError> {
        let dma = dma.clone();
        let buf = dma.map_with(src, addr, len, dir, attrs)?;
        // SAFETY: `buf` borrows the `Inner` that `dma`'s `Arc` points to, whose heap address does
        // not change when `dma` moves. The clone of `dma` stored beside `buf` keeps that `Inner`
        // alive for as long as `buf` exists: `buf` is dropped first (field order), `unmap` ends
        // it before dropping the clone, and no `&mut DmaBuffer` (which could swap it into another
        // owner) is ever handed out. So the `'static` is never observed beyond the `Inner`'s life.
        let buf = unsafe { std::mem::transmute::<DmaBuffer<'_>, DmaBuffer<'static>>(buf) };
        Ok(OwnedDmaBuffer { buf, _dma: dma })
    }

    /// [`DmaBuffer::write_at`].
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        self.buf.write_at(offset, data)
    }

    /// [`DmaBuffer::unmap`].
    pub fn unmap(self) -> Result<(), DmaError> {
        let OwnedDmaBuffer { buf, _dma } = self;
        let r = buf.unmap();
        drop(_dma);
        r
    }
}

impl std::ops::Deref for OwnedDmaBuffer {
    type Target = DmaBuffer<'static>;

    fn deref(&self) -> &DmaBuffer<'static> {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Swiotlb;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn owned_buffer_outlives_the_handle_it_was_mapped_with() {
        let sw = Swiotlb::from_config_str("").unwrap();
        let dma = Dma::bounced(mem(), sw.clone());
        let src = DmaSource::default();
        let mut b = OwnedDmaBuffer::map(
            &dma,
            src,
            GuestAddress(0x2000),
            8,
            DmaDirection::FromDevice,
            MapAttrs::default(),
        )
        .unwrap();
        let guest = dma.guest_memory().clone();
        drop(dma);
        b.write_at(0, b"owned!!!").unwrap();
        assert!(b.bounce_addr().is_some());
        b.unmap().unwrap();
        let mut g = [0u8; 8];
        guest.read_slice(&mut g, GuestAddress(0x2000)).unwrap();
        assert_eq!(&g, b"owned!!!");
        assert_eq!(sw.stats().slots_used, 0);
    }
}
