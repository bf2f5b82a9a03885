//! The io_uring engine against the sync engine, many requests in flight, hostile drivers,
//! FLUSH ordering (after writes, discards and write zeroes, and after what is written when a
//! completion is reaped), SQPOLL, reset with requests in flight, and requests deferred by bounce pools that
//! must wait (`exhaustion=wait`) or failed by pools that may not (`exhaustion=fail`).

use std::fs::File;
use std::os::unix::fs::FileExt;

use bounce::{Dma, DmaDirection, DmaSource};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::super::*;
use super::{disk, disk_bytes};
use crate::virtio::test_utils::*;

const HDRS: u64 = 0x20_0000;
const STATUSES: u64 = 0x21_0000;
const BUFS: u64 = 0x22_0000;
const BUF_LEN: u64 = 0x2000;

/// A driver with many requests outstanding: request `i` uses header, status byte and an 8 KiB
/// data area of its own.
struct Driver<'a> {
    t: TestQueue<'a>,
    blk: Block,
    _irqfd: vmm_sys_util::eventfd::EventFd,
}

impl<'a> Driver<'a> {
    fn new(
        mem: &'a GuestMemoryMmap,
        file: File,
        engine: Engine,
        qsize: u16,
        dma: Option<Dma>,
    ) -> Self {
        let t = TestQueue::new(mem, qsize);
        let mut blk = Block::new(
            file,
            BlockConfig {
                engine,
                queue_size: qsize,
                ..Default::default()
            },
        )
        .unwrap();
        let (irq, irqfd) = test_interrupt();
        let q = match dma {
            Some(d) => t.dma_queue_with(d),
            None => t.dma_queue(),
        };
        blk.activate(vec![q], irq).unwrap();
        Driver {
            t,
            blk,
            _irqfd: irqfd,
        }
    }

    /// Posts request `i` (`len` bytes of data, none for a flush).
    fn post(&mut self, i: u64, req: u32, sector: u64, len: u32) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&req.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        let hdr = HDRS + 16 * i;
        let st = STATUSES + i;
        self.t.write(hdr, &h);
        self.t.write(st, &[0xff]);
        if len == 0 {
            self.t.add_chain(&[(hdr, 16, false), (st, 1, true)]);
        } else {
            let w = req == VIRTIO_BLK_T_IN;
            self.t.add_chain(&[
                (hdr, 16, false),
                (BUFS + BUF_LEN * i, len, w),
                (st, 1, true),
            ]);
        }
    }

    /// Request `i`'s 16-byte discard / write-zeroes segment.
    fn seg(&mut self, i: u64, sector: u64, n: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        self.t.write(BUFS + BUF_LEN * i, &s);
    }

    fn status(&self, i: u64) -> u8 {
        self.t.read(STATUSES + i, 1)[0]
    }

    fn buf(&self, i: u64, len: usize) -> Vec<u8> {
        self.t.read(BUFS + BUF_LEN * i, len)
    }

    /// Runs the device until nothing is in flight or deferred, as the event loop would.
    fn settle(&mut self) {
        self.blk.process_queue(0).unwrap();
        for _ in 0..10_000 {
            if self.blk.in_flight() == 0 && self.blk.deferred() == 0 {
                return;
            }
            if self.blk.in_flight() > 0 {
                self.blk.uring.as_mut().unwrap().wait_one().unwrap();
            }
            self.blk.process_backend(EventSet::IN).unwrap();
        }
        panic!(
            "device did not settle: {} in flight, {} deferred",
            self.blk.in_flight(),
            self.blk.deferred()
        );
    }
}

fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j as u64 * 31 + i * 7) as u8).collect()
}

