//! Tests of the DMA API: both implementations, bad input, traces.

use super::*;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

#[test]
fn direct_round_trip() {
    let dma = Dma::direct(mem());
    let mut b = dma
        .map(
            DmaSource::default(),
            GuestAddress(0x1000),
            16,
            DmaDirection::FromDevice,
        )
        .unwrap();
    b.write_at(4, b"abcd").unwrap();
    let mut out = [0u8; 4];
    b.read_at(4, &mut out).unwrap();
    assert_eq!(&out, b"abcd");
    b.unmap().unwrap();
    let mut g = [0u8; 4];
    dma.guest_memory()
        .read_slice(&mut g, GuestAddress(0x1004))
        .unwrap();
    assert_eq!(&g, b"abcd");
}

#[test]
fn rejects_bad_ranges() {
    let dma = Dma::direct(mem());
    let src = DmaSource::default();
    let d = DmaDirection::ToDevice;
    assert_eq!(
        dma.map(src, GuestAddress(0x100), 0, d).err(),
        Some(DmaError::ZeroLength { addr: 0x100 })
    );
    assert!(matches!(
        dma.map(src, GuestAddress(0xffff), 2, d),
        Err(DmaError::OutOfGuestMemory { .. })
    ));
    assert!(matches!(
        dma.map(src, GuestAddress(u64::MAX), 2, d),
        Err(DmaError::OutOfGuestMemory { .. })
    ));
    let mut b = dma.map(src, GuestAddress(0), 8, d).unwrap();
    assert_eq!(b.write_at(0, b"x"), Err(DmaError::ReadOnlyBuffer));
    let mut out = [0u8; 4];
    assert!(matches!(
        b.read_at(usize::MAX, &mut out),
        Err(DmaError::OutOfBuffer { .. })
    ));
    assert!(matches!(
        b.read_at(6, &mut out),
        Err(DmaError::OutOfBuffer { .. })
    ));
}

fn bounced(cfg: &str) -> Dma {
    Dma::bounced_from_str(mem(), cfg).unwrap()
}

#[test]
fn bounced_round_trip_never_touches_guest_until_unmap() {
    let dma = bounced("size=1M,areas=2");
    dma.guest_memory()
        .write_slice(b"guest!", GuestAddress(0x2000))
        .unwrap();
    let src = DmaSource::default();
    let mut b = dma
        .map(src, GuestAddress(0x2000), 6, DmaDirection::Bidirectional)
        .unwrap();
    let bounce = b.bounce_addr().unwrap();
    // Copied in on map for every direction.
    let mut seen = [0u8; 6];
    b.read_at(0, &mut seen).unwrap();
    assert_eq!(&seen, b"guest!");
    assert!(bounce >= crate::swiotlb::BOUNCE_BASE);
    b.write_at(0, b"DEVICE").unwrap();
    let mut g = [0u8; 6];
    dma.guest_memory()
        .read_slice(&mut g, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&g, b"guest!", "device writes must stay in the bounce slot");
    b.sync_for_cpu().unwrap();
    assert!(matches!(b.sync_for_cpu(), Err(DmaError::DoubleSync { .. })));
    dma.guest_memory()
        .read_slice(&mut g, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&g, b"DEVICE");
    b.sync_for_device().unwrap();
    assert!(matches!(
        b.sync_for_device(),
        Err(DmaError::DoubleSync { .. })
    ));
    b.write_at(0, b"second").unwrap();
    b.unmap().unwrap();
    dma.guest_memory()
        .read_slice(&mut g, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&g, b"second");
    let s = dma.stats().unwrap();
    assert_eq!((s.maps, s.unmaps, s.slots_used), (1, 1, 0));
    assert_eq!(s.syncs_for_cpu, 1);
    assert_eq!(s.syncs_for_device, 1);
    assert_eq!(s.failures.double_sync, 2);
    assert_eq!(s.bytes_to_pool, 12);
    assert_eq!(s.bytes_to_guest, 12);
    assert!(Dma::direct(mem()).stats().is_none());
}

