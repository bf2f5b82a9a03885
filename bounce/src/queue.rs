//! Virtqueues for devices that must not touch guest memory themselves.
//!
//! Rings and descriptor tables are coherent DMA memory (in a confidential guest they live in
//! shared memory) and are read in place here; the buffers descriptors point at are streaming DMA
//! and reach the device only through [`Dma::map`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

use crate::dma::{Dma, DmaBuffer};
use crate::error::DmaError;
use crate::owned::OwnedDmaBuffer;
use crate::pool::MapAttrs;
use crate::types::{DmaDirection, DmaSource};

/// One descriptor of a chain, as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

impl Desc {
    /// The buffer as consecutive pieces of at most `max` bytes, for buffers longer than the
    /// longest mapping the pools allow ([`DmaQueue::max_mapping_len`]). A zero-length buffer
    /// is one zero-length piece, so that mapping it still fails.
    pub fn pieces(&self, max: u32) -> impl Iterator<Item = Desc> + '_ {
        let max = max.max(1);
        (0..self.len.div_ceil(max).max(1)).map(move |i| {
            let off = i * max;
            Desc {
                // Cannot overflow: `Dma::map` rejects ranges that wrap or leave guest memory.
                addr: GuestAddress(self.addr.0.wrapping_add(u64::from(off))),
                len: (self.len - off).min(max),
                writable: self.writable,
            }
        })
    }
}

/// The DMA direction a descriptor's flags allow.
fn dir_of(desc: &Desc) -> DmaDirection {
    if desc.writable {
        DmaDirection::FromDevice
    } else {
        DmaDirection::ToDevice
    }
}

/// A descriptor chain popped from the available ring. Holds no reference to guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("virtqueue: {0}")]
    Virtio(#[from] virtio_queue::Error),
    /// The chain ends in a descriptor that still says "next": a loop, a chain longer than the
    /// queue, a next index out of range, a descriptor outside guest memory, or lengths
    /// overflowing 4 GiB (virtio-queue stops walking at all of them).
    #[error("malformed descriptor chain at head {head}")]
    MalformedChain { head: u16 },
    #[error("queue rings are not inside guest memory")]
    InvalidRings,
}

/// Monotonic counters of one virtqueue, shared with whoever reports them (the VMM's metrics).
/// Their writers are serialised (the queue is `&mut` to its device, which the transport's lock
/// holds), so an update is a plain load and store ([`QueueCounters::add`]): no locked
/// instruction on the request path; readers see each counter move forward. They outlive the
/// [`DmaQueue`]s of successive activations, so a driver reset does not set them back.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Notifications the transport served (guest kicks, and its own re-kicks past the budget).
    pub notifications: AtomicU64,
    /// Well-formed chains popped (requests).
    pub chains: AtomicU64,
    /// Malformed chains returned unused.
    pub malformed: AtomicU64,
    /// Bytes of the driver's device-readable descriptors (e.g. a block write's header + data).
    pub bytes_from_driver: AtomicU64,
    /// Used lengths returned (bytes the device wrote into the driver's buffers).
    pub bytes_to_driver: AtomicU64,
    /// Requests the device answered with an error status (counted by the device).
    pub errors: AtomicU64,
}

/// [`QueueCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCountersSnapshot {
    pub notifications: u64,
    pub chains: u64,
    pub malformed: u64,
    pub bytes_from_driver: u64,
    pub bytes_to_driver: u64,
    pub errors: u64,
}

