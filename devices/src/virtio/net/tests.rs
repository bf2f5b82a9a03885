use std::fs::File;

use super::*;
use crate::virtio::test_utils::*;

mod limit;
mod mq;
mod mrg;
mod zerocopy;

/// A SOCK_SEQPACKET pair: one frame per read/write, like a tap.
pub(super) fn fake_tap() -> (Tap, File) {
    let (a, b) = crate::virtio::seqpacket_pair().unwrap();
    (Tap::from_file(a), b)
}

pub(super) fn frame(n: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(vec![fill; n]);
    f
}

pub(super) struct Rig<'a> {
    pub(super) net: Net,
    pub(super) rx: TestQueue<'a>,
    pub(super) tx: TestQueue<'a>,
    pub(super) peer: File,
    _irqfd: vmm_sys_util::eventfd::EventFd,
}

pub(super) fn rig(mem: &vm_memory::GuestMemoryMmap) -> Rig<'_> {
    rig_with(mem, 16, 16, None)
}

/// Guest address of the TX queue of [`rig_with`] (the RX queue is at 0).
pub(super) const TX_RING: u64 = 0x30_0000;

/// A device on a fake tap with an RX queue of `rx_size` at guest address 0 and a TX queue of
/// `tx_size` at [`TX_RING`], mapping through `dma` (direct if `None`).
pub(super) fn rig_with(
    mem: &vm_memory::GuestMemoryMmap,
    rx_size: u16,
    tx_size: u16,
    dma: Option<bounce::Dma>,
) -> Rig<'_> {
    let (tap, peer) = fake_tap();
    let mut net = Net::new(tap, NetConfig::default()).unwrap();
    // A socket takes no offloads: none offered.
    assert_eq!(
        net.features(),
        feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS) | feature(VIRTIO_NET_F_MRG_RXBUF)
    );
    let rx = TestQueue::at(mem, 0, rx_size);
    let tx = TestQueue::at(mem, TX_RING, tx_size);
    let dma = dma.unwrap_or_else(|| bounce::Dma::direct(mem.clone()));
    let (irq, irqfd) = test_interrupt();
    net.activate(
        vec![rx.dma_queue_with(dma.clone()), tx.dma_queue_with(dma)],
        irq,
    )
    .unwrap();
    Rig {
        net,
        rx,
        tx,
        peer,
        _irqfd: irqfd,
    }
}

#[test]
fn tx_gathers_chain_into_one_frame() {
    use std::io::Read;
    let mem = guest_mem();
    let mut r = rig(&mem);
    let f = frame(100, 0x5a);
    r.tx.write(0x10_0000, &f[..VNET_HDR_LEN]);
    r.tx.write(0x10_1000, &f[VNET_HDR_LEN..]);
    r.tx.add_chain(&[(0x10_0000, 12, false), (0x10_1000, 100, false)]);
    // Malformed: writable buffer, then too large.
    r.tx.add_chain(&[(0x10_0000, 12, true)]);
    r.tx.add_chain(&[(0x10_0000, 65535, false), (0x20_0000, 65535, false)]);
    r.net.process_queue(TX).unwrap();
    assert_eq!(r.tx.used(), vec![(0, 0), (2, 0), (3, 0)]);
    let mut got = vec![0u8; 4096];
    let n = r.peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert!(r.peer.read(&mut got).is_err(), "only one frame sent");
}

/// Sends one TX frame (header + 64 bytes) through the device; returns what reached the tap,
/// if anything.
fn send(r: &mut Rig, header: [u8; VNET_HDR_LEN]) -> Option<Vec<u8>> {
    use std::io::Read;
    r.tx.write(0x10_0000, &header);
    r.tx.write(0x10_1000, &[0x5a; 64]);
    r.tx.add_chain(&[(0x10_0000, 12, false), (0x10_1000, 64, false)]);
    r.net.process_queue(TX).unwrap();
    assert_eq!(r.tx.used().last().map(|u| u.1), Some(0));
    let mut got = vec![0u8; 4096];
    let n = r.peer.read(&mut got).ok()?;
    assert_eq!(&got[VNET_HDR_LEN..n], &[0x5a; 64], "frame intact");
    got.truncate(VNET_HDR_LEN);
    Some(got)
}

