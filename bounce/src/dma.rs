//! The DMA API devices are written against: streaming mappings of guest buffers.
//!
//! Two implementations behind one type: [`Dma::direct`] (the device works on the guest's own
//! pages, the no-bounce baseline) and [`Dma::bounced`] (every mapping is a bounce buffer in a
//! shared [`Swiotlb`] pool, filled and drained as Linux's swiotlb does). Devices are written once
//! and run with either. Rings and descriptor tables are *coherent* DMA memory and are only read in
//! place by [`crate::DmaQueue`]; data buffers are *streaming* DMA and go through [`Dma::map`].

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use crossbeam_utils::CachePadded;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, VolatileSlice,
};

use crate::error::DmaError;
use crate::pool::MapAttrs;
use crate::stats::{add, StatsSnapshot};
use crate::swiotlb::{Shared, Swiotlb};
use crate::trace::{Extra, TraceOp, TraceRecorder};
use crate::types::{DmaDirection, DmaSource};

/// A device's only handle on guest memory. Cheap to clone; shared by a device's queues.
#[derive(Clone)]
pub struct Dma {
    /// Padded: every queue reads it on every map and unmap, so no line of it may be one that
    /// something else writes (`pool::Lines` keeps the hot writers off the other side).
    inner: Arc<CachePadded<Inner>>,
}

struct Inner {
    mem: GuestMemoryMmap,
    /// `mem`'s regions, for the range check of every map.
    ram: Box<[Ram]>,
    swiotlb: Option<Arc<Swiotlb>>,
    /// `swiotlb`'s pools, which every map and unmap reaches (one pointer fewer to follow).
    pools: Option<Arc<Shared>>,
    trace: ArcSwapOption<TraceRecorder>,
    /// Whether `trace` is set: a plain load on the fast path.
    tracing: AtomicBool,
}

impl Dma {
    /// No bouncing: mappings are the guest's own pages (the baseline).
    pub fn direct(mem: GuestMemoryMmap) -> Self {
        Dma::new(mem, None)
    }

    fn new(mem: GuestMemoryMmap, swiotlb: Option<Arc<Swiotlb>>) -> Self {
        Dma {
            inner: Arc::new(CachePadded::new(Inner {
                ram: Ram::of(&mem),
                mem,
                pools: swiotlb.as_ref().map(|s| s.shared().clone()),
                swiotlb,
                trace: ArcSwapOption::empty(),
                tracing: AtomicBool::new(false),
            })),
        }
    }

    /// Every mapping bounces through `swiotlb`'s pools.
    pub fn bounced(mem: GuestMemoryMmap, swiotlb: Arc<Swiotlb>) -> Self {
        Dma::new(mem, Some(swiotlb))
    }