impl QueueCounters {
    /// Adds `n` to `c`. Only for serialised writers (see the type's documentation): concurrent
    /// writers could lose updates, readers cannot see a torn or decreasing value.
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn snapshot(&self) -> QueueCountersSnapshot {
        QueueCountersSnapshot {
            notifications: self.notifications.load(Relaxed),
            chains: self.chains.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            bytes_from_driver: self.bytes_from_driver.load(Relaxed),
            bytes_to_driver: self.bytes_to_driver.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// A split virtqueue bound to a [`Dma`] handle.
pub struct DmaQueue {
    queue: Queue,
    dma: Dma,
    src: DmaSource,
    counters: Arc<QueueCounters>,
}

impl DmaQueue {
    pub fn new(max_size: u16, dma: Dma, src: DmaSource) -> Result<Self, QueueError> {
        Ok(DmaQueue {
            queue: Queue::new(max_size)?,
            dma,
            src,
            counters: Arc::default(),
        })
    }

    /// Counts into `counters` from now on (the transport keeps one set per queue index).
    pub fn set_counters(&mut self, counters: Arc<QueueCounters>) {
        self.counters = counters;
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// The device answered a request with an error status.
    pub fn count_error(&self) {
        QueueCounters::add(&self.counters.errors, 1);
    }

    /// The queue's registers, for the transport. Its memory-touching methods need a guest memory
    /// object, which only this type holds.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    pub fn dma(&self) -> &Dma {
        &self.dma
    }

    pub fn source(&self) -> DmaSource {
        self.src
    }

    /// Whether the configured rings lie inside guest memory (check before activating).
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.queue.is_valid(self.dma.guest_memory()) {
            Ok(())
        } else {
            Err(QueueError::InvalidRings)
        }
    }

    /// Pops the next available chain. `Ok(None)`: the ring is empty. A malformed chain is
    /// consumed (so it cannot stall the queue) and reported with its head, which the device must
    /// still return through [`DmaQueue::add_used`].
    pub fn pop(&mut self) -> Result<Option<Chain>, QueueError> {
        let mem = self.dma.guest_memory();
        let mut iter = self.queue.iter(mem)?;
        let Some(chain) = iter.next() else {
            return Ok(None);
        };
        let head = chain.head_index();
        let mut descs = Vec::new();
        let mut ends_cleanly = false;
        let mut readable = 0u64;
        for d in chain {
            ends_cleanly = !d.has_next();
            if !d.is_write_only() {
                readable += u64::from(d.len());
            }
            descs.push(Desc {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        if !ends_cleanly {
            QueueCounters::add(&self.counters.malformed, 1);
            return Err(QueueError::MalformedChain { head });
        }
        QueueCounters::add(&self.counters.chains, 1);
        QueueCounters::add(&self.counters.bytes_from_driver, readable);
        Ok(Some(Chain { head, descs }))
    }

    /// The longest buffer one [`DmaQueue::map`] can take: a bounce pool's segment (Linux's
    /// `swiotlb_max_mapping_size`), unlimited when mapping directly.
    pub fn max_mapping_len(&self) -> u32 {
        self.dma.swiotlb().map_or(u32::MAX, |s| {
            u32::try_from(s.max_mapping_size()).unwrap_or(u32::MAX)
        })
    }

    /// Maps one descriptor's buffer in the direction its flags allow.
    pub fn map(&self, desc: &Desc) -> Result<DmaBuffer<'_>, DmaError> {
        self.dma.map(self.src, desc.addr, desc.len, dir_of(desc))
    }

    /// [`DmaQueue::map`] as an [`OwnedDmaBuffer`] (kept across event-loop iterations), with the
    /// device's map attributes (e.g. `may_block`).
    pub fn map_owned(&self, desc: &Desc, attrs: MapAttrs) -> Result<OwnedDmaBuffer, DmaError> {
        OwnedDmaBuffer::map(
            &self.dma,
            self.src,
            desc.addr,
            desc.len,
            dir_of(desc),
            attrs,
        )
    }

    /// Returns a chain to the driver with `len` bytes written by the device.
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<(), QueueError> {
        self.queue.add_used(self.dma.guest_memory(), head, len)?;
        QueueCounters::add(&self.counters.bytes_to_driver, u64::from(len));
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was just used (event-idx aware).
    pub fn needs_notification(&mut self) -> Result<bool, QueueError> {
        Ok(self.queue.needs_notification(self.dma.guest_memory())?)
    }

    /// Re-enables driver notifications; `true` if chains arrived meanwhile.
    pub fn enable_notification(&mut self) -> Result<bool, QueueError> {
        Ok(self.queue.enable_notification(self.dma.guest_memory())?)
    }

    pub fn disable_notification(&mut self) -> Result<(), QueueError> {
        Ok(self.queue.disable_notification(self.dma.guest_memory())?)
    }

    /// Puts the last popped chain back (e.g. net RX had no packet for it).
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    fn setup(descs: &[SplitDescriptor]) -> DmaQueue {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        vq.add_desc_chains(&raw, 0).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        let mut q = DmaQueue::new(16, Dma::direct(mem.clone()), DmaSource::default()).unwrap();
        *q.queue_mut() = queue;
        q
    }

    #[test]
    fn pops_well_formed_chain() {
        let f = VRING_DESC_F_NEXT as u16;
        let w = VRING_DESC_F_WRITE as u16;
        let mut q = setup(&[
            SplitDescriptor::new(0x10000, 16, f, 1),
            SplitDescriptor::new(0x20000, 512, w, 0),
        ]);
        q.validate().unwrap();
        let c = q.pop().unwrap().unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.descs.len(), 2);
        assert!(!c.descs[0].writable && c.descs[1].writable);
        assert!(q.pop().unwrap().is_none());
        q.add_used(c.head, 512).unwrap();
        q.count_error();
        let n = q.counters().snapshot();
        assert_eq!(
            (n.chains, n.bytes_from_driver, n.bytes_to_driver, n.errors),
            (1, 16, 512, 1)
        );
    }

    #[test]
    fn pieces_cover_the_buffer_in_order() {
        let d = Desc {
            addr: GuestAddress(0x1000),
            len: 10,
            writable: true,
        };
        let p: Vec<(u64, u32)> = d.pieces(4).map(|p| (p.addr.0, p.len)).collect();
        assert_eq!(p, vec![(0x1000, 4), (0x1004, 4), (0x1008, 2)]);
        assert!(d.pieces(4).all(|p| p.writable));
        assert_eq!(d.pieces(u32::MAX).count(), 1);
        assert_eq!(d.pieces(0).count(), 10);
        let empty = Desc { len: 0, ..d };
        assert_eq!(empty.pieces(4).collect::<Vec<_>>(), vec![empty]);
    }

    #[test]
    fn detects_loop() {
        let f = VRING_DESC_F_NEXT as u16;
        let mut q = setup(&[
            SplitDescriptor::new(0x10000, 16, f, 1),
            SplitDescriptor::new(0x20000, 16, f, 0),
        ]);
        // MockSplitQueue links chains itself; rewrite descriptor 1 to point back at 0.
        let mem = q.dma().guest_memory().clone();
        let table = q.queue().desc_table();
        let looped = SplitDescriptor::new(0x20000, 16, f, 0);
        vm_memory::Bytes::write_obj(&mem, looped, GuestAddress(table + 16)).unwrap();
        assert!(matches!(
            q.pop(),
            Err(QueueError::MalformedChain { head: 0 })
        ));
        assert_eq!(q.counters().snapshot().malformed, 1);
    }
}