#[test]
fn tx_headers_carry_only_negotiated_offloads_to_the_tap() {
    use hdr::*;
    let mem = guest_mem();
    let mut r = rig(&mem);
    let h = |flags: u8, gso: u8, f: [u16; 5]| {
        let mut b = [flags, gso, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (i, v) in f.into_iter().enumerate() {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    };
    let tso4 = |flags| h(flags, VIRTIO_NET_HDR_GSO_TCPV4, [66, 1448, 34, 16, 0xffff]);

    // Nothing negotiated (a socket takes no offloads): flags, checksum and GSO fields and
    // num_buffers reach the tap zeroed; a GSO frame is dropped, not sent.
    assert_eq!(send(&mut r, h(0xff, 0, [0xffff; 5])), Some(vec![0; 12]));
    assert_eq!(send(&mut r, tso4(VIRTIO_NET_HDR_F_NEEDS_CSUM)), None);

    // The driver negotiated CSUM and HOST_TSO4 (not TSO6).
    r.net
        .ack_features(feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4));
    let want = h(1, VIRTIO_NET_HDR_GSO_TCPV4, [66, 1448, 34, 16, 0]);
    assert_eq!(send(&mut r, tso4(0xff)), Some(want.to_vec()));
    let tso6 = h(1, VIRTIO_NET_HDR_GSO_TCPV6, [86, 1428, 54, 16, 0]);
    assert_eq!(send(&mut r, tso6), None);
    assert_eq!(send(&mut r, tso4(0)), None, "GSO without NEEDS_CSUM");
    let ecn = h(
        1,
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
        [66, 1448, 34, 16, 0],
    );
    assert_eq!(send(&mut r, ecn), None);
    let ufo = h(1, VIRTIO_NET_HDR_GSO_UDP, [42, 1472, 34, 6, 0]);
    assert_eq!(send(&mut r, ufo), None);

    // A reset forgets what was negotiated (the driver sets its queues up afresh).
    r.net.reset();
    r.rx = TestQueue::at(&mem, 0, 16);
    r.tx = TestQueue::at(&mem, TX_RING, 16);
    let (irq, _irqfd) = test_interrupt();
    r.net
        .activate(vec![r.rx.dma_queue(), r.tx.dma_queue()], irq)
        .unwrap();
    assert_eq!(send(&mut r, tso4(VIRTIO_NET_HDR_F_NEEDS_CSUM)), None);
}

#[test]
fn rx_backpressure_keeps_the_frame() {
    use std::io::Write;
    let mem = guest_mem();
    let mut r = rig(&mem);
    let f1 = frame(60, 1);
    let f2 = frame(1500, 2);
    r.peer.write_all(&f1).unwrap();
    r.peer.write_all(&f2).unwrap();
    assert!(r.net.backend_interest().is_some());

    // No RX buffers yet: the frame stays pending and the tap is no longer polled.
    r.net.process_backend(EventSet::IN).unwrap();
    assert!(r.net.backend_interest().is_none());
    assert!(r.rx.used().is_empty());

    // The driver posts one buffer and kicks: f1 is delivered, f2 then waits.
    r.rx.add_chain(&[(0x10_0000, 2048, true)]);
    r.net.process_queue(RX).unwrap();
    assert_eq!(r.rx.used(), vec![(0, f1.len() as u32)]);
    let got = r.rx.read(0x10_0000, f1.len());
    assert_eq!(&got[VNET_HDR_LEN..], &f1[VNET_HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert!(r.net.backend_interest().is_none());

    // A chain too small for f2 is returned unused and f2 is dropped; a two-buffer chain
    // then takes the next frame.
    r.rx.add_chain(&[(0x11_0000, 100, true)]);
    r.net.process_queue(RX).unwrap();
    assert_eq!(r.rx.used()[1], (1, 0));
    assert!(r.net.backend_interest().is_some());
    r.peer.write_all(&f2).unwrap();
    r.rx.add_chain(&[(0x12_0000, 1000, true), (0x13_0000, 1000, true)]);
    r.net.process_backend(EventSet::IN).unwrap();
    assert_eq!(r.rx.used()[2], (2, f2.len() as u32));
    assert_eq!(r.rx.read(0x13_0000, 10), vec![2u8; 10]);

    // Reset forgets the pending state and stops polling.
    r.net.reset();
    assert!(r.net.backend_interest().is_none());
}

#[test]
fn config_space_has_mac_and_link_up() {
    let (tap, _peer) = fake_tap();
    let net = Net::new(
        tap,
        NetConfig {
            mac: [2, 3, 4, 5, 6, 7],
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = [0u8; 8];
    net.read_config(0, &mut c);
    assert_eq!(c, [2, 3, 4, 5, 6, 7, 1, 0]);
    assert!(net.backend_interest().is_none(), "not active");
}

#[test]
fn real_tap() {
    // Needs CAP_NET_ADMIN and /dev/net/tun (CI runs as root): fails loudly otherwise.
    let tap = Tap::open("mvmtest%d")
        .expect("cannot open a tap: run as root (CAP_NET_ADMIN) with /dev/net/tun");
    let net = Net::new(tap, NetConfig::default()).unwrap();
    assert_ne!(net.features() & feature(VIRTIO_NET_F_MAC), 0);
}

#[test]
fn real_multi_queue_tap() {
    // As `real_tap`: needs CAP_NET_ADMIN and /dev/net/tun. The taps vanish with their fds.
    let name = format!("mvmq{}", std::process::id() % 100_000);
    let taps = Tap::open_queues(&name, 3).expect("cannot create a multi-queue tap: run as root");
    assert_eq!(taps.len(), 3);
    // One queue of the same multi-queue tap, through the single-queue path's fallback.
    let extra = Tap::open(&name).expect("one queue of a multi-queue tap");
    drop(extra);
    let mut net = Net::with_taps(taps, NetConfig::default()).unwrap();
    assert_ne!(net.features() & feature(VIRTIO_NET_F_MQ), 0);
    // Pairs 1 and 2 were detached at construction: detaching again is refused by the kernel,
    // attaching works (and so does going back).
    assert!(net.pairs[1].tap.set_queue_attached(false).is_err());
    set_active_pairs(&mut net.pairs, 3).unwrap();
    assert!(net.pairs.iter().all(|p| p.attached));
    set_active_pairs(&mut net.pairs, 1).unwrap();
    assert!(net.pairs[1..].iter().all(|p| !p.attached));

    // A single-queue tap refuses several queues, saying what to do.
    let single = format!("mvms{}", std::process::id() % 100_000);
    let _held = Tap::open(&single).expect("a single-queue tap");
    let e = Tap::open_queues(&single, 2).unwrap_err();
    assert!(
        matches!(e, crate::virtio::TapError::NotMultiQueue { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("multi_queue"), "{e}");
    assert!(matches!(
        Tap::open_queues(&single, 0),
        Err(crate::virtio::TapError::QueueCount(0))
    ));
}
