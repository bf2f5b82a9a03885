//! VIRTIO_NET_F_MRG_RXBUF: a frame spread over several RX chains with `num_buffers` in its
//! header, frames waiting for enough buffers, and hostile rings (no panic, nothing used twice,
//! used lengths exactly the bytes written).

use std::io::Write;

use super::*;
use bounce::Dma;

/// A frame of `n` payload bytes of a pattern (`seed` tells frames apart).
fn pframe(n: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..n).map(|i| (i % 251) as u8 ^ seed));
    f
}

fn mrg_rig(mem: &vm_memory::GuestMemoryMmap, rx_size: u16, dma: Option<Dma>) -> Rig<'_> {
    let mut r = rig_with(mem, rx_size, 16, dma);
    r.net.ack_features(feature(VIRTIO_NET_F_MRG_RXBUF));
    r
}

/// The bytes the device wrote into the chains `used` names (heads of single-buffer chains at
/// `base + head * stride`), concatenated.
fn gather(r: &Rig, used: &[(u32, u32)], base: u64, stride: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for &(head, len) in used {
        out.extend(r.rx.read(base + u64::from(head) * stride, len as usize));
    }
    out
}

fn num_buffers(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[10], bytes[11]])
}

#[test]
fn a_frame_larger_than_one_buffer_is_spread_over_several() {
    for bounce in [false, true] {
        let mem = guest_mem();
        let dma = bounce.then(|| Dma::bounced_from_str(mem.clone(), "size=1M").unwrap());
        let mut r = mrg_rig(&mem, 16, dma.clone());
        for i in 0..4 {
            r.rx.add_chain(&[(0x10_0000 + i * 0x1000, 1000, true)]);
        }
        let big = pframe(2988, 7); // 3000 bytes: three buffers
        let small = pframe(88, 9); // 100 bytes: one
        r.peer.write_all(&big).unwrap();
        r.peer.write_all(&small).unwrap();
        r.net.process_backend(EventSet::IN).unwrap();
        let used = r.rx.used();
        assert_eq!(used, vec![(0, 1000), (1, 1000), (2, 1000), (3, 100)]);
        let got = gather(&r, &used[..3], 0x10_0000, 0x1000);
        assert_eq!(num_buffers(&got), 3, "bounce {bounce}");
        assert_eq!(&got[VNET_HDR_LEN..], &big[VNET_HDR_LEN..]);
        let got = gather(&r, &used[3..], 0x10_0000, 0x1000);
        assert_eq!(num_buffers(&got), 1);
        assert_eq!(&got[VNET_HDR_LEN..], &small[VNET_HDR_LEN..]);
        if let Some(s) = dma.as_ref().and_then(Dma::stats) {
            assert_eq!(s.slots_used, 0);
        }
    }
}

