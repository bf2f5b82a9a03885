//! virtio-net TX and RX over a socketpair standing in for the tap (one frame per read/write).
//!
//! Beyond the common checks: every frame delivered says in its header how many buffers it
//! took (`num_buffers`), 1 without VIRTIO_NET_F_MRG_RXBUF, and with it exactly the used
//! entries that follow it, each with bytes in it ([`check_num_buffers`]).

use std::fs::File;
use std::io::{Read, Write};

use arbitrary::{Arbitrary, Unstructured};
use bounce::{Dma, DmaQueue, DmaSource};
use devices::virtio::net::{Net, NetConfig, Tap, MAX_FRAME_LEN, VIRTIO_NET_F_MRG_RXBUF};
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
    devices::virtio::seqpacket_pair().expect("socketpair")
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
    let mut mergeable = false;
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
                Action::Features(f) => {
                    net.ack_features(*f);
                    mergeable = f & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
                }
                Action::Reset => {
                    mergeable = false;
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
        check_num_buffers(&after, &layouts, &used[0].1, mergeable);
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

/// The RX frames of a round (`used`: the RX ring's new entries, in order) carry the right
/// `num_buffers`: a frame starts at an entry with bytes in it; its header (the first 12 bytes
/// of its chain) says how many entries it spans, 1 without `mergeable`, and those entries all
/// have bytes in them. Skipped (hostile layouts) when the writable buffers of the round's
/// chains overlap each other or a ring, or a frame's first chain holds less than a header.
pub fn check_num_buffers(
    after: &[u8],
    layouts: &[Layout; 2],
    used: &[(u32, u32)],
    mergeable: bool,
) {
    let rx = &layouts[0];
    let chains: Vec<Vec<(u64, u32, bool)>> = used
        .iter()
        .map(|&(head, _)| walk_chain(after, rx, head as u16))
        .collect();
    let mut ranges: Vec<(u64, u64)> = chains
        .iter()
        .flatten()
        .filter(|d| d.2)
        .map(|&(a, n, _)| (a, a.saturating_add(u64::from(n))))
        .collect();
    for l in layouts {
        ranges.push((l.desc, l.used_range().1));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
        return;
    }
    let mut i = 0;
    while i < used.len() {
        let len = used[i].1;
        if len == 0 {
            i += 1;
            continue;
        }
        let mut header = Vec::new();
        for &(a, n, _) in &chains[i] {
            let take = (n as usize).min(12 - header.len());
            let Some(b) = usize::try_from(a)
                .ok()
                .and_then(|a| after.get(a..a.checked_add(take)?))
            else {
                return;
            };
            header.extend_from_slice(b);
            if header.len() == 12 {
                break;
            }
        }
        if header.len() < 12 || len < 12 {
            return;
        }
        let nb = usize::from(u16::from_le_bytes([header[10], header[11]]));
        if !mergeable {
            assert_eq!(nb, 1, "num_buffers without MRG_RXBUF");
        }
        assert!(
            nb >= 1 && i + nb <= used.len(),
            "num_buffers {nb} at used entry {i} of {}",
            used.len()
        );
        assert!(
            used[i + 1..i + nb].iter().all(|&(_, l)| l > 0),
            "a frame's later buffers are empty: {:?}",
            &used[i..i + nb]
        );
        i += nb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn chain(len: u16) -> ChainSpec {
        ChainSpec {
            descs: vec![DescSpec {
                len,
                writable: true,
                content: Content::Bytes(Vec::new()),
                at: None,
            }],
            indirect: false,
        }
    }

    /// Three RX chains of 1000 bytes the device used for one 2500-byte frame whose header says
    /// `nb` buffers; the check's verdict.
    fn check(nb: u16, mergeable: bool) {
        let mem = guest_mem();
        let layouts = [Layout::slot(0, QSIZE), Layout::slot(1, QSIZE)];
        let mut rx = Ring::new(&mem, layouts[0]);
        let mut cursor = DATA_BASE;
        for _ in 0..3 {
            rx.add_chain(&mem, &chain(1000), &mut cursor);
        }
        let first = walk_chain(&snapshot(&mem), &layouts[0], 0)[0].0;
        mem.write_obj(nb, GuestAddress(first + 10)).unwrap();
        let used = [(0, 1000), (1, 1000), (2, 500)];
        check_num_buffers(&snapshot(&mem), &layouts, &used, mergeable);
    }

    #[test]
    fn the_right_num_buffers_passes() {
        check(3, true);
    }

    #[test]
    #[should_panic(expected = "a frame's later buffers are empty")]
    fn too_few_buffers_for_the_used_entries_are_caught() {
        // 2 buffers, then the third entry read as a frame of its own: its header is not there.
        let mem = guest_mem();
        let layouts = [Layout::slot(0, QSIZE), Layout::slot(1, QSIZE)];
        let mut rx = Ring::new(&mem, layouts[0]);
        let mut cursor = DATA_BASE;
        for _ in 0..2 {
            rx.add_chain(&mem, &chain(1000), &mut cursor);
        }
        let first = walk_chain(&snapshot(&mem), &layouts[0], 0)[0].0;
        mem.write_obj(2u16, GuestAddress(first + 10)).unwrap();
        check_num_buffers(&snapshot(&mem), &layouts, &[(0, 1000), (1, 0)], true);
    }

    #[test]
    #[should_panic(expected = "num_buffers 4 at used entry 0 of 3")]
    fn more_buffers_than_used_entries_are_caught() {
        check(4, true);
    }

    #[test]
    #[should_panic(expected = "num_buffers without MRG_RXBUF")]
    fn num_buffers_other_than_1_without_mrg_rxbuf_is_caught() {
        check(3, false);
    }

    /// A frame larger than one buffer through the device with MRG_RXBUF negotiated: it passes
    /// every check (a device writing a wrong `num_buffers` fails this test). The frame's own
    /// header says 0xeeee buffers: the device must overwrite it.
    #[test]
    fn a_frame_over_several_buffers_through_the_device() {
        for bounced in [false, true] {
            let rx = (0..4).map(|_| chain(1000)).collect();
            let input = Input {
                bounced,
                rounds: vec![vec![
                    Action::Features(1 << VIRTIO_NET_F_MRG_RXBUF),
                    Action::Rx(rx),
                    Action::Frame(vec![0xee; 2500]),
                    Action::Frame(vec![0xee; 900]),
                    Action::Backend,
                ]],
            };
            let logs = exec(&input, 0);
            let lens: Vec<u32> = logs[0].entries.iter().map(|e| e.0).collect();
            assert_eq!(lens, vec![1000, 1000, 500, 900], "bounced {bounced}");
        }
    }
}
