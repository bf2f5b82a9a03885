//! virtio-rng / entropy device (virtio 1.2 §5.4): fills the driver's writable buffers from the
//! host kernel's CSPRNG (`getrandom(2)`).

use std::io;
use std::sync::Arc;

use bounce::{Chain, DmaQueue};

use super::{
    drain_queue, ActivateError, DeviceError, Interrupt, QueueState, VirtioDevice, QUEUE_BUDGET,
    TYPE_RNG,
};

/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many bytes are produced for one chain (bounds the work a single request can
/// make the event loop do).
pub const MAX_BYTES_PER_CHAIN: usize = 64 << 10;
const CHUNK: usize = 4096;

/// virtio-rng device.
#[derive(Default)]
pub struct Rng {
    queue: Option<DmaQueue>,
    interrupt: Option<Arc<Interrupt>>,
}

impl Rng {
    pub fn new() -> Self {
        Rng::default()
    }
}

/// Fills `buf` with random bytes from the kernel.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += r as usize;
        }
    }
    Ok(())
}

/// Fills the chain's writable descriptors; returns the bytes written. Driver-readable
/// descriptors are skipped, with one (rate-limited) line per chain however many there are.
fn fill_chain(q: &DmaQueue, chain: &Chain) -> u32 {
    let mut chunk = [0u8; CHUNK];
    let mut total = 0usize;
    let mut skipped = 0usize;
    for d in &chain.descs {
        if !d.writable {
            skipped += 1;
            continue;
        }
        let mut b = match q.map(d) {
            Ok(b) => b,
            Err(e) => {
                crate::warn_limited!("virtio-rng: chain {}: {e}", chain.head);
                break;
            }
        };
        let want = b.len().min(MAX_BYTES_PER_CHAIN - total);
        let mut off = 0;
        while off < want {
            let n = (want - off).min(CHUNK);
            let part = &mut chunk[..n];
            if let Err(e) = fill_random(part) {
                crate::error_limited!("virtio-rng: getrandom: {e}");
                break;
            }
            if let Err(e) = b.write_at(off, part) {
                crate::warn_limited!("virtio-rng: chain {}: {e}", chain.head);
                break;
            }
            off += n;
        }
        if let Err(e) = b.unmap() {
            crate::warn_limited!("virtio-rng: chain {}: unmap: {e}", chain.head);
            break;
        }
        total += off;
        if off < want || total >= MAX_BYTES_PER_CHAIN {
            break;
        }
    }
    if skipped > 0 {
        crate::warn_limited!(
            "virtio-rng: chain {}: {skipped} driver-readable descriptors skipped",
            chain.head
        );
    }
    total as u32
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        queues: Vec<DmaQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.queue.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let Ok([q]) = <[DmaQueue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        if !virtio_queue::QueueT::ready(q.queue()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.queue = Some(q);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError> {
        let (Some(q), Some(irq), 0) = (self.queue.as_mut(), self.interrupt.as_ref(), index) else {
            return Err(DeviceError::NoSuchQueue(index));
        };
        drain_queue(q, irq, QUEUE_BUDGET, fill_chain)
    }

    fn reset(&mut self) {
        self.queue = None;
        self.interrupt = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::*;

    #[test]
    fn fills_writable_buffers() {
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem, 16);
        t.add_chain(&[(0x10_0000, 64, true), (0x10_1000, 4096, true)]);
        t.add_chain(&[(0x20_0000, 16, false)]);
        let mut rng = Rng::new();
        let (irq, _irqfd) = test_interrupt();
        rng.activate(vec![t.dma_queue()], irq).unwrap();
        rng.process_queue(0).unwrap();
        assert_eq!(t.used(), vec![(0, 64 + 4096), (2, 0)]);
        let bytes = t.read(0x10_1000, 4096);
        assert!(bytes.iter().any(|&b| b != 0));
    }

    #[test]
    fn caps_bytes_per_chain_and_survives_bad_addresses() {
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem, 16);
        t.add_chain(&[(0x10_0000, 0x2_0000, true)]);
        t.add_chain(&[(u64::MAX - 8, 64, true)]);
        t.add_chain(&[(0x10_0000, 0, true)]);
        let mut rng = Rng::new();
        let (irq, _irqfd) = test_interrupt();
        rng.activate(vec![t.dma_queue()], irq).unwrap();
        rng.process_queue(0).unwrap();
        let used = t.used();
        assert_eq!(used[0], (0, MAX_BYTES_PER_CHAIN as u32));
        assert_eq!(used[1].1, 0);
        assert_eq!(used[2].1, 0);
        assert!(rng.process_queue(1).is_err());
    }

    #[test]
    fn readable_descriptors_cannot_flood_the_log() {
        use crate::log_limit::testing::{capture, freeze_clock};
        use crate::log_limit::LINES_PER_INTERVAL;
        const INDIRECT: u16 = 4;
        const NEXT: u16 = 1;
        const TABLE: u64 = 0x10_0000;
        // The largest indirect table a chain can have: 65,535 driver-readable descriptors.
        let n = u16::MAX;
        let mut table = Vec::with_capacity(usize::from(n) * 16);
        for i in 0..n {
            table.extend_from_slice(&0x30_0000u64.to_le_bytes());
            table.extend_from_slice(&8u32.to_le_bytes());
            let flags = if i + 1 < n { NEXT } else { 0 };
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&i.wrapping_add(1).to_le_bytes());
        }
        let mem = guest_mem();
        let mut t = TestQueue::new(&mem, 32);
        t.write(TABLE, &table);
        let chains = 20;
        for _ in 0..chains {
            let head = t.add_chain(&[(TABLE, table.len() as u32, false)]);
            t.set_desc(head, TABLE, table.len() as u32, INDIRECT, 0);
        }
        let mut rng = Rng::new();
        let (irq, _irqfd) = test_interrupt();
        rng.activate(vec![t.dma_queue()], irq).unwrap();
        freeze_clock();
        let lines = capture(|| {
            rng.process_queue(0).unwrap();
        });
        assert_eq!(t.used().len(), chains);
        assert!(t.used().iter().all(|&(_, len)| len == 0));
        // Unlimited, this was 20 x 65,535 lines; even one per chain would be 20.
        assert!(lines.len() <= LINES_PER_INTERVAL as usize, "{lines:?}");
        assert!(lines[0]
            .1
            .contains("65535 driver-readable descriptors skipped"));
    }
}
