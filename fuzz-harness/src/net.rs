//! virtio-net TX and RX over a socketpair standing in for the tap (one frame per read/write).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;

use arbitrary::{Arbitrary, Unstructured};
use bounce::{Dma, DmaQueue, DmaSource};
use devices::virtio::net::{Net, NetConfig, Tap, MAX_FRAME_LEN};
use devices::virtio::{Interrupt, VirtioDevice};
use event_manager::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::blk::program;
use crate::driver::*;

#[derive(Arbitrary, Debug)]
pub enum Action {
    Rx(Vec<ChainSpec>),
    Tx(Vec<ChainSpec>),
    Poke {
        tx: bool,
        poke: Poke,
    },
    /// A frame from the host side (header included).
    Frame(Vec<u8>),
    KickRx,
    KickTx,
    Backend,
    /// The features the driver accepted (which TX header offloads it may ask for).
    Features(u64),
    Reset,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub bounced: bool,
    pub rounds: Vec<Vec<Action>>,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let a = exec(&input, 0x00);
    let b = exec(&input, 0xff);
    compare_runs(&a, &b);
}

pub(crate) fn socketpair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: socketpair returned two fresh fds that nothing else owns.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

pub fn exec(input: &Input, fill: u8) -> Vec<RoundLog> {
    let mem = guest_mem();
    let dma = if input.bounced {
        Dma::bounced_from_str(mem.clone(), "size=512K,areas=1").expect("pools")
    } else {
        Dma::direct(mem.clone())
    };
    let (a, mut peer) = socketpair();
    let cfg = NetConfig {
        queue_size: QSIZE,
        ..Default::default()
    };
    let mut net = Net::new(Tap::from_file(a), cfg).expect("net device");
    let layouts = [Layout::slot(0, QSIZE), Layout::slot(1, QSIZE)];
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let activate = |net: &mut Net| -> [Ring; 2] {
        let rings = layouts.map(|l| Ring::new(&mem, l));
        let qs = layouts
            .iter()
            .map(|l| {
                let mut q = DmaQueue::new(QSIZE, dma.clone(), DmaSource::default()).expect("q");
                program(&mut q, l);
                q
            })
            .collect();
        let irq = Interrupt::new(irqfd.try_clone().expect("irqfd"));
        net.activate(qs, irq).expect("activate");
        rings
    };
    let mut rings = activate(&mut net);
    let mut cursor = DATA_BASE;
    let mut logs = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    for round in input.rounds.iter().take(32) {
        let mut steps: Vec<&Action> = Vec::new();
        for a in round.iter().take(64) {
            match a {
                Action::Rx(cs) | Action::Tx(cs) => {
                    let i = usize::from(matches!(a, Action::Tx(_)));
                    for c in cs.iter().take(usize::from(QSIZE)) {
                        rings[i].add_chain(&mem, c, &mut cursor);
                    }
                }
                Action::Poke { tx, poke } => rings[usize::from(*tx)].poke(&mem, poke),
                Action::Frame(f) => {
                    let _ = peer.write(&f[..f.len().min(MAX_FRAME_LEN + 64)]);
                }
                Action::Features(f) => net.ack_features(*f),
                Action::Reset => {
                    net.reset();
                    rings = activate(&mut net);
                }
                Action::KickRx | Action::KickTx | Action::Backend => steps.push(a),
            }
        }
        fill_writable(&mem, &layouts, fill);
        let before = snapshot(&mem);
        for s in steps {
            // Device errors are legitimate answers to a hostile ring (NEEDS_RESET).
            let _ = match s {
                Action::KickRx => net.process_queue(0).map(|_| ()),
                Action::KickTx => net.process_queue(1).map(|_| ()),
                _ => net.process_backend(EventSet::IN),
            };
        }
        let after = snapshot(&mem);
        let used = layouts
            .iter()
            .zip(rings.iter_mut())
            .map(|(l, r)| (*l, r.new_used(&before, &mem)))
            .collect::<Vec<_>>();
        // TX chains are only read: their used length is 0.
        assert!(used[1].1.iter().all(|&(_, len)| len == 0), "TX used length");
        logs.push(check_round(&before, &after, &layouts, &used));
        // What reached the "tap": whole frames, never larger than the device's buffer.
        while let Ok(n) = peer.read(&mut buf) {
            assert!(n <= MAX_FRAME_LEN, "a {n}-byte frame reached the tap");
        }
        assert_eq!(
            slots_used(&dma),
            0,
            "bounce slots left mapped after a round"
        );
    }
    logs
}
