//! Multiqueue: MQ and CTRL_VQ offered only with several pairs, VQ_PAIRS_SET on the control
//! queue putting pairs in and out of use, and hostile control chains answered with an error
//! (or returned unanswered), never a panic, leaving nothing mapped.

use std::io::{Read, Write};

use super::*;
use crate::virtio::net::ctrl::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use bounce::Dma;

/// Ring addresses: pair `i`'s RX at `RINGS + 2i * 0x1000`, its TX next, the control queue last.
const RINGS: u64 = 0x38_0000;
const QSIZE: u16 = 16;
/// Where control commands and their acks are written.
const CMD: u64 = 0x20_0000;
const ACK: u64 = 0x20_1000;

struct MqRig<'a> {
    net: Net,
    /// RX0, TX0, RX1, TX1, ..., control.
    queues: Vec<TestQueue<'a>>,
    peers: Vec<std::fs::File>,
    _irqfd: vmm_sys_util::eventfd::EventFd,
}

/// A device of `pairs` pairs on fake taps, activated with `acked` features and every queue
/// ready except those in `not_ready`.
fn mq_rig<'a>(
    mem: &'a vm_memory::GuestMemoryMmap,
    pairs: usize,
    acked: u64,
    not_ready: &[usize],
    dma: Option<Dma>,
) -> MqRig<'a> {
    let (taps, peers): (Vec<_>, Vec<_>) = (0..pairs).map(|_| fake_tap()).unzip();
    let mut net = Net::with_taps(taps, NetConfig::default()).unwrap();
    let n = net.queue_max_sizes().len();
    assert_eq!(n, if pairs > 1 { 2 * pairs + 1 } else { 2 });
    let queues: Vec<_> = (0..n)
        .map(|i| TestQueue::at(mem, RINGS + 0x1000 * i as u64, QSIZE))
        .collect();
    let dma = dma.unwrap_or_else(|| Dma::direct(mem.clone()));
    let (irq, irqfd) = test_interrupt();
    net.ack_features(acked);
    let dqs = queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            if not_ready.contains(&i) {
                DmaQueue::new(QSIZE, dma.clone(), Default::default()).unwrap()
            } else {
                q.dma_queue_with(dma.clone())
            }
        })
        .collect();
    net.activate(dqs, irq).unwrap();
    MqRig {
        net,
        queues,
        peers,
        _irqfd: irqfd,
    }
}

fn mq_features() -> u64 {
    feature(VIRTIO_NET_F_MQ) | feature(VIRTIO_NET_F_CTRL_VQ) | feature(VIRTIO_NET_F_MRG_RXBUF)
}

/// Posts a control chain on queue `ctrl` of the rig (bytes from `descs`: `(data, writable)`,
/// each buffer 0x100 apart from `CMD`, writable ones from `ACK`), processes it and returns
/// its used length and the first ack byte.
fn command(r: &mut MqRig, ctrl: usize, descs: &[(&[u8], bool)]) -> (u32, u8) {
    let mut chain = Vec::new();
    let (mut rd, mut wr) = (CMD, ACK);
    for &(data, writable) in descs {
        let at = if writable { &mut wr } else { &mut rd };
        r.queues[ctrl].write(*at, data);
        chain.push((*at, data.len() as u32, writable));
        *at += 0x100;
    }
    r.queues[ctrl].write(ACK, &[0xee]);
    r.queues[ctrl].add_chain(&chain);
    r.net.process_queue(ctrl).unwrap();
    let used = *r.queues[ctrl].used().last().expect("the chain was used");
    (used.1, r.queues[ctrl].read(ACK, 1)[0])
}

fn pairs_set(r: &mut MqRig, ctrl: usize, n: u16) -> (u32, u8) {
    let b = n.to_le_bytes();
    command(
        r,
        ctrl,
        &[
            (
                &[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET],
                false,
            ),
            (&b, false),
            (&[0], true),
        ],
    )
}

