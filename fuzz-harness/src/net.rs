//! virtio-net TX and RX over a socketpair standing in for the tap (one frame per read/write),
//! with one queue pair or two (one socketpair each, and a control queue: hostile command chains,
//! well-formed VQ_PAIRS_SET).
//!
//! Beyond the common checks: every frame delivered says in its header how many buffers it
//! took (`num_buffers`), 1 without VIRTIO_NET_F_MRG_RXBUF, and with it exactly the used
//! entries that follow it, each with bytes in it ([`check_num_buffers`]).

use std::fs::File;
use std::io::{Read, Write};

use arbitrary::{Arbitrary, Unstructured};
use bounce::{Dma, DmaQueue, DmaSource};
use devices::virtio::net::ctrl::{VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET};
use devices::virtio::net::{Net, NetConfig, Tap, MAX_FRAME_LEN, VIRTIO_NET_F_MRG_RXBUF};
use devices::virtio::{Interrupt, QueueState, VirtioDevice};
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
    /// The features the driver accepted (which TX header offloads it may ask for; with two
    /// pairs, MQ and CTRL_VQ).
    Features(u64),
    Reset,
    /// Chains on the control queue (a device with two pairs only).
    Ctrl(Vec<ChainSpec>),
    KickCtrl,
    /// A well-formed VQ_PAIRS_SET with this many pairs on the control queue.
    PairsSet(u16),
    /// The pair the following Rx, Tx, Poke, Frame, KickRx, KickTx and Backend act on (pair 1:
    /// a device with two pairs only).
    Pair(bool),
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub bounced: bool,
    /// Two queue pairs (MQ and CTRL_VQ offered, a control queue) instead of one.
    pub mq: bool,
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

/// Ring slots: RX0, TX0 (and with two pairs RX1, TX1, control).
fn ring_count(mq: bool) -> usize {
    if mq {
        5
    } else {
        2
    }
}