#[test]
fn chains_of_several_buffers_and_a_64k_frame() {
    let mem = guest_mem();
    let mut r = mrg_rig(&mem, 128, None);
    // 40 chains of two buffers (1000 + 700 bytes): 68000 bytes, enough for a 65 KiB frame.
    for i in 0..40u64 {
        let a = 0x10_0000 + i * 0x1000;
        r.rx.add_chain(&[(a, 1000, true), (a + 0x800, 700, true)]);
    }
    let f = pframe(MAX_FRAME_LEN - VNET_HDR_LEN, 3);
    r.peer.write_all(&f).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    let used = r.rx.used();
    let chains = f.len().div_ceil(1700);
    assert_eq!(used.len(), chains);
    let mut got = Vec::new();
    for (k, &(head, len)) in used.iter().enumerate() {
        assert_eq!(head, 2 * k as u32, "chains used in ring order");
        let want = if k + 1 == chains {
            f.len() - 1700 * k
        } else {
            1700
        };
        assert_eq!(len as usize, want);
        let a = 0x10_0000 + k as u64 * 0x1000;
        got.extend(r.rx.read(a, want.min(1000)));
        got.extend(r.rx.read(a + 0x800, want.saturating_sub(1000)));
    }
    assert_eq!(num_buffers(&got) as usize, chains);
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn a_frame_waits_until_the_driver_posts_enough_buffers() {
    let mem = guest_mem();
    let mut r = mrg_rig(&mem, 16, None);
    r.rx.add_chain(&[(0x10_0000, 1000, true)]);
    let f = pframe(2488, 1); // 2500 bytes
    r.peer.write_all(&f).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    assert!(
        r.rx.used().is_empty(),
        "one buffer is not enough: nothing used"
    );
    assert!(
        r.net.backend_interest().is_none(),
        "tap not polled while starved"
    );
    r.rx.add_chain(&[(0x10_1000, 1000, true)]);
    r.net.process_queue(RX).unwrap();
    assert!(r.rx.used().is_empty(), "two are not either");
    r.rx.add_chain(&[(0x10_2000, 1000, true)]);
    r.net.process_queue(RX).unwrap();
    let used = r.rx.used();
    assert_eq!(used, vec![(0, 1000), (1, 1000), (2, 500)]);
    let got = gather(&r, &used, 0x10_0000, 0x1000);
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert!(
        r.net.backend_interest().is_some(),
        "the tap is polled again"
    );
}

#[test]
fn without_mrg_rxbuf_one_chain_per_frame_and_num_buffers_is_one() {
    let mem = guest_mem();
    let mut r = rig_with(&mem, 16, 16, None);
    for i in 0..3 {
        r.rx.add_chain(&[(0x10_0000 + i * 0x1000, 1000, true)]);
    }
    r.peer.write_all(&pframe(1988, 2)).unwrap(); // 2000 bytes: no chain holds it
    r.peer.write_all(&pframe(500, 4)).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    let used = r.rx.used();
    assert_eq!(used, vec![(0, 0), (1, 512)]);
    let got = gather(&r, &used[1..], 0x10_0000, 0x1000);
    assert_eq!(num_buffers(&got), 1);
}

#[test]
fn hostile_rx_rings_drop_the_frame_and_never_use_a_chain_twice() {
    let mem = guest_mem();
    let dma = Dma::bounced_from_str(mem.clone(), "size=1M").unwrap();
    let mut r = mrg_rig(&mem, 16, Some(dma.clone()));
    let f = pframe(2988, 5);
    // A good chain, then one with a driver-readable buffer: both returned unused, frame dropped.
    let mut heads = vec![
        r.rx.add_chain(&[(0x10_0000, 1000, true)]),
        r.rx.add_chain(&[(0x10_1000, 1000, true), (0x10_1800, 100, false)]),
        // A good chain, then one with a zero-length buffer (no room).
        r.rx.add_chain(&[(0x10_2000, 1000, true)]),
        r.rx.add_chain(&[(0x10_3000, 0, true)]),
    ];
    // A buffer outside guest memory: the map fails after the chains were taken.
    heads.push(r.rx.add_chain(&[(0x10_4000, 1000, true)]));
    heads.push(r.rx.add_chain(&[(MEM_SIZE as u64 - 100, 1000, true)]));
    heads.push(r.rx.add_chain(&[(0x10_6000, 1000, true)]));
    for _ in 0..3 {
        r.peer.write_all(&f).unwrap();
    }
    r.net.process_backend(EventSet::IN).unwrap();
    // (In any order: the first chain of a frame is mapped and read into before the others
    // are popped, and returned after them.)
    let mut used = r.rx.used();
    used.sort_unstable();
    assert_eq!(
        used,
        heads.iter().map(|&h| (u32::from(h), 0)).collect::<Vec<_>>(),
        "every chain returned once, with nothing claimed written"
    );
    assert_eq!(dma.stats().unwrap().slots_used, 0);
    assert!(r.net.backend_interest().is_some());

    // A malformed chain (a loop) in the middle of a frame's chains.
    let before = r.rx.add_chain(&[(0x10_0000, 1000, true)]);
    let head =
        r.rx.add_chain(&[(0x10_1000, 1000, true), (0x10_2000, 1000, true)]);
    r.rx.set_desc(
        head + 1,
        0x10_2000,
        1000,
        (virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE
            | virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT) as u16,
        head,
    );
    r.peer.write_all(&f).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    let mut used = r.rx.used();
    used[7..].sort_unstable();
    assert_eq!(&used[7..], &[(before.into(), 0), (head.into(), 0)]);

    // Then a frame that fits is delivered normally.
    let ok = pframe(88, 6);
    r.rx.add_chain(&[(0x10_0000, 1000, true)]);
    r.peer.write_all(&ok).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    let (h, len) = *r.rx.used().last().unwrap();
    assert_eq!(len, 100);
    let got = r.rx.read(0x10_0000, 100);
    assert_eq!(h, u32::from(head) + 2);
    assert_eq!((num_buffers(&got), &got[12..]), (1, &ok[12..]));
}

#[test]
fn a_frame_the_whole_ring_cannot_hold_is_dropped_not_waited_for() {
    let mem = guest_mem();
    let mut r = mrg_rig(&mem, 4, None);
    for i in 0..4 {
        r.rx.add_chain(&[(0x10_0000 + i * 0x1000, 500, true)]);
    }
    r.peer.write_all(&pframe(2988, 1)).unwrap(); // 3000 bytes > 4 x 500
    r.peer.write_all(&pframe(88, 2)).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    // The big frame went; its chains were put back and the next frame took the first.
    let used = r.rx.used();
    assert_eq!(used, vec![(0, 100)]);
    assert_eq!(num_buffers(&r.rx.read(0x10_0000, 12)), 1);
    assert!(r.net.backend_interest().is_some());
}

#[test]
fn with_mrg_rxbuf_a_frame_that_fits_is_read_straight_into_the_chain() {
    for bounce in [false, true] {
        let mem = guest_mem();
        let dma = bounce.then(|| Dma::bounced_from_str(mem.clone(), "size=1M").unwrap());
        let mut r = mrg_rig(&mem, 16, dma.clone());
        r.net.pairs[0].rx_buf.fill(0xa5);
        r.rx.add_chain(&[(0x10_0000, 800, true), (0x10_1000, 1200, true)]);
        let f = pframe(1502, 8); // 1514 bytes: over both buffers
        r.peer.write_all(&f).unwrap();
        r.net.process_backend(EventSet::IN).unwrap();
        assert_eq!(r.rx.used(), vec![(0, 1514)]);
        let mut got = r.rx.read(0x10_0000, 800);
        got.extend(r.rx.read(0x10_1000, 714));
        assert_eq!(num_buffers(&got), 1);
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert!(
            r.net.pairs[0].rx_buf.iter().all(|&b| b == 0xa5),
            "bounce {bounce}: the frame went through the host buffer"
        );
        if let Some(s) = dma.as_ref().and_then(Dma::stats) {
            // The chain was mapped whole (copied in, then out): the modelled cost only.
            assert_eq!(
                (s.bytes_to_pool, s.bytes_to_guest, s.slots_used),
                (2000, 2000, 0)
            );
        }
    }
}

#[test]
fn with_an_rx_rate_limiter_frames_go_through_the_host_buffer() {
    use crate::rate_limiter::{LimiterConfig, ManualClock, RateLimiter};
    let mem = guest_mem();
    let mut r = mrg_rig(&mem, 16, None);
    let clock = ManualClock::default();
    let l = RateLimiter::with_clock(LimiterConfig::default(), std::sync::Arc::new(clock)).unwrap();
    r.net.set_rate_limiters(Some(l), None);
    r.net.pairs[0].rx_buf.fill(0xa5);
    r.rx.add_chain(&[(0x10_0000, 2000, true)]);
    let f = pframe(1502, 8);
    r.peer.write_all(&f).unwrap();
    r.net.process_backend(EventSet::IN).unwrap();
    assert_eq!(r.rx.used(), vec![(0, 1514)]);
    assert_eq!(
        &r.net.pairs[0].rx_buf[VNET_HDR_LEN..1514],
        &f[VNET_HDR_LEN..]
    );
}
