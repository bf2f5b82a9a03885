//! A mock driver for device tests: guest memory created by the test, a `MockSplitQueue` laid
//! out at guest address 0, chains built from `(addr, len, writable)` triples.

use std::sync::Arc;

use bounce::{Dma, DmaQueue, DmaSource};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Interrupt;

pub const MEM_SIZE: usize = 0x40_0000;

pub fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub fn test_interrupt() -> (Arc<Interrupt>, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    (Interrupt::new(evt.try_clone().unwrap()), evt)
}

pub struct TestQueue<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    size: u16,
}

impl<'a> TestQueue<'a> {
    /// A queue at guest address `0` (several queues: use [`TestQueue::at`]).
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, 0, size)
    }

    pub fn at(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        TestQueue {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(base), size),
            next_desc: 0,
            size,
        }
    }

    /// Adds a chain; returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i + 1 == descs.len();
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = (head + i as u16 + 1) % self.size;
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next_desc = (head + descs.len() as u16) % self.size;
        head
    }

    /// Overwrites descriptor `index` (to build loops and other broken chains).
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = SplitDescriptor::new(addr, len, flags, next);
        self.vq
            .desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }

    /// A ready queue over the mock rings, through a direct `Dma`.
    pub fn dma_queue(&self) -> DmaQueue {
        self.dma_queue_with(Dma::direct(self.mem.clone()))
    }

    pub fn dma_queue_with(&self, dma: Dma) -> DmaQueue {
        let queue: Queue = self.vq.create_queue().unwrap();
        let mut q = DmaQueue::new(self.size, dma, DmaSource::default()).unwrap();
        *q.queue_mut() = queue;
        q
    }

    /// The used ring: `(head, len)` entries.
    pub fn used(&self) -> Vec<(u32, u32)> {
        let idx = self.vq.used().idx().load();
        (0..idx)
            .map(|i| {
                let e = self
                    .vq
                    .used()
                    .ring()
                    .ref_at((i % self.size) as usize)
                    .unwrap()
                    .load();
                (e.id(), e.len())
            })
            .collect()
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}