#[test]
fn mq_and_ctrl_vq_are_offered_only_with_several_pairs() {
    let (tap, _peer) = fake_tap();
    let one = Net::new(tap, NetConfig::default()).unwrap();
    assert_eq!(
        one.features() & mq_features() & !feature(VIRTIO_NET_F_MRG_RXBUF),
        0
    );
    assert_eq!(one.queue_max_sizes().len(), 2);
    assert_eq!(one.backend_count(), 1);
    let mut c = [0xffu8; 4];
    one.read_config(8, &mut c);
    assert_eq!(c, [0; 4], "no max_virtqueue_pairs with one pair");

    let (taps, _peers): (Vec<_>, Vec<_>) = (0..3).map(|_| fake_tap()).unzip();
    let three = Net::with_taps(taps, NetConfig::default()).unwrap();
    assert_eq!(three.features() & mq_features(), mq_features());
    assert_eq!(three.queue_max_sizes(), &[256; 7]);
    assert_eq!(three.backend_count(), 3);
    three.read_config(8, &mut c);
    assert_eq!(&c[..2], &3u16.to_le_bytes(), "max_virtqueue_pairs");
    assert!(Net::with_taps(Vec::new(), NetConfig::default()).is_err());
}

#[test]
fn vq_pairs_set_puts_the_second_pair_in_use_and_out() {
    let mem = guest_mem();
    let mut r = mq_rig(&mem, 2, mq_features(), &[], None);
    let ctrl = 4;
    assert_eq!(r.net.active_pairs(), 1);
    assert!(r.net.backend_interest_at(0).is_some());
    assert!(
        r.net.backend_interest_at(1).is_none(),
        "pair 1 not in use yet"
    );

    // A TX chain on pair 1 before VQ_PAIRS_SET is not served.
    let f = frame(100, 0x11);
    r.queues[3].write(0x10_0000, &f);
    r.queues[3].add_chain(&[(0x10_0000, f.len() as u32, false)]);
    r.net.process_queue(3).unwrap();
    assert!(r.queues[3].used().is_empty());

    assert_eq!(pairs_set(&mut r, ctrl, 2), (1, VIRTIO_NET_OK));
    assert_eq!(r.net.active_pairs(), 2);
    assert_eq!(
        r.net.backend_interest_at(1).map(|(fd, _)| fd),
        Some(r.net.pairs[1].tap.as_raw_fd())
    );
    // Now pair 1's TX goes to tap queue 1, and tap queue 1's frames to pair 1's RX.
    r.net.process_queue(3).unwrap();
    assert_eq!(r.queues[3].used(), vec![(0, 0)]);
    let mut got = vec![0u8; 4096];
    let n = r.peers[1].read(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert!(r.peers[0].read(&mut got).is_err(), "nothing on tap queue 0");
    let g = frame(200, 0x22);
    r.peers[1].write_all(&g).unwrap();
    r.queues[2].add_chain(&[(0x11_0000, 4096, true)]);
    r.net.process_backend_at(1, EventSet::IN).unwrap();
    assert_eq!(r.queues[2].used(), vec![(0, g.len() as u32)]);
    assert_eq!(
        &r.queues[2].read(0x11_0000, g.len())[VNET_HDR_LEN..],
        &g[VNET_HDR_LEN..]
    );
    assert!(r.queues[0].used().is_empty(), "pair 0's RX untouched");

    // Back to one pair: pair 1 is no longer polled nor served.
    assert_eq!(pairs_set(&mut r, ctrl, 1), (1, VIRTIO_NET_OK));
    assert_eq!(r.net.active_pairs(), 1);
    assert!(r.net.backend_interest_at(1).is_none());
    r.peers[1].write_all(&g).unwrap();
    r.net.process_backend_at(1, EventSet::IN).unwrap();
    assert_eq!(r.queues[2].used().len(), 1);

    // A reset goes back to one pair.
    assert_eq!(pairs_set(&mut r, ctrl, 2).1, VIRTIO_NET_OK);
    r.net.reset();
    assert_eq!(r.net.active_pairs(), 1);
    assert!(r.net.pairs[1..].iter().all(|p| !p.attached));
}

#[test]
fn hostile_control_commands_get_errors_and_leave_nothing_mapped() {
    let mem = guest_mem();
    let dma = Dma::bounced_from_str(mem.clone(), "size=1M").unwrap();
    let mut r = mq_rig(&mem, 2, mq_features(), &[], Some(dma.clone()));
    let ctrl = 4;
    let mq = [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET];
    let err = VIRTIO_NET_ERR;
    // Out-of-range pairs.
    for n in [0u16, 3, 0x8000, 0xffff] {
        assert_eq!(pairs_set(&mut r, ctrl, n).1, err, "pairs {n}");
    }
    // A short header, in one buffer or two.
    assert_eq!(command(&mut r, ctrl, &[(&[4], false), (&[0], true)]).1, err);
    assert_eq!(
        command(&mut r, ctrl, &[(&[], false), (&[4], false), (&[0], true)]).1,
        err
    );
    // No header at all: only the ack.
    assert_eq!(command(&mut r, ctrl, &[(&[0], true)]).1, err);
    // VQ_PAIRS_SET with 1 or 3 bytes of data.
    assert_eq!(
        command(&mut r, ctrl, &[(&mq, false), (&[2], false), (&[0], true)]).1,
        err
    );
    assert_eq!(
        command(
            &mut r,
            ctrl,
            &[(&mq, false), (&[2, 0, 0], false), (&[0], true)]
        )
        .1,
        err
    );
    // Commands microvm does not support: RX promiscuous, MAC_ADDR_SET, announce ack, RSS.
    for (class, cmd, data) in [
        (0u8, 0u8, &[1u8][..]),
        (1, 1, &[2, 0, 0, 0, 0, 1][..]),
        (3, 0, &[][..]),
        (4, 1, &[0; 20][..]),
    ] {
        let (used, ack) = command(
            &mut r,
            ctrl,
            &[(&[class, cmd], false), (data, false), (&[0], true)],
        );
        assert_eq!((used, ack), (1, err), "class {class} command {cmd}");
    }
    // Longer than the device reads.
    let long = [0u8; 100];
    assert_eq!(
        command(&mut r, ctrl, &[(&mq, false), (&long, false), (&[0], true)]).1,
        err
    );
    // The ack after an empty writable buffer goes to the first byte of the next one.
    let (used, ack) = command(
        &mut r,
        ctrl,
        &[(&mq, false), (&[2, 0], false), (&[], true), (&[0xee], true)],
    );
    assert_eq!(used, 1);
    assert_eq!(r.queues[ctrl].read(ACK + 0x100, 1), vec![VIRTIO_NET_OK]);
    assert_eq!(ack, 0xee, "the empty buffer is not written");
    assert_eq!(pairs_set(&mut r, ctrl, 1).1, VIRTIO_NET_OK);

    // Unanswered (used length 0, nothing written): no writable buffer, a readable buffer after
    // the ack, an empty writable buffer.
    let before = r.queues[ctrl].used_idx();
    for descs in [
        &[(&mq[..], false), (&[2u8, 0][..], false)][..],
        &[
            (&mq[..], false),
            (&[2, 0][..], false),
            (&[0][..], true),
            (&[0][..], false),
        ][..],
        &[(&mq[..], false), (&[2, 0][..], false), (&[][..], true)][..],
    ] {
        let (used, ack) = command(&mut r, ctrl, descs);
        assert_eq!((used, ack), (0, 0xee), "{descs:?}");
    }
    assert_eq!(r.net.active_pairs(), 1, "no command took effect");
    let q = &mut r.queues[ctrl];
    q.write(CMD, &mq);
    q.write(CMD + 0x100, &2u16.to_le_bytes());
    q.add_chain(&[
        (CMD, 2, false),
        (CMD + 0x100, 2, false),
        (MEM_SIZE as u64 + 0x1000, 1, true),
    ]);
    // A readable buffer outside guest memory: answered ERR.
    q.add_chain(&[(MEM_SIZE as u64 - 1, 4, false), (ACK + 0x200, 1, true)]);
    // A malformed chain: the next index beyond the table.
    let head = q.add_chain(&[(CMD, 4, false), (ACK, 1, true)]);
    q.set_desc(head, CMD, 4, 1 /* NEXT */, QSIZE + 3);
    q.write(ACK, &[0xee]);
    r.net.process_queue(ctrl).unwrap();
    assert_eq!(r.queues[ctrl].used_idx().wrapping_sub(before), 6);
    let used = r.queues[ctrl].used();
    let last: Vec<u32> = used[used.len() - 3..].iter().map(|u| u.1).collect();
    assert_eq!(last, vec![0, 1, 0]);
    assert_eq!(r.queues[ctrl].read(ACK + 0x200, 1), vec![VIRTIO_NET_ERR]);
    assert_eq!(
        r.queues[ctrl].read(ACK, 1),
        vec![0xee],
        "malformed chain not answered"
    );
    assert_eq!(r.net.active_pairs(), 1);
    assert_eq!(r.net.queues[ctrl].counters().snapshot().errors, 4);

    // Still working, and every mapping released.
    assert_eq!(pairs_set(&mut r, ctrl, 2).1, VIRTIO_NET_OK);
    assert_eq!(r.net.active_pairs(), 2);
    let s = dma.stats().unwrap();
    assert_eq!(s.slots_used, 0);
    assert_eq!(s.maps, s.unmaps);
    assert!(s.maps > 0);
}

#[test]
fn vq_pairs_set_needs_mq_and_ready_queues() {
    let mem = guest_mem();
    // CTRL_VQ without MQ: the control queue is index 2, and VQ_PAIRS_SET is refused.
    let ctrl_only = feature(VIRTIO_NET_F_CTRL_VQ);
    let mut r = mq_rig(&mem, 2, ctrl_only, &[3, 4], None);
    assert_eq!(pairs_set(&mut r, 2, 2), (1, VIRTIO_NET_ERR));
    assert_eq!(pairs_set(&mut r, 2, 1).1, VIRTIO_NET_ERR);
    assert_eq!(r.net.active_pairs(), 1);

    // MQ with pair 1's TX queue not ready: at most one pair.
    let mut r = mq_rig(&mem, 3, mq_features(), &[3], None);
    assert_eq!(pairs_set(&mut r, 6, 2).1, VIRTIO_NET_ERR);
    assert_eq!(pairs_set(&mut r, 6, 3).1, VIRTIO_NET_ERR);
    assert_eq!(pairs_set(&mut r, 6, 1).1, VIRTIO_NET_OK);
    assert_eq!(r.net.active_pairs(), 1);

    // Without CTRL_VQ, no control queue: a notification on its index is ignored.
    let mut r = mq_rig(&mem, 2, feature(VIRTIO_NET_F_MRG_RXBUF), &[2, 3, 4], None);
    r.queues[4].add_chain(&[(CMD, 4, false), (ACK, 1, true)]);
    assert_eq!(r.net.process_queue(4).unwrap(), QueueState::Drained);
    assert!(r.queues[4].used().is_empty());
    // Pair 0 still carries traffic.
    let f = frame(64, 7);
    r.queues[1].write(0x10_0000, &f);
    r.queues[1].add_chain(&[(0x10_0000, f.len() as u32, false)]);
    r.net.process_queue(1).unwrap();
    let mut got = vec![0u8; 4096];
    assert_eq!(r.peers[0].read(&mut got).unwrap(), f.len());
}

#[test]
fn activation_needs_the_control_queue_when_negotiated() {
    let mem = guest_mem();
    let (taps, _peers): (Vec<_>, Vec<_>) = (0..2).map(|_| fake_tap()).unzip();
    let mut net = Net::with_taps(taps, NetConfig::default()).unwrap();
    net.ack_features(mq_features());
    let dma = Dma::direct(mem.clone());
    let qs: Vec<_> = (0..5)
        .map(|i| {
            let t = TestQueue::at(&mem, RINGS + 0x1000 * i, QSIZE);
            if i == 4 {
                DmaQueue::new(QSIZE, dma.clone(), Default::default()).unwrap()
            } else {
                t.dma_queue_with(dma.clone())
            }
        })
        .collect();
    let (irq, _irqfd) = test_interrupt();
    assert!(matches!(
        net.activate(qs, irq.clone()),
        Err(ActivateError::QueueNotReady(4))
    ));
    assert!(matches!(
        net.activate(Vec::new(), irq),
        Err(ActivateError::QueueCount {
            expected: 5,
            got: 0
        })
    ));
}

#[test]
fn the_control_queue_serves_a_few_commands_per_notification() {
    let mem = guest_mem();
    let mut r = mq_rig(&mem, 2, mq_features(), &[], None);
    let ctrl = 4;
    for i in 0..CTRL_BUDGET + 2 {
        let n = 1 + (i % 2) as u16;
        let a = CMD + 0x10 * i as u64;
        r.queues[ctrl].write(a, &[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET]);
        r.queues[ctrl].write(a + 2, &n.to_le_bytes());
        r.queues[ctrl].add_chain(&[(a, 4, false), (ACK + i as u64, 1, true)]);
    }
    assert_eq!(r.net.process_queue(ctrl).unwrap(), QueueState::MoreWork);
    assert_eq!(r.queues[ctrl].used().len(), CTRL_BUDGET);
    assert_eq!(r.net.process_queue(ctrl).unwrap(), QueueState::Drained);
    assert_eq!(r.queues[ctrl].used().len(), CTRL_BUDGET + 2);
    assert_eq!(
        r.queues[ctrl].read(ACK, CTRL_BUDGET + 2),
        vec![VIRTIO_NET_OK; CTRL_BUDGET + 2]
    );
    assert_eq!(r.net.active_pairs(), 2);
}