#[test]
fn drop_unmaps_and_copies_back() {
    let dma = bounced("size=1M");
    {
        let mut b = dma
            .map(
                DmaSource::default(),
                GuestAddress(0x3000),
                4,
                DmaDirection::FromDevice,
            )
            .unwrap();
        b.write_at(0, b"drop").unwrap();
    }
    let mut g = [0u8; 4];
    dma.guest_memory()
        .read_slice(&mut g, GuestAddress(0x3000))
        .unwrap();
    assert_eq!(&g, b"drop");
    assert_eq!(dma.stats().unwrap().slots_used, 0);
}

#[test]
fn bounced_rejects_bad_ranges_with_counted_errors() {
    let dma = bounced("size=1M,transient=off,dynamic=off");
    let src = DmaSource::default();
    let d = DmaDirection::ToDevice;
    assert!(matches!(
        dma.map(src, GuestAddress(0), 0, d),
        Err(DmaError::ZeroLength { .. })
    ));
    assert!(matches!(
        dma.map(src, GuestAddress(0), 256 * 1024 + 1, d),
        Err(DmaError::OutOfGuestMemory { .. })
    ));
    let big = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
    let dma2 = Dma::bounced_from_str(big, "size=1M").unwrap();
    assert_eq!(
        dma2.map(src, GuestAddress(0), 256 * 1024 + 1, d).err(),
        Some(DmaError::TooLarge {
            len: 256 * 1024 + 1,
            max: 256 * 1024
        })
    );
    let s = dma.stats().unwrap();
    assert_eq!(s.failures.zero_length, 1);
    assert_eq!(s.failures.guest_range, 1);
    assert_eq!(dma2.stats().unwrap().failures.too_large, 1);
}

#[test]
fn trace_records_every_operation() {
    let buf = crate::trace::MemorySink::default();
    let dma = bounced("size=1M");
    dma.set_trace(Some(Arc::new(TraceRecorder::new(Box::new(buf.clone())))));
    let src = DmaSource {
        device: 3,
        queue: 1,
    };
    let mut b = dma
        .map(src, GuestAddress(0x100), 64, DmaDirection::FromDevice)
        .unwrap();
    b.sync_for_cpu().unwrap();
    b.unmap().unwrap();
    dma.set_trace(None);
    let data = buf.bytes();
    let recs = crate::trace::read_trace(&data[..]).unwrap();
    let ops: Vec<_> = recs.iter().map(|r| r.op).collect();
    assert_eq!(ops, [TraceOp::Map, TraceOp::SyncForCpu, TraceOp::Unmap]);
    assert!(recs
        .iter()
        .all(|r| r.id == 1 && r.device == 3 && r.queue == 1 && r.len == 64));
    assert!(recs.iter().all(|r| r.bounce == Some(crate::BOUNCE_BASE)));
    assert_eq!(
        recs[0].pool,
        Some(
            dma.swiotlb()
                .unwrap()
                .find_pool(crate::BOUNCE_BASE)
                .unwrap()
        )
    );
    assert_eq!(recs[0].pool_kind, Some(crate::TracePoolKind::Initial));
    assert_eq!((recs[1].offset, recs[1].sync_len), (Some(0), Some(64)));
}