/// The same mixed workload through both engines leaves the same image and reads the same data.
#[test]
fn uring_matches_sync() {
    let mem = guest_mem();
    let mut images = Vec::new();
    let mut reads = Vec::new();
    for engine in [Engine::Sync, Engine::Uring] {
        let (t, f) = disk();
        let mut d = Driver::new(&mem, f, engine, 128, None);
        // 32 writes of 4 KiB at scattered sectors, a flush, a discard, then 32 reads.
        for i in 0..32u64 {
            d.t.write(BUFS + BUF_LEN * i, &pattern(i, 4096));
            d.post(i, VIRTIO_BLK_T_OUT, ((i * 37) % 2000) & !7, 4096);
        }
        d.post(32, VIRTIO_BLK_T_FLUSH, 0, 0);
        d.settle();
        assert!((0..33).all(|i| d.status(i) == VIRTIO_BLK_S_OK));
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&64u64.to_le_bytes());
        s[8..12].copy_from_slice(&16u32.to_le_bytes());
        d.t.write(BUFS + BUF_LEN * 33, &s);
        d.post(33, VIRTIO_BLK_T_DISCARD, 0, 16);
        d.settle();
        assert_eq!(d.status(33), VIRTIO_BLK_S_OK);
        for i in 0..32u64 {
            d.t.write(BUFS + BUF_LEN * (40 + i), &[0u8; 4096]);
            d.post(40 + i, VIRTIO_BLK_T_IN, ((i * 53) % 2000) & !7, 4096);
        }
        d.settle();
        assert!((40..72).all(|i| d.status(i) == VIRTIO_BLK_S_OK));
        reads.push((40..72).map(|i| d.buf(i, 4096)).collect::<Vec<_>>());
        let mut img = vec![0u8; 2048 * 512];
        t.as_file().read_exact_at(&mut img, 0).unwrap();
        images.push(img);
        assert_eq!(d.t.used().len(), 72 - 6, "every request answered once");
    }
    assert!(images[0] == images[1], "images differ");
    assert!(reads[0] == reads[1], "reads differ");
}

/// A batch of requests is in flight at once with io_uring, and every one is answered.
#[test]
fn many_requests_in_flight() {
    let mem = guest_mem();
    let (t, f) = disk();
    t.as_file()
        .write_all_at(&pattern(9, 2048 * 512), 0)
        .unwrap();
    let mut d = Driver::new(&mem, f, Engine::Uring, 256, None);
    for i in 0..48u64 {
        d.post(i, VIRTIO_BLK_T_IN, i * 8, 4096);
    }
    d.blk.process_queue(0).unwrap();
    let started = d.blk.in_flight() + d.t.used().len();
    assert_eq!(started, 48, "every request started in one pass");
    d.settle();
    let img = pattern(9, 2048 * 512);
    for i in 0..48u64 {
        assert_eq!(d.status(i), VIRTIO_BLK_S_OK);
        let off = (i * 8 * 512) as usize;
        assert_eq!(d.buf(i, 4096), img[off..off + 4096], "request {i}");
    }
    let mut heads: Vec<u32> = d.t.used().iter().map(|u| u.0).collect();
    heads.sort();
    heads.dedup();
    assert_eq!(heads.len(), 48);
}

/// A driver that publishes more chains than the queue holds (an inflated avail index, heads
/// reused while in flight) gets at most the queue's size in flight, and no panic.
#[test]
fn in_flight_is_bounded_by_the_queue_size() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut d = Driver::new(&mem, f, Engine::Uring, 16, None);
    for i in 0..5u64 {
        d.post(i, VIRTIO_BLK_T_IN, i * 8, 4096);
    }
    // 5 chains of 3 descriptors fill 15 of 16; repeat the published heads far beyond the ring.
    let idx = d.t.avail_idx();
    for k in 0..11u16 {
        let slot = d.t.avail_addr().0 + 4 + 2 * u64::from((idx + k) % 16);
        d.t.write(slot, &((k % 5) * 3).to_le_bytes());
    }
    d.t.set_avail_idx(idx + 11);
    d.blk.process_queue(0).unwrap();
    assert!(d.blk.in_flight() <= 16, "{}", d.blk.in_flight());
    d.settle();
    // Nothing left hanging, and an absurd avail index later is survived too.
    d.t.set_avail_idx(d.t.avail_idx().wrapping_add(1000));
    let _ = d.blk.process_queue(0);
    d.blk.complete_all();
}