    /// A bounced handle with pools built from a `key=value,...` string (or a JSON object); see
    /// the crate README for the keys. `""` gives Linux's defaults.
    pub fn bounced_from_str(
        mem: GuestMemoryMmap,
        config: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Dma::bounced(mem, Swiotlb::from_config_str(config)?))
    }

    /// The pools, when bouncing.
    pub fn swiotlb(&self) -> Option<&Arc<Swiotlb>> {
        self.inner.swiotlb.as_ref()
    }

    /// Registers the waker of `src` (see [`Swiotlb::set_waker`]); nothing for a direct handle,
    /// whose maps never wait.
    pub fn set_waker(&self, src: DmaSource, waker: Option<Arc<dyn crate::DmaWaker>>) {
        if let Some(s) = &self.inner.swiotlb {
            s.set_waker(src, waker);
        }
    }

    /// Bounce statistics (`None` for a direct handle). `snap.to_json()` prints them.
    pub fn stats(&self) -> Option<StatsSnapshot> {
        self.inner.swiotlb.as_ref().map(|s| s.stats())
    }

    /// Records every map/unmap/sync of this handle and its clones from now on (`None` stops).
    pub fn set_trace(&self, rec: Option<Arc<TraceRecorder>>) {
        self.inner.tracing.store(rec.is_some(), Relaxed);
        self.inner.trace.store(rec);
    }

    /// Maps `len` bytes of guest memory at `addr` for streaming DMA in direction `dir`.
    #[inline]
    pub fn map(
        &self,
        src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
    ) -> Result<DmaBuffer<'_>, DmaError> {
        self.map_with(src, addr, len, dir, MapAttrs::default())
    }

    /// [`Dma::map`] with the device's alignment requirements (`min_align_mask`,
    /// `alloc_align_mask`).
    #[inline(always)]
    pub fn map_with(
        &self,
        src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
        attrs: MapAttrs,
    ) -> Result<DmaBuffer<'_>, DmaError> {
        self.map_inner(src, addr, len, dir, attrs)
            .map_err(|e| self.map_failed(e, src, addr, len, dir, attrs))
    }

    /// Counts a failure found before the pools were asked (they count their own), and traces
    /// every failed map (not a `WouldBlock`, which is retried and traced when it maps).
    #[cold]
    #[inline(never)]
    fn map_failed(
        &self,
        e: DmaError,
        src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
        attrs: MapAttrs,
    ) -> DmaError {
        if self.inner.tracing.load(Relaxed) && !matches!(e, DmaError::WouldBlock { .. }) {
            if let Some(t) = self.inner.trace.load().as_ref() {
                let x = Extra {
                    attrs,
                    error: Some(&e),
                    ..Default::default()
                };
                t.record(TraceOp::Map, t.next_id(), src, addr.0, len as usize, dir, x);
            }
        }
        if let Some(s) = &self.inner.pools {
            if matches!(
                e,
                DmaError::ZeroLength { .. }
                    | DmaError::OutOfGuestMemory { .. }
                    | DmaError::NotContiguous { .. }
            ) {
                s.count_failure(&e);
            }
        }
        e
    }

    #[inline(always)]
    fn map_inner(
        &self,
        src: DmaSource,
        addr: GuestAddress,
        len: u32,
        dir: DmaDirection,
        attrs: MapAttrs,
    ) -> Result<DmaBuffer<'_>, DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength { addr: addr.0 });
        }
        let len = len as usize;
        // Validate now so that a buffer, once mapped, can always be accessed.
        let guest_ptr = self.guest_range(addr, len)?;
        // SAFETY: `guest_range` checked that the `len` bytes lie in one region of guest memory,
        // which `self` owns.
        let guest = unsafe { VolatileSlice::new(guest_ptr.as_ptr(), len) };
        let bounce = match &self.inner.pools {
            None => None,
            Some(s) => {
                let m = s.alloc_copying(src, addr.0, len, attrs, len as u64)?;
                let host = m.host();
                // Linux copies the original into the slot on map for every direction (the
                // CVE-2022-0854 fix, "swiotlb: rework fix info leak with DMA_FROM_DEVICE"), so a
                // partial device write cannot leak stale pool data to the guest.
                // SAFETY: `host` is valid for `len` bytes while the mapping lives (`Mapping::host_ptr`).
                // `bytes_to_pool` was counted by the allocation, under the area lock.
                guest.copy_to_volatile_slice(unsafe { VolatileSlice::new(host.as_ptr(), len) });
                Some(Bounce { addr: m.addr, host })
            }
        };
        let mut id = 0;
        if self.inner.tracing.load(Relaxed) {
            if let Some(t) = self.inner.trace.load().as_ref() {
                id = t.next_id();
                let b = bounce.as_ref().map(|b| b.addr);
                let x = Extra {
                    attrs,
                    bounce: b,
                    pool: b.and_then(|b| self.inner.pools.as_ref()?.pool_of(b)),
                    ..Default::default()
                };
                t.record(TraceOp::Map, id, src, addr.0, len, dir, x);
            }
        }
        Ok(DmaBuffer {
            dma: NonNull::from(&**self.inner),
            _borrow: PhantomData,
            src,
            addr,
            len,
            dir,
            guest: guest_ptr,
            bounce,
            trace_id: id,
            cpu_owns: false,
        })
    }

    /// The guest memory behind the handle, for the crate's own coherent (ring) accesses.
    pub(crate) fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.inner.mem
    }

    /// Host address of `len` (> 0) bytes of guest memory at `addr`, all in one region.
    fn guest_range(&self, addr: GuestAddress, len: usize) -> Result<NonNull<u8>, DmaError> {
        if let Some(p) = self
            .inner
            .ram
            .iter()
            .find_map(|r| r.host(addr.0, len as u64))
        {
            return Ok(p);
        }
        // Classify the failure.
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
        Err(DmaError::NotContiguous {
            addr: addr.0,
            len: len as u64,
        })
    }
}

/// One region of guest memory, read once from the `GuestMemoryMmap` (whose regions never change):
/// the range check of every map is then a subtraction and two comparisons per region, without
/// `vm-memory`'s generic region search and slice building (about 40 instructions per map).
struct Ram {
    start: u64,
    len: u64,
    host: NonNull<u8>,
}

// SAFETY: `host` points into a region of the `GuestMemoryMmap` beside it in `Inner`, which is
// Send + Sync; it is only turned into volatile slices.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    fn of(mem: &GuestMemoryMmap) -> Box<[Ram]> {
        mem.iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(Ram {
                    start: r.start_addr().0,
                    len: r.len(),
                    host: NonNull::new(host)?,
                })
            })
            .collect()
    }

    #[inline]
    fn host(&self, addr: u64, len: u64) -> Option<NonNull<u8>> {
        let off = addr.wrapping_sub(self.start);
        if off < self.len && len <= self.len - off {
            // SAFETY: `off` is inside the region's mapping.
            Some(unsafe { self.host.add(off as usize) })
        } else {
            None
        }
    }
}

