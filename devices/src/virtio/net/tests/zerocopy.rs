//! TX straight from the mapped buffers: the frame reaches the tap intact and sanitised, however
//! the driver splits it, with no host buffer in between (`tx_buf` stays empty); chains of more
//! buffers than one `writev` takes are gathered instead; hostile chains leave nothing mapped.

use std::io::Read;

use super::*;
use bounce::Dma;

/// A frame whose header asks for everything (all flag bits, GSO fields, num_buffers) and whose
/// payload is `n` bytes of a pattern.
fn dirty_frame(n: usize) -> Vec<u8> {
    let mut f = vec![
        0xffu8, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x08, 0x99, 0xaa,
    ];
    f.extend((0..n).map(|i| (i % 251) as u8));
    f
}

/// The frame as it must reach the tap with nothing negotiated: a zeroed header.
fn clean(f: &[u8]) -> Vec<u8> {
    let mut c = f.to_vec();
    c[..VNET_HDR_LEN].fill(0);
    c
}

/// Posts `f` split at `cuts` (offsets into the frame), each piece in its own buffer 4 KiB apart.
fn post_split(r: &mut Rig, f: &[u8], cuts: &[usize]) {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(f.len());
    let mut descs = Vec::new();
    for (i, w) in bounds.windows(2).enumerate() {
        let addr = 0x10_0000 + 0x1_1000 * i as u64;
        r.tx.write(addr, &f[w[0]..w[1]]);
        descs.push((addr, (w[1] - w[0]) as u32, false));
    }
    r.tx.add_chain(&descs);
}

fn recv(r: &mut Rig) -> Option<Vec<u8>> {
    let mut got = vec![0u8; MAX_FRAME_LEN + 1];
    let n = r.peer.read(&mut got).ok()?;
    got.truncate(n);
    Some(got)
}

fn bounced(mem: &vm_memory::GuestMemoryMmap) -> Dma {
    Dma::bounced_from_str(mem.clone(), "size=1M").unwrap()
}

#[test]
fn tx_frames_leave_from_the_mappings_however_the_driver_splits_them() {
    for bounce in [false, true] {
        let mem = guest_mem();
        let dma = bounce.then(|| bounced(&mem));
        let mut r = rig_with(&mem, 16, 16, dma.clone());
        let f = dirty_frame(3000);
        let splits: [&[usize]; 6] = [
            &[],                // header and payload in one buffer
            &[12],              // header alone, as Linux sends it
            &[5],               // header split over two buffers...
            &[5, 12, 1000],     // ...then the payload over several
            &[1, 2, 3, 11, 13], // tiny pieces
            &[10, 2999, 3011],  // header ends inside the second buffer; a 1-byte last one
        ];
        for cuts in splits {
            post_split(&mut r, &f, cuts);
            r.net.process_queue(TX).unwrap();
            assert_eq!(
                recv(&mut r),
                Some(clean(&f)),
                "bounce {bounce}, cuts {cuts:?}"
            );
        }
        assert!(recv(&mut r).is_none());
        assert!(r.tx.used().iter().all(|&(_, len)| len == 0));
        assert!(r.net.tx_buf.is_empty(), "a host buffer was used");
        if let Some(s) = dma.as_ref().and_then(Dma::stats) {
            assert_eq!(s.slots_used, 0);
            // Each frame was copied into the pool once (the modelled cost), never out.
            assert_eq!(s.bytes_to_pool, 6 * f.len() as u64);
            assert_eq!(s.bytes_to_guest, 0);
        }
    }
}

#[test]
fn tx_chains_longer_than_writev_takes_are_gathered() {
    let mem = guest_mem();
    let mut r = rig_with(&mem, 16, 2048, Some(bounced(&mem)));
    let f = dirty_frame(1100);
    // One buffer per byte: 1112 buffers, more than IOV_MAX.
    let descs: Vec<(u64, u32, bool)> = (0..f.len() as u64)
        .map(|i| (0x10_0000 + 16 * i, 1, false))
        .collect();
    for (i, b) in f.iter().enumerate() {
        r.tx.write(0x10_0000 + 16 * i as u64, &[*b]);
    }
    assert!(descs.len() > tx::IOV_MAX);
    r.tx.add_chain(&descs);
    r.net.process_queue(TX).unwrap();
    assert_eq!(recv(&mut r), Some(clean(&f)));
    assert_eq!(r.net.tx_buf.len(), f.len());
}

#[test]
fn hostile_tx_chains_are_dropped_and_leave_nothing_mapped() {
    let mem = guest_mem();
    let dma = bounced(&mem);
    let mut r = rig_with(&mem, 16, 16, Some(dma.clone()));
    let f = dirty_frame(100);
    r.tx.write(0x10_0000, &f);
    // A zero-length buffer after the header (its map fails).
    r.tx.add_chain(&[(0x10_0000, 12, false), (0x10_1000, 0, false)]);
    // Too short for a header; a writable buffer at the end; outside guest memory.
    r.tx.add_chain(&[(0x10_0000, 11, false)]);
    r.tx.add_chain(&[(0x10_0000, 112, false), (0x10_1000, 10, true)]);
    r.tx.add_chain(&[(0x10_0000, 12, false), (MEM_SIZE as u64 - 8, 100, false)]);
    // A header asking for GSO that was not negotiated.
    let mut gso = f.clone();
    gso[1] = hdr::VIRTIO_NET_HDR_GSO_TCPV4;
    gso[0] = hdr::VIRTIO_NET_HDR_F_NEEDS_CSUM;
    r.tx.write(0x20_0000, &gso);
    r.tx.add_chain(&[(0x20_0000, 12, false), (0x20_000c, 100, false)]);
    // Then a good one.
    r.tx.add_chain(&[(0x10_0000, 112, false)]);
    r.net.process_queue(TX).unwrap();
    assert_eq!(recv(&mut r), Some(clean(&f)));
    assert!(recv(&mut r).is_none(), "only the good frame was sent");
    assert_eq!(r.tx.used().len(), 6);
    assert_eq!(r.net.queues[TX].counters().snapshot().errors, 5);
    assert_eq!(dma.stats().unwrap().slots_used, 0);
}