/// Hostile descriptors get the same answers from io_uring as from sync.
#[test]
fn hostile_requests_fail_cleanly() {
    let mem = guest_mem();
    for engine in [Engine::Sync, Engine::Uring] {
        let (_t, f) = disk();
        let mut d = Driver::new(&mem, f, engine, 32, None);
        d.post(0, VIRTIO_BLK_T_IN, 2047, 4096); // past the end
        d.post(1, VIRTIO_BLK_T_IN, 0, 100); // not whole sectors
        d.post(2, VIRTIO_BLK_T_OUT, u64::MAX / 256, 512); // offset overflows
        d.post(3, VIRTIO_BLK_T_FLUSH, 0, 512); // flush with data
        d.post(4, 0xdead, 0, 512); // unknown type
        d.post(5, VIRTIO_BLK_T_IN, 0, 512);
        // A buffer outside guest memory.
        let h = HDRS + 16 * 6;
        let mut hb = [0u8; 16];
        hb[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        d.t.write(h, &hb);
        d.t.write(STATUSES + 6, &[0xff]);
        d.t.add_chain(&[
            (h, 16, false),
            (1 << 40, 512, true),
            (STATUSES + 6, 1, true),
        ]);
        d.settle();
        let got: Vec<u8> = (0..7).map(|i| d.status(i)).collect();
        let io = VIRTIO_BLK_S_IOERR;
        assert_eq!(
            got,
            vec![io, io, io, io, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_S_OK, io],
            "{engine}"
        );
    }
}

/// A flush in the same batch as writes is answered only after them, and fails if one of them
/// failed (the writes before it complete first: IOSQE_IO_DRAIN).
#[test]
fn flush_is_ordered_after_the_writes_before_it() {
    let mem = guest_mem();
    let (t, f) = disk();
    let mut d = Driver::new(&mem, f, Engine::Uring, 64, None);
    for i in 0..16u64 {
        d.t.write(BUFS + BUF_LEN * i, &pattern(i, 8192));
        d.post(i, VIRTIO_BLK_T_OUT, i * 16, 8192);
    }
    d.post(16, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert!((0..17).all(|i| d.status(i) == VIRTIO_BLK_S_OK));
    let used: Vec<u32> = d.t.used().iter().map(|u| u.0).collect();
    let flush_head = 16 * 3;
    assert_eq!(
        used.last(),
        Some(&flush_head),
        "flush answered last: {used:?}"
    );
    for i in 0..16u64 {
        let mut b = vec![0u8; 8192];
        t.as_file().read_exact_at(&mut b, i * 16 * 512).unwrap();
        assert_eq!(b, pattern(i, 8192));
    }

    // One write of the batch fails: the flush after it fails too, and every later one.
    d.blk.disk.image.faults.write.set(1);
    for i in 0..4u64 {
        d.post(i, VIRTIO_BLK_T_OUT, i * 16, 4096);
    }
    d.post(4, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(d.status(0), VIRTIO_BLK_S_IOERR);
    assert!((1..4).all(|i| d.status(i) == VIRTIO_BLK_S_OK));
    assert_eq!(d.status(4), VIRTIO_BLK_S_IOERR);
    d.post(5, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(d.status(5), VIRTIO_BLK_S_IOERR);
}

/// A reset with requests in flight waits for them and answers none on the new rings; the
/// bounce slots they held are released.
#[test]
fn reset_with_requests_in_flight() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let dma = Dma::bounced_from_str(mem.clone(), "size=1M,areas=1").unwrap();
    let mut d = Driver::new(&mem, f, Engine::Uring, 128, Some(dma.clone()));
    for i in 0..32u64 {
        d.post(i, VIRTIO_BLK_T_IN, i * 8, 8192);
    }
    d.blk.process_queue(0).unwrap();
    d.blk.reset();
    assert_eq!(d.blk.in_flight(), 0);
    let s = dma.stats().unwrap();
    assert_eq!(s.slots_used, 0, "{s:?}");
    assert_eq!(s.maps, s.unmaps);
    // The device works again after re-activation.
    let mut d2 = Driver {
        t: TestQueue::new(&mem, 128),
        blk: d.blk,
        _irqfd: d._irqfd,
    };
    let (irq, irqfd) = test_interrupt();
    d2._irqfd = irqfd;
    d2.blk.activate(vec![d2.t.dma_queue()], irq).unwrap();
    d2.post(0, VIRTIO_BLK_T_IN, 0, 512);
    d2.settle();
    assert_eq!(d2.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(d2.t.used().len(), 1);
}

/// `exhaustion=wait` with a pool far smaller than 32 requests' buffers: the requests that do not
/// fit wait (deferred, in order) and complete as earlier ones free their slots; the guest sees
/// no error.
#[test]
fn tiny_pool_with_exhaustion_wait_defers_instead_of_failing() {
    let mem = guest_mem();
    for engine in [Engine::Uring, Engine::Sync] {
        let (t, f) = disk();
        t.as_file()
            .write_all_at(&pattern(3, 2048 * 512), 0)
            .unwrap();
        // 64 KiB: 32 slots of 2 KiB; each 8 KiB request holds 4 + 1 while in flight.
        let dma = Dma::bounced_from_str(
            mem.clone(),
            "size=64K,segment=4,areas=1,dynamic=off,exhaustion=wait,wait-timeout=60m",
        )
        .unwrap();
        let mut d = Driver::new(&mem, f, engine, 128, Some(dma.clone()));
        // The sync engine holds nothing across passes: make its maps wait by holding most of
        // the pool from another source, released below.
        let hog = (engine == Engine::Sync).then(|| {
            (0..7)
                .map(|k| {
                    dma.map(
                        DmaSource {
                            device: 9,
                            queue: 0,
                        },
                        GuestAddress(0x30_0000 + k * 0x2000),
                        8192,
                        DmaDirection::ToDevice,
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        });
        for i in 0..32u64 {
            d.post(i, VIRTIO_BLK_T_IN, i * 16, 8192);
        }
        d.blk.process_queue(0).unwrap();
        assert!(d.blk.deferred() > 0, "{engine}: nothing was deferred");
        drop(hog);
        d.settle();
        let img = pattern(3, 2048 * 512);
        for i in 0..32u64 {
            assert_eq!(d.status(i), VIRTIO_BLK_S_OK, "{engine}: request {i}");
            let off = (i * 16 * 512) as usize;
            assert_eq!(
                d.buf(i, 8192),
                img[off..off + 8192],
                "{engine}: request {i}"
            );
        }
        let s = dma.stats().unwrap();
        assert!(s.blocking.space_blocked > 0, "{engine}: {s:?}");
        assert_eq!(s.slots_used, 0);
        // Deferred requests keep their order among themselves.
        let used: Vec<u32> = d.t.used().iter().map(|u| u.0).collect();
        assert_eq!(used.len(), 32);
        if engine == Engine::Sync {
            assert!(used.windows(2).all(|w| w[0] < w[1]), "{used:?}");
        }
    }
}

/// `exhaustion=fail` with the same tiny pool: what does not fit fails with IOERR, at once.
#[test]
fn tiny_pool_with_exhaustion_fail_gives_ioerr() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let dma = Dma::bounced_from_str(
        mem.clone(),
        "size=64K,segment=4,areas=1,dynamic=off,exhaustion=fail",
    )
    .unwrap();
    let mut d = Driver::new(&mem, f, Engine::Uring, 128, Some(dma.clone()));
    for i in 0..32u64 {
        d.post(i, VIRTIO_BLK_T_IN, i * 16, 8192);
    }
    d.settle();
    let st: Vec<u8> = (0..32).map(|i| d.status(i)).collect();
    assert!(st
        .iter()
        .all(|&s| s == VIRTIO_BLK_S_OK || s == VIRTIO_BLK_S_IOERR));
    assert!(st.contains(&VIRTIO_BLK_S_IOERR), "{st:?}");
    assert!(st.contains(&VIRTIO_BLK_S_OK), "{st:?}");
    assert_eq!(d.blk.deferred(), 0);
    assert_eq!(d.t.used().len(), 32);
    assert_eq!(dma.stats().unwrap().slots_used, 0);
}

/// DISCARD and WRITE_ZEROES go through the ring as FALLOCATE (not inline on the device's
/// thread): in one batch with writes, the writes land, the ranges read as zeroes, and the FLUSH
/// after them (IOSQE_IO_DRAIN) is answered last.
#[test]
fn discard_and_write_zeroes_are_fallocates_on_the_ring_and_flush_follows_them() {
    let mem = guest_mem();
    let (t, f) = disk();
    t.as_file().write_all_at(&[0xab; 2048 * 512], 0).unwrap();
    let mut d = Driver::new(&mem, f, Engine::Uring, 64, None);
    d.t.write(BUFS, &pattern(0, 8192));
    d.post(0, VIRTIO_BLK_T_OUT, 0, 8192);
    d.seg(1, 32, 16, 0);
    d.post(1, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16);
    d.seg(2, 64, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    d.post(2, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16);
    d.seg(3, 96, 16, 0);
    d.post(3, VIRTIO_BLK_T_DISCARD, 0, 16);
    // A discard of less than a granule has nothing to do: answered at once, no FALLOCATE.
    d.seg(4, 129, 3, 0);
    d.post(4, VIRTIO_BLK_T_DISCARD, 0, 16);
    d.post(5, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert!((0..6).all(|i| d.status(i) == VIRTIO_BLK_S_OK));
    assert_eq!(d.blk.uring.as_ref().unwrap().fallocates, 3);
    assert_eq!(
        d.blk.disk.image.faults.syncs.get(),
        0,
        "the flush was the ring's"
    );
    let used: Vec<u32> = d.t.used().iter().map(|u| u.0).collect();
    assert_eq!(used.len(), 6);
    assert_eq!(used.last(), Some(&(5 * 3)), "flush answered last: {used:?}");
    let f = t.as_file();
    assert_eq!(disk_bytes(f, 0, 8192), pattern(0, 8192));
    assert!(disk_bytes(f, 16 * 512, 16 * 512).iter().all(|&b| b == 0xab));
    for s in [32, 64, 96] {
        assert!(
            disk_bytes(f, s * 512, 16 * 512).iter().all(|&b| b == 0),
            "{s}"
        );
        assert!(disk_bytes(f, (s + 16) * 512, 16 * 512)
            .iter()
            .all(|&b| b == 0xab));
    }
    assert!(disk_bytes(f, 128 * 512, 8 * 512).iter().all(|&b| b == 0xab));
}

/// A write zeroes whose FALLOCATE fails in the kernel (ZERO_RANGE on tmpfs: EOPNOTSUPP) is
/// finished by writing zeroes when it is reaped, after the drained FLUSH behind it may already
/// have synced: that flush syncs again before it is answered. Failures: a discard that fails is
/// an IOERR and later flushes succeed (a hint); a write zeroes whose fallback fails too makes
/// every flush fail.
#[test]
fn write_zeroes_fallback_and_errors_keep_flush_semantics() {
    let mem = guest_mem();
    let t = TempFile::new_in(std::path::Path::new("/dev/shm")).unwrap();
    let f = t.as_file().try_clone().unwrap();
    f.write_all_at(&[0xab; 2048 * 512], 0).unwrap();
    let mut d = Driver::new(&mem, f, Engine::Uring, 64, None);
    d.seg(0, 40, 24, 0);
    d.post(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16);
    d.post(1, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(
        (d.status(0), d.status(1)),
        (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        d.blk.disk.late_writes, 1,
        "ZERO_RANGE failed on tmpfs and was written"
    );
    assert_eq!(
        d.blk.disk.image.faults.syncs.get(),
        1,
        "the flush synced again"
    );
    assert!(disk_bytes(t.as_file(), 40 * 512, 24 * 512)
        .iter()
        .all(|&b| b == 0));
    assert!(disk_bytes(t.as_file(), 64 * 512, 512)
        .iter()
        .all(|&b| b == 0xab));

    // A failed discard: IOERR, nothing lost.
    d.blk.disk.image.faults.write.set(1);
    d.seg(2, 0, 8, 0);
    d.post(2, VIRTIO_BLK_T_DISCARD, 0, 16);
    d.post(3, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(
        (d.status(2), d.status(3)),
        (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK)
    );

    // A write zeroes that fails, fallback included: IOERR, and every flush after it fails.
    d.blk.disk.image.faults.write.set(2);
    d.seg(4, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    d.post(4, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16);
    d.post(5, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(
        (d.status(4), d.status(5)),
        (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR)
    );
    d.post(6, VIRTIO_BLK_T_FLUSH, 0, 0);
    d.settle();
    assert_eq!(d.status(6), VIRTIO_BLK_S_IOERR);
}

/// Every `UringOptions` combination (SQPOLL, IOSQE_ASYNC, a registered file, writes on the
/// device thread) reads and writes the same data, discards included, and orders its flush last.
#[test]
fn uring_options_all_work() {
    let mem = guest_mem();
    for (sqpoll, force_async, fixed_file, inline_writes) in [
        (Some(1), false, false, false),
        (None, true, false, false),
        (None, false, true, false),
        (Some(1), true, true, false),
        (None, false, false, true),
        (Some(1), true, true, true),
    ] {
        let (t, f) = disk();
        let t2 = TestQueue::new(&mem, 64);
        let mut blk = Block::new(
            f,
            BlockConfig {
                engine: Engine::Uring,
                queue_size: 64,
                uring: UringOptions {
                    sqpoll_idle_ms: sqpoll,
                    force_async,
                    fixed_file,
                    inline_writes,
                },
                ..Default::default()
            },
        )
        .unwrap();
        let (irq, irqfd) = test_interrupt();
        blk.activate(vec![t2.dma_queue()], irq).unwrap();
        let mut d = Driver {
            t: t2,
            blk,
            _irqfd: irqfd,
        };
        // Requests in flight together are not ordered: the discard's range is written by none.
        t.as_file().write_all_at(&[0xab; 4096], 0).unwrap();
        for i in 0..8u64 {
            d.t.write(BUFS + BUF_LEN * i, &pattern(i, 4096));
            d.post(i, VIRTIO_BLK_T_OUT, (i + 1) * 8, 4096);
        }
        d.seg(8, 0, 8, 0);
        d.post(8, VIRTIO_BLK_T_DISCARD, 0, 16);
        d.post(9, VIRTIO_BLK_T_FLUSH, 0, 0);
        d.settle();
        let what = format!(
            "sqpoll {sqpoll:?} async {force_async} fixed {fixed_file} inline {inline_writes}"
        );
        // The writes went through the ring, or none did; the discard always does.
        let ring = d.blk.uring.as_ref().unwrap();
        assert_eq!(ring.writes, if inline_writes { 0 } else { 8 }, "{what}");
        assert_eq!(ring.fallocates, 1, "{what}");
        assert!((0..10).all(|i| d.status(i) == VIRTIO_BLK_S_OK), "{what}");
        assert_eq!(d.t.used().last().map(|u| u.0), Some(9 * 3), "{what}");
        for i in 1..8u64 {
            d.post(10 + i, VIRTIO_BLK_T_IN, (i + 1) * 8, 4096);
        }
        d.settle();
        for i in 1..8u64 {
            assert_eq!(d.status(10 + i), VIRTIO_BLK_S_OK, "{what}");
            assert_eq!(d.buf(10 + i, 4096), pattern(i, 4096), "{what}");
        }
        assert!(
            disk_bytes(t.as_file(), 0, 4096).iter().all(|&b| b == 0),
            "{what}"
        );
    }
}