/// A bounce slot. Its memory lives while the mapping does: see [`crate::Mapping::host_ptr`]
/// (the buffer's `dma` keeps the `Swiotlb`, which owns the pools, alive).
struct Bounce {
    /// The bounce address (unmap looks its pool up by it, as Linux does).
    addr: u64,
    host: NonNull<u8>,
}

/// A live streaming mapping. The device accesses the buffer only through it (in bounced mode
/// the bounce slot, never guest memory); dropping it unmaps (and, for device writes, makes the
/// data visible to the guest), logging any error. It borrows the [`Dma`] handle that mapped it
/// (no reference count to write on every map and unmap).
pub struct DmaBuffer<'a> {
    /// The handle's state, borrowed for `'a` ([`DmaBuffer::dma`]). A pointer, not a `&'a
    /// Inner`: a reference field would be a protected function argument wherever a buffer is
    /// passed by value, and [`crate::OwnedDmaBuffer::unmap`] drops what may be the last `Arc`
    /// of this `Inner` inside such a call (undefined behaviour under Stacked and Tree Borrows,
    /// found by Miri).
    dma: NonNull<Inner>,
    _borrow: PhantomData<&'a Inner>,
    src: DmaSource,
    addr: GuestAddress,
    len: usize,
    dir: DmaDirection,
    /// Validated at map time; guest memory never shrinks while `dma` (which owns it) lives.
    guest: NonNull<u8>,
    bounce: Option<Bounce>,
    trace_id: u64,
    cpu_owns: bool,
}

// SAFETY: the raw pointers point into memory owned through `dma` (guest memory, and the
// Swiotlb's pools), both Send + Sync; all accesses go through volatile slices.
unsafe impl Send for DmaBuffer<'_> {}
// SAFETY: `&DmaBuffer` only allows reads (slice, read_at) of memory valid for the lifetime of
// the borrow; writes need `&mut self` or go through VolatileSlice (as for guest memory itself).
unsafe impl Sync for DmaBuffer<'_> {}

