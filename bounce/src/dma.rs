//! The DMA API devices are written against: streaming mappings of guest buffers.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::error::DmaError;

/// Direction of a streaming mapping, as Linux's `enum dma_data_direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmaDirection {
    /// The device reads the buffer (a virtio driver-readable descriptor).
    ToDevice,
    /// The device writes the buffer (a virtio device-writable descriptor).
    FromDevice,
    Bidirectional,
}

impl DmaDirection {
    pub fn device_writes(self) -> bool {
        !matches!(self, DmaDirection::ToDevice)
    }
}

/// Who maps: selects the pool area (so queues do not contend) and labels trace records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaSource {
    pub device: u16,
    pub queue: u16,
}

/// A device's only handle on guest memory. Cheap to clone; shared by a device's queues.
#[derive(Clone)]
pub struct Dma {
    inner: Arc<Inner>,
}

struct Inner {
    mem: GuestMemoryMmap,
}

impl Dma {
    /// No bouncing: mappings are the guest's own pages (the baseline).
    pub fn direct(mem: GuestMemoryMmap) -> Self {
        Dma {
            inner: Arc::new(Inner { mem }),
        }
    }

    /// Maps `len` bytes of guest memory at `addr` for streaming DMA in direction `dir`.
    pub fn map(
        &self,
        _src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
    ) -> Result<DmaBuffer, DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength { addr: addr.0 });
        }
        let len = len as usize;
        // Validate now so that a buffer, once mapped, can always be accessed.
        self.guest_slice(addr, len)?;
        Ok(DmaBuffer {
            dma: self.clone(),
            addr,
            len,
            dir,
        })
    }

    /// The guest memory behind the handle, for the crate's own coherent (ring) accesses.
    pub(crate) fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.inner.mem
    }

    fn guest_slice(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>, DmaError> {
        let mem = &self.inner.mem;
        let end = addr
            .0
            .checked_add(len as u64 - 1)
            .ok_or(DmaError::OutOfGuestMemory {
                addr: addr.0,
                len: len as u64,
            })?;
        if !mem.address_in_range(addr) || !mem.address_in_range(GuestAddress(end)) {
            return Err(DmaError::OutOfGuestMemory {
                addr: addr.0,
                len: len as u64,
            });
        }
        mem.get_slice(addr, len)
            .map_err(|_| DmaError::NotContiguous {
                addr: addr.0,
                len: len as u64,
            })
    }
}

/// A live streaming mapping. The device accesses the buffer only through it; dropping it unmaps
/// (and, for device writes, makes the data visible to the guest).
pub struct DmaBuffer {
    dma: Dma,
    addr: GuestAddress,
    len: usize,
    dir: DmaDirection,
}

impl DmaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn direction(&self) -> DmaDirection {
        self.dir
    }

    /// The guest address the driver gave (the original, not the bounce address).
    pub fn guest_addr(&self) -> GuestAddress {
        self.addr
    }

    /// The memory the device may access for the lifetime of the mapping, for zero-copy I/O
    /// (`ReadVolatile`/`WriteVolatile` on files and sockets).
    pub fn slice(&self) -> VolatileSlice<'_> {
        // Checked in `Dma::map`, and guest memory never shrinks while a `Dma` lives.
        self.dma
            .guest_slice(self.addr, self.len)
            .expect("mapping validated at map time")
    }

    /// Copies `buf.len()` bytes at `offset` out of the buffer (the device reading).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, buf.len())?;
        let s = self.slice();
        s.read_slice(buf, offset)
            .map_err(|_| self.out_of_buffer(offset, buf.len()))
    }

    /// Copies `data` into the buffer at `offset` (the device writing).
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        if !self.dir.device_writes() {
            return Err(DmaError::ReadOnlyBuffer);
        }
        self.check(offset, data.len())?;
        let s = self.slice();
        s.write_slice(data, offset)
            .map_err(|_| self.out_of_buffer(offset, data.len()))
    }

    /// Ends the mapping. Device writes are visible to the guest once this returns `Ok`.
    pub fn unmap(self) -> Result<(), DmaError> {
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(self.out_of_buffer(offset, len)),
        }
    }

    fn out_of_buffer(&self, offset: usize, len: usize) -> DmaError {
        DmaError::OutOfBuffer {
            offset,
            len,
            size: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn direct_round_trip() {
        let dma = Dma::direct(mem());
        let mut b = dma
            .map(
                DmaSource::default(),
                GuestAddress(0x1000),
                16,
                DmaDirection::FromDevice,
            )
            .unwrap();
        b.write_at(4, b"abcd").unwrap();
        let mut out = [0u8; 4];
        b.read_at(4, &mut out).unwrap();
        assert_eq!(&out, b"abcd");
        b.unmap().unwrap();
        let mut g = [0u8; 4];
        dma.guest_memory()
            .read_slice(&mut g, GuestAddress(0x1004))
            .unwrap();
        assert_eq!(&g, b"abcd");
    }

    #[test]
    fn rejects_bad_ranges() {
        let dma = Dma::direct(mem());
        let src = DmaSource::default();
        let d = DmaDirection::ToDevice;
        assert_eq!(
            dma.map(src, GuestAddress(0x100), 0, d).err(),
            Some(DmaError::ZeroLength { addr: 0x100 })
        );
        assert!(matches!(
            dma.map(src, GuestAddress(0xffff), 2, d),
            Err(DmaError::OutOfGuestMemory { .. })
        ));
        assert!(matches!(
            dma.map(src, GuestAddress(u64::MAX), 2, d),
            Err(DmaError::OutOfGuestMemory { .. })
        ));
        let mut b = dma.map(src, GuestAddress(0), 8, d).unwrap();
        assert_eq!(b.write_at(0, b"x"), Err(DmaError::ReadOnlyBuffer));
        let mut out = [0u8; 4];
        assert!(matches!(
            b.read_at(usize::MAX, &mut out),
            Err(DmaError::OutOfBuffer { .. })
        ));
        assert!(matches!(
            b.read_at(6, &mut out),
            Err(DmaError::OutOfBuffer { .. })
        ));
    }
}