/// Failed maps (with their error), alignment masks, the serving pool (a transient one
/// here), partial sync ranges and the recording thread all reach the trace, and nothing in
/// it is a host address.
#[test]
fn trace_records_failures_masks_pools_and_ranges() {
    let buf = crate::trace::MemorySink::default();
    let dma = bounced("size=256K,areas=1,dynamic=off");
    dma.set_trace(Some(Arc::new(TraceRecorder::new(Box::new(buf.clone())))));
    let src = DmaSource::default();
    let attrs = MapAttrs {
        min_align_mask: 0xfff,
        alloc_align_mask: 0x7ff,
        may_block: false,
    };
    // Fill the 256 KiB pool, then one more: a transient pool serves it.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            dma.map_with(
                src,
                GuestAddress(0),
                0x10000,
                DmaDirection::FromDevice,
                attrs,
            )
            .unwrap(),
        );
    }
    let mut t = dma
        .map(
            src,
            GuestAddress(0x8000),
            0x1000,
            DmaDirection::Bidirectional,
        )
        .unwrap();
    t.sync_range_for_cpu(0x100, 0x200).unwrap();
    t.sync_range_for_device(0x400, 0x10).unwrap();
    assert!(t.sync_range_for_cpu(0xf00, 0x200).is_err());
    t.unmap().unwrap();
    // A failure: zero length.
    assert!(dma
        .map(src, GuestAddress(0), 0, DmaDirection::ToDevice)
        .is_err());
    drop(held);
    dma.set_trace(None);
    let data = buf.bytes();
    let text = String::from_utf8(data.clone()).unwrap();
    let (version, recs) = crate::trace::read_trace_versioned(&data[..]).unwrap();
    assert_eq!(version, crate::TRACE_VERSION);
    let maps: Vec<_> = recs.iter().filter(|r| r.op == TraceOp::Map).collect();
    assert_eq!(maps.len(), 6);
    assert!(maps[..4].iter().all(|r| r.min_align_mask == 0xfff
        && r.alloc_align_mask == 0x7ff
        && r.pool_kind == Some(crate::TracePoolKind::Initial)));
    assert_eq!(maps[4].pool_kind, Some(crate::TracePoolKind::Transient));
    assert_ne!(maps[4].pool, maps[0].pool);
    assert_eq!(maps[5].error.as_deref(), Some("zero_length"));
    assert!(maps[5]
        .error_msg
        .as_deref()
        .unwrap()
        .contains("zero-length"));
    assert_eq!(maps[5].bounce, None);
    let syncs: Vec<_> = recs
        .iter()
        .filter(|r| matches!(r.op, TraceOp::SyncForCpu | TraceOp::SyncForDevice))
        .map(|r| (r.op, r.partial_sync()))
        .collect();
    assert_eq!(
        syncs,
        [
            (TraceOp::SyncForCpu, Some((0x100, 0x200))),
            (TraceOp::SyncForDevice, Some((0x400, 0x10)))
        ]
    );
    assert!(recs
        .iter()
        .all(|r| r.thread == recs[0].thread && r.thread.is_some()));
    // Every bounce address is in the model's own address space, not the host's.
    assert!(recs
        .iter()
        .filter_map(|r| r.bounce)
        .all(|b| (crate::BOUNCE_BASE..crate::BOUNCE_BASE + (1 << 40)).contains(&b)));
    let host = held_host_hint(&dma);
    assert!(!text.contains(&host.to_string()), "host address in trace");
    let s = dma.stats().unwrap();
    assert_eq!((s.syncs_for_cpu, s.syncs_for_device), (1, 1));
}

/// A host address of the pools (the first bounce slot), to check a trace does not hold it.
fn held_host_hint(dma: &Dma) -> u64 {
    let b = dma
        .map(
            DmaSource::default(),
            GuestAddress(0),
            16,
            DmaDirection::ToDevice,
        )
        .unwrap();
    let p = b.slice().ptr_guard().as_ptr() as u64;
    b.unmap().unwrap();
    p
}

#[test]
fn spanning_two_regions_is_not_contiguous() {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
    ])
    .unwrap();
    for dma in [
        Dma::direct(mem.clone()),
        Dma::bounced_from_str(mem, "size=1M").unwrap(),
    ] {
        assert!(matches!(
            dma.map(
                DmaSource::default(),
                GuestAddress(0xff00),
                0x200,
                DmaDirection::ToDevice
            ),
            Err(DmaError::NotContiguous { .. })
        ));
    }
}