impl<'a> DmaBuffer<'a> {
    fn dma(&self) -> &'a Inner {
        // SAFETY: made from a `&'a Inner` at map time (`_borrow` carries its lifetime).
        unsafe { self.dma.as_ref() }
    }

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

    /// The bounce address (`None` for a direct mapping).
    pub fn bounce_addr(&self) -> Option<u64> {
        self.bounce.as_ref().map(|b| b.addr)
    }

    /// The memory the device may access for the lifetime of the mapping, for zero-copy I/O
    /// (`ReadVolatile`/`WriteVolatile` on files and sockets): the bounce slot when bouncing, the
    /// guest pages otherwise.
    pub fn slice(&self) -> VolatileSlice<'_> {
        let p = match &self.bounce {
            Some(b) => b.host,
            None => self.guest,
        };
        // SAFETY: `p` was validated for `len` bytes at map time and its memory is kept alive by
        // `self.dma` (guest memory; the Swiotlb whose pool holds our live slot) for at least the
        // borrow of `self`.
        unsafe { VolatileSlice::new(p.as_ptr(), self.len) }
    }

    fn guest_slice(&self) -> VolatileSlice<'_> {
        // SAFETY: as in `slice`: validated at map time, owned by `self.dma`.
        unsafe { VolatileSlice::new(self.guest.as_ptr(), self.len) }
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

    /// Hands the buffer to the CPU (Linux `dma_sync_single_for_cpu`): device writes become
    /// visible in guest memory. Syncing for the CPU twice in a row is a `DoubleSync` error.
    pub fn sync_for_cpu(&mut self) -> Result<(), DmaError> {
        if self.cpu_owns {
            return Err(self.double_sync("cpu"));
        }
        self.cpu_owns = true;
        if let (Some(b), Some(s)) = (&self.bounce, &self.dma().pools) {
            if self.dir.device_writes() {
                self.copy_out(b);
                add(&s.shard(self.src).bytes_to_guest, self.len as u64);
            }
            add(&s.shard(self.src).syncs_for_cpu, 1);
        }
        self.trace(TraceOp::SyncForCpu, Some((0, self.len)));
        Ok(())
    }

    /// Hands the buffer back to the device (Linux `dma_sync_single_for_device`): the guest's
    /// current data is copied in for to-device and bidirectional mappings.
    pub fn sync_for_device(&mut self) -> Result<(), DmaError> {
        if !self.cpu_owns {
            return Err(self.double_sync("device"));
        }
        self.cpu_owns = false;
        if let (Some(b), Some(s)) = (&self.bounce, &self.dma().pools) {
            if self.dir.device_reads() {
                // SAFETY: as in `slice`.
                let dst = unsafe { VolatileSlice::new(b.host.as_ptr(), self.len) };
                self.guest_slice().copy_to_volatile_slice(dst);
                add(&s.shard(self.src).bytes_to_pool, self.len as u64);
            }
            add(&s.shard(self.src).syncs_for_device, 1);
        }
        self.trace(TraceOp::SyncForDevice, Some((0, self.len)));
        Ok(())
    }

    /// Ends the mapping. Device writes are visible to the guest once this returns `Ok`.
    #[inline]
    pub fn unmap(self) -> Result<(), DmaError> {
        // Unmapped here, so not again on drop (the buffer owns nothing else to drop).
        std::mem::ManuallyDrop::new(self).do_unmap()
    }

    /// Runs exactly once per buffer: from `unmap` (which skips the drop) or from the drop.
    fn do_unmap(&mut self) -> Result<(), DmaError> {
        if let (Some(b), Some(s)) = (&self.bounce, &self.dma().pools) {
            // Linux `swiotlb_tbl_unmap_single`: copy back (unless the CPU already owns the
            // data), then release the slots of the pool found by address.
            let mut copied = 0;
            if self.dir.device_writes() && !self.cpu_owns {
                self.copy_out(b);
                copied = self.len as u64;
            }
            s.free_copied(self.src, b.addr, copied)?;
        }
        self.trace(TraceOp::Unmap, None);
        Ok(())
    }

    fn copy_out(&self, b: &Bounce) {
        // SAFETY: as in `slice`.
        let from = unsafe { VolatileSlice::new(b.host.as_ptr(), self.len) };
        from.copy_to_volatile_slice(self.guest_slice());
    }

    #[inline]
    fn trace(&self, op: TraceOp, range: Option<(usize, usize)>) {
        if self.trace_id != 0 {
            self.record(op, range);
        }
    }

    #[cold]
    fn record(&self, op: TraceOp, range: Option<(usize, usize)>) {
        if let Some(t) = self.dma().trace.load().as_ref() {
            let x = Extra {
                bounce: self.bounce_addr(),
                range,
                ..Default::default()
            };
            t.record(
                op,
                self.trace_id,
                self.src,
                self.addr.0,
                self.len,
                self.dir,
                x,
            );
        }
    }

    /// Makes device writes to `len` bytes at `offset` visible in guest memory (Linux
    /// `dma_sync_single_range_for_cpu`). Unlike [`DmaBuffer::sync_for_cpu`] it does not hand
    /// the whole buffer over: partial syncs of either kind may follow in any order.
    pub fn sync_range_for_cpu(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.check(offset, len)?;
        if let (Some(b), Some(s)) = (&self.bounce, &self.dma().pools) {
            if self.dir.device_writes() {
                // SAFETY: as in `slice`; `check` kept the range inside the buffer.
                let from = unsafe { VolatileSlice::new(b.host.as_ptr().add(offset), len) };
                // SAFETY: as in `guest_slice`, the same range.
                let to = unsafe { VolatileSlice::new(self.guest.as_ptr().add(offset), len) };
                from.copy_to_volatile_slice(to);
                add(&s.shard(self.src).bytes_to_guest, len as u64);
            }
            add(&s.shard(self.src).syncs_for_cpu, 1);
        }
        self.trace(TraceOp::SyncForCpu, Some((offset, len)));
        Ok(())
    }

    /// Copies the guest's `len` bytes at `offset` into the bounce buffer (Linux
    /// `dma_sync_single_range_for_device`); see [`DmaBuffer::sync_range_for_cpu`].
    pub fn sync_range_for_device(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.check(offset, len)?;
        if let (Some(b), Some(s)) = (&self.bounce, &self.dma().pools) {
            if self.dir.device_reads() {
                // SAFETY: as in `slice`; `check` kept the range inside the buffer.
                let to = unsafe { VolatileSlice::new(b.host.as_ptr().add(offset), len) };
                // SAFETY: as in `guest_slice`, the same range.
                let from = unsafe { VolatileSlice::new(self.guest.as_ptr().add(offset), len) };
                from.copy_to_volatile_slice(to);
                add(&s.shard(self.src).bytes_to_pool, len as u64);
            }
            add(&s.shard(self.src).syncs_for_device, 1);
        }
        self.trace(TraceOp::SyncForDevice, Some((offset, len)));
        Ok(())
    }

    fn double_sync(&self, owner: &'static str) -> DmaError {
        let e = DmaError::DoubleSync {
            addr: self.addr.0,
            owner,
        };
        if let Some(s) = &self.dma().pools {
            s.count_failure(&e);
        }
        e
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

impl Drop for DmaBuffer<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmap() {
            log::error!(
                "DMA unmap of guest {:#x}+{:#x} on drop: {e}",
                self.addr.0,
                self.len
            );
        }
    }
}

#[cfg(test)]
mod tests;
