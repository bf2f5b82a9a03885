//! virtio-blk request processing against a temporary image, direct or bounced.

use std::io::Write;

use arbitrary::{Arbitrary, Unstructured};
use bounce::{Dma, DmaQueue, DmaSource};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::{Interrupt, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use crate::driver::*;

#[derive(Arbitrary, Debug)]
pub enum Action {
    Chains(Vec<ChainSpec>),
    Poke(Poke),
    Reset,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub bounced: bool,
    pub readonly: bool,
    /// Image size in sectors (at most 256).
    pub sectors: u8,
    pub image: Vec<u8>,
    pub rounds: Vec<Vec<Action>>,
}

/// Runs `data` twice (writable buffers filled with 0x00, then 0xff) and compares.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let a = exec(&input, 0x00);
    let b = exec(&input, 0xff);
    compare_runs(&a, &b);
}

pub fn exec(input: &Input, fill: u8) -> Vec<RoundLog> {
    let mem = guest_mem();
    let img = TempFile::new().expect("temp image");
    let mut f = img.as_file().try_clone().expect("image fd");
    let size = u64::from(input.sectors) * 512;
    f.set_len(size).expect("image size");
    let n = input.image.len().min(size as usize);
    f.write_all(&input.image[..n]).expect("image content");
    let cfg = BlockConfig {
        readonly: input.readonly,
        queue_size: QSIZE,
        size_max: 64 << 10,
        ..Default::default()
    };
    let dma = if input.bounced {
        Dma::bounced_from_str(mem.clone(), "size=256K,segment=16,areas=1").expect("pools")
    } else {
        Dma::direct(mem.clone())
    };
    let mut blk = Block::new(f, cfg).expect("block device");
    let layout = Layout::slot(0, QSIZE);
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let activate = |blk: &mut Block| -> Ring {
        let ring = Ring::new(&mem, layout);
        let mut q = DmaQueue::new(QSIZE, dma.clone(), DmaSource::default()).expect("queue");
        program(&mut q, &layout);
        let irq = Interrupt::new(irqfd.try_clone().expect("irqfd"));
        blk.activate(vec![q], irq).expect("activate");
        ring
    };
    let mut ring = activate(&mut blk);
    let mut cursor = DATA_BASE;
    let mut logs = Vec::new();
    for round in input.rounds.iter().take(32) {
        for a in round.iter().take(64) {
            match a {
                Action::Chains(cs) => {
                    for c in cs.iter().take(usize::from(QSIZE)) {
                        ring.add_chain(&mem, c, &mut cursor);
                    }
                }
                Action::Poke(p) => ring.poke(&mem, p),
                Action::Reset => {
                    blk.reset();
                    ring = activate(&mut blk);
                }
            }
        }
        fill_writable(&mem, &[layout], fill);
        let before = snapshot(&mem);
        // A device error (the transport would set NEEDS_RESET) is a legitimate answer to a
        // hostile ring; the checks below still hold for whatever it did before it.
        let _ = blk.process_queue(0);
        let after = snapshot(&mem);
        let used = ring.new_used(&before, &mem);
        logs.push(check_round(&before, &after, &[layout], &[(layout, used)]));
        assert_eq!(
            slots_used(&dma),
            0,
            "bounce slots left mapped after a round"
        );
    }
    logs
}

/// Programs a ready queue at `l`, as the transport does at DRIVER_OK.
pub fn program(q: &mut DmaQueue, l: &Layout) {
    use virtio_queue::QueueT;
    let qm = q.queue_mut();
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    qm.set_size(l.size);
    let (lo, hi) = split(l.desc);
    qm.set_desc_table_address(lo, hi);
    let (lo, hi) = split(l.avail);
    qm.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(l.used);
    qm.set_used_ring_address(lo, hi);
    qm.set_ready(true);
}
