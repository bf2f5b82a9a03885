//! A mock driver for device tests: guest memory created by the test, a split virtqueue laid out
//! in it (at guest address 0 unless asked otherwise), chains built from `(addr, len, writable)`
//! triples.

use std::sync::Arc;

use bounce::{Dma, DmaQueue, DmaSource};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
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

/// A split virtqueue laid out in test memory (descriptor table, then the available ring, then
/// the used ring, each where virtio 1.2 §2.7 says), driven as a driver would.
///
/// (virtio-queue's `MockSplitQueue` places the used ring `size` bytes after the start of the
/// available ring, not after its end, so from 6 chains outstanding the device's used-ring
/// writes land on available entries.)
pub struct TestQueue<'a> {
    pub mem: &'a GuestMemoryMmap,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    size: u16,
}

impl<'a> TestQueue<'a> {
    /// A queue at guest address `0` (several queues: use [`TestQueue::at`]).
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, 0, size)
    }

    pub fn at(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base + 16 * n;
        // flags, idx, ring[size], used_event; the used ring is 4-byte aligned.
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let t = TestQueue {
            mem,
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            next_desc: 0,
            size,
        };
        // Zeroed rings: the test memory may have been used by another queue.
        let end = used + 6 + 8 * n;
        t.write(base, &vec![0u8; (end - base) as usize]);
        t
    }

    pub fn desc_addr(&self) -> GuestAddress {
        self.desc
    }

    pub fn avail_addr(&self) -> GuestAddress {
        self.avail
    }

    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }

    /// Adds a chain (descriptors taken round-robin from the table) and publishes it in the
    /// available ring, as a driver does, for as long as the test likes: ring positions and the
    /// index wrap. Returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            self.set_desc(index, addr, len, flags, next);
        }
        let idx = self.avail_idx();
        let slot = self.avail.unchecked_add(4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(head, slot).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
        self.next_desc = (head + descs.len() as u16) % self.size;
        head
    }

    /// The available ring's index (how many chains the driver published, modulo 2^16).
    pub fn avail_idx(&self) -> u16 {
        self.mem.read_obj(self.avail.unchecked_add(2)).unwrap()
    }

    /// Sets the available ring's index (a driver bug or attack: publish what is not there).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Overwrites descriptor `index` (to build loops and other broken chains).
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc.unchecked_add(16 * u64::from(index));
        self.mem.write_obj(addr, d).unwrap();
        self.mem.write_obj(len, d.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, d.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, d.unchecked_add(14)).unwrap();
    }

    /// A ready queue over these rings, through a direct `Dma`.
    pub fn dma_queue(&self) -> DmaQueue {
        self.dma_queue_with(Dma::direct(self.mem.clone()))
    }

    pub fn dma_queue_with(&self, dma: Dma) -> DmaQueue {
        let mut q = DmaQueue::new(self.size, dma, DmaSource::default()).unwrap();
        let qm = q.queue_mut();
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        qm.set_size(self.size);
        let (lo, hi) = split(self.desc);
        qm.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        qm.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        qm.set_used_ring_address(lo, hi);
        qm.set_ready(true);
        q.validate().unwrap();
        q
    }

    /// The used ring's index: how many chains the device returned (modulo 2^16).
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used.unchecked_add(2)).unwrap()
    }

    /// The used ring's `(head, len)` entries, oldest first (the last `size` of them at most).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let n = idx.min(self.size);
        (idx - n..idx)
            .map(|i| {
                let e = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
                let id: u32 = self.mem.read_obj(e).unwrap();
                let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
                (id, len)
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