pub fn exec(input: &Input, fill: u8) -> Vec<RoundLog> {
    let mem = guest_mem();
    let dma = if input.bounced {
        Dma::bounced_from_str(mem.clone(), "size=512K,areas=1").expect("pools")
    } else {
        Dma::direct(mem.clone())
    };
    let pairs = if input.mq { 2 } else { 1 };
    let (taps, mut peers): (Vec<_>, Vec<_>) = (0..pairs)
        .map(|_| {
            let (a, peer) = socketpair();
            (Tap::from_file(a), peer)
        })
        .unzip();
    let cfg = NetConfig {
        queue_size: QSIZE,
        ..Default::default()
    };
    let mut net = Net::with_taps(taps, cfg).expect("net device");
    let layouts: Vec<Layout> = (0..ring_count(input.mq))
        .map(|i| Layout::slot(i as u64, QSIZE))
        .collect();
    let ctrl = 2 * pairs;
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("irqfd");
    let activate = |net: &mut Net| -> Vec<Ring> {
        let rings = layouts.iter().map(|&l| Ring::new(&mem, l)).collect();
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
    let mut pair = 0usize;
    for round in input.rounds.iter().take(32) {
        let mut steps: Vec<(usize, &Action)> = Vec::new();
        for a in round.iter().take(64) {
            match a {
                Action::Rx(cs) | Action::Tx(cs) => {
                    let i = 2 * pair + usize::from(matches!(a, Action::Tx(_)));
                    for c in cs.iter().take(usize::from(QSIZE)) {
                        rings[i].add_chain(&mem, c, &mut cursor);
                    }
                }
                Action::Ctrl(cs) if input.mq => {
                    for c in cs.iter().take(usize::from(QSIZE)) {
                        rings[ctrl].add_chain(&mem, c, &mut cursor);
                    }
                }
                Action::PairsSet(n) if input.mq => {
                    let c = ChainSpec {
                        descs: vec![
                            DescSpec {
                                len: 2,
                                writable: false,
                                content: Content::Bytes(vec![
                                    VIRTIO_NET_CTRL_MQ,
                                    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                                ]),
                                at: None,
                            },
                            DescSpec {
                                len: 2,
                                writable: false,
                                content: Content::Bytes(n.to_le_bytes().to_vec()),
                                at: None,
                            },
                            DescSpec {
                                len: 1,
                                writable: true,
                                content: Content::Bytes(Vec::new()),
                                at: None,
                            },
                        ],
                        indirect: false,
                    };
                    rings[ctrl].add_chain(&mem, &c, &mut cursor);
                }
                Action::Ctrl(_) | Action::PairsSet(_) => {}
                Action::Pair(p) => pair = usize::from(*p && input.mq),
                Action::Poke { tx, poke } => rings[2 * pair + usize::from(*tx)].poke(&mem, poke),
                Action::Frame(f) => {
                    let _ = peers[pair].write(&f[..f.len().min(MAX_FRAME_LEN + 64)]);
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
                Action::KickCtrl if !input.mq => {}
                Action::KickRx | Action::KickTx | Action::Backend | Action::KickCtrl => {
                    steps.push((pair, a))
                }
            }
        }
        fill_writable(&mem, &layouts, fill);
        let before = snapshot(&mem);
        for (p, s) in steps {
            // Device errors are legitimate answers to a hostile ring (NEEDS_RESET).
            let _ = match s {
                Action::KickRx => net.process_queue(2 * p).map(|_| ()),
                Action::KickTx => net.process_queue(2 * p + 1).map(|_| ()),
                // The control queue serves a few commands per pass; the transport comes
                // back for the rest (`MoreWork`) without a notification.
                Action::KickCtrl => (0..usize::from(QSIZE))
                    .map(|_| net.process_queue(ctrl))
                    .find(|r| !matches!(r, Ok(QueueState::MoreWork)))
                    .unwrap_or(Ok(QueueState::MoreWork))
                    .map(|_| ()),
                _ => net.process_backend_at(p, EventSet::IN),
            };
        }
        let after = snapshot(&mem);
        let used = layouts
            .iter()
            .zip(rings.iter_mut())
            .map(|(l, r)| (*l, r.new_used(&before, &mem)))
            .collect::<Vec<_>>();
        for p in 0..pairs {
            // TX chains are only read: their used length is 0.
            assert!(
                used[2 * p + 1].1.iter().all(|&(_, len)| len == 0),
                "TX used length"
            );
            check_num_buffers(&after, &layouts[2 * p], &layouts, &used[2 * p].1, mergeable);
        }
        if input.mq {
            // A control command is answered with its ack byte, or not at all.
            assert!(
                used[ctrl].1.iter().all(|&(_, len)| len <= 1),
                "control used length: {:?}",
                used[ctrl].1
            );
        }
        assert!(net.active_pairs() >= 1 && net.active_pairs() <= pairs);
        logs.push(check_round(&before, &after, &layouts, &used));
        // What reached the "tap": whole frames, never larger than the device's buffer.
        for peer in &mut peers {
            while let Ok(n) = peer.read(&mut buf) {
                assert!(n <= MAX_FRAME_LEN, "a {n}-byte frame reached the tap");
            }
        }
        assert_eq!(
            slots_used(&dma),
            0,
            "bounce slots left mapped after a round"
        );
    }
    logs
}

/// The RX frames of a round (`used`: the new entries of ring `rx`, in order) carry the right
/// `num_buffers`: a frame starts at an entry with bytes in it; its header (the first 12 bytes
/// of its chain) says how many entries it spans, 1 without `mergeable`, and those entries all
/// have bytes in them. Skipped (hostile layouts) when the writable buffers of the round's
/// chains overlap each other or a ring (of `layouts`, every ring of the device), or a frame's
/// first chain holds less than a header.
pub fn check_num_buffers(
    after: &[u8],
    rx: &Layout,
    layouts: &[Layout],
    used: &[(u32, u32)],
    mergeable: bool,
) {
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
        check_num_buffers(&snapshot(&mem), &layouts[0], &layouts, &used, mergeable);
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
        check_num_buffers(
            &snapshot(&mem),
            &layouts[0],
            &layouts,
            &[(0, 1000), (1, 0)],
            true,
        );
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
                mq: false,
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

    /// Two pairs: MQ negotiated, VQ_PAIRS_SET 2, then a frame on tap queue 1 lands in pair 1's
    /// RX ring and a TX chain on pair 1 reaches tap queue 1; hostile control chains and
    /// out-of-range VQ_PAIRS_SET around it pass every check (bounced: nothing left mapped).
    #[test]
    fn two_pairs_and_the_control_queue_through_the_device() {
        let mq = (1u64 << 22) | (1 << 17) | (1 << VIRTIO_NET_F_MRG_RXBUF);
        let desc = |len: u16, writable: bool, bytes: Vec<u8>| DescSpec {
            len,
            writable,
            content: Content::Bytes(bytes),
            at: None,
        };
        let hostile = vec![
            // Short header; readable after writable; no ack.
            ChainSpec {
                descs: vec![desc(1, false, vec![4]), desc(1, true, vec![])],
                indirect: false,
            },
            ChainSpec {
                descs: vec![desc(1, true, vec![]), desc(4, false, vec![4, 0, 2, 0])],
                indirect: false,
            },
            ChainSpec {
                descs: vec![desc(4, false, vec![4, 0, 2, 0])],
                indirect: false,
            },
        ];
        for bounced in [false, true] {
            let input = Input {
                bounced,
                mq: true,
                rounds: vec![
                    vec![
                        Action::Features(mq),
                        Action::Ctrl(hostile.clone()),
                        Action::PairsSet(0),
                        Action::PairsSet(3),
                        Action::PairsSet(2),
                        Action::KickCtrl,
                    ],
                    vec![
                        Action::Pair(true),
                        Action::Rx(vec![chain(1000)]),
                        Action::Frame(vec![0xee; 600]),
                        Action::Backend,
                        Action::Tx(vec![ChainSpec {
                            descs: vec![desc(112, false, vec![0; 112])],
                            indirect: false,
                        }]),
                        Action::KickTx,
                    ],
                ],
            };
            let logs = exec(&input, 0);
            let lens: Vec<u32> = logs[0].entries.iter().map(|e| e.0).collect();
            // Hostile: ERR, unanswered, unanswered; then ERR, ERR, OK.
            assert_eq!(lens, vec![1, 0, 0, 1, 1, 1], "bounced {bounced}");
            let lens: Vec<u32> = logs[1].entries.iter().map(|e| e.0).collect();
            assert_eq!(lens, vec![600, 0], "bounced {bounced}: pair 1 RX then TX");
            compare_runs(&logs, &exec(&input, 0xff));
        }
    }
}
