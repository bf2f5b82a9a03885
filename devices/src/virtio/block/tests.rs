use std::io::{Read, Seek, SeekFrom, Write};

use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::test_utils::*;

mod durability;
mod limit;
mod uring;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const DATA2: u64 = 0x18_0000;
const STATUS: u64 = 0x1f_0000;
const DISK_SECTORS: u64 = 2048;

fn disk() -> (TempFile, File) {
    let t = TempFile::new().unwrap();
    let f = t.as_file().try_clone().unwrap();
    f.set_len(DISK_SECTORS * SECTOR_SIZE).unwrap();
    (t, f)
}

fn hdr(t: &TestQueue, req: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&req.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    t.write(HDR, &h);
}

fn status(t: &TestQueue) -> u8 {
    t.read(STATUS, 1)[0]
}

/// Runs one chain through a fresh device; returns (used len, status byte).
fn run(cfg: BlockConfig, file: File, t: &mut TestQueue, descs: &[(u64, u32, bool)]) -> (u32, u8) {
    t.write(STATUS, &[0xff]);
    t.add_chain(descs);
    let mut blk = Block::new(file, cfg).unwrap();
    let (irq, irqfd) = test_interrupt();
    let n = blk.queue_max_sizes().len();
    let mut qs = vec![t.dma_queue()];
    for _ in 1..n {
        qs.push(
            DmaQueue::new(256, bounce::Dma::direct(t.mem.clone()), Default::default()).unwrap(),
        );
    }
    blk.activate(qs, irq).unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(irqfd.read().unwrap(), 1, "used-ring interrupt");
    let used = t.used();
    let last = *used.last().unwrap();
    (last.1, status(t))
}

#[test]
fn write_then_read_round_trip() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut blk = Block::new(f.try_clone().unwrap(), BlockConfig::default()).unwrap();
    let mut t = TestQueue::new(&mem, 16);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    t.write(DATA, &pattern);
    hdr(&t, VIRTIO_BLK_T_OUT, 3);
    t.add_chain(&[
        (HDR, 16, false),
        (DATA, 512, false),
        (DATA + 512, 512, false),
        (STATUS, 1, true),
    ]);
    let (irq, _e) = test_interrupt();
    blk.activate(vec![t.dma_queue()], irq).unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(status(&t), VIRTIO_BLK_S_OK);
    assert_eq!(t.used(), vec![(0, 1)]);

    let mut on_disk = vec![0u8; 1024];
    let mut g = f.try_clone().unwrap();
    g.seek(SeekFrom::Start(3 * 512)).unwrap();
    g.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);

    // Read it back (header rewritten in place: the previous request is complete).
    hdr(&t, VIRTIO_BLK_T_IN, 3);
    t.write(STATUS, &[0xff]);
    t.add_chain(&[(HDR, 16, false), (DATA2, 1024, true), (STATUS, 1, true)]);
    blk.process_queue(0).unwrap();
    assert_eq!(status(&t), VIRTIO_BLK_S_OK);
    assert_eq!(t.used()[1], (4, 1025));
    assert_eq!(t.read(DATA2, 1024), pattern);
}

#[test]
fn flush_and_get_id() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_FLUSH, 0);
    let cfg = BlockConfig {
        serial: "microvm-disk-0".into(),
        ..Default::default()
    };
    assert_eq!(
        run(
            cfg.clone(),
            f.try_clone().unwrap(),
            &mut t,
            &[(HDR, 16, false), (STATUS, 1, true)]
        ),
        (1, VIRTIO_BLK_S_OK)
    );

    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_GET_ID, 0);
    let r = run(
        cfg,
        f,
        &mut t,
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    assert_eq!(r, (21, VIRTIO_BLK_S_OK));
    let mut want = [0u8; 20];
    want[..14].copy_from_slice(b"microvm-disk-0");
    assert_eq!(t.read(DATA, 20), want);
}

fn seg(t: &TestQueue, sector: u64, n: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&n.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    t.write(DATA, &s);
}

/// The image's bytes at byte offset `off`, `len` of them.
fn disk_bytes(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut v, off).unwrap();
    v
}

#[test]
fn discard_and_write_zeroes() {
    let mem = guest_mem();
    for (req, flags) in [
        (VIRTIO_BLK_T_DISCARD, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
    ] {
        let (_t, f) = disk();
        f.try_clone().unwrap().write_all(&[0xab; 64 * 512]).unwrap();
        let mut t = TestQueue::new(&mem, 16);
        hdr(&t, req, 0);
        seg(&t, 8, 16, flags);
        let r = run(
            BlockConfig::default(),
            f.try_clone().unwrap(),
            &mut t,
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        );
        assert_eq!(r, (1, VIRTIO_BLK_S_OK), "request {req} flags {flags}");
        assert!(disk_bytes(&f, 8 * 512, 16 * 512).iter().all(|&b| b == 0));
        assert!(disk_bytes(&f, 0, 8 * 512).iter().all(|&b| b == 0xab));
        assert!(disk_bytes(&f, 24 * 512, 8 * 512).iter().all(|&b| b == 0xab));
    }
}

#[test]
fn discard_errors() {
    let mem = guest_mem();
    let cases: &[(u32, u64, u32, u32, u8)] = &[
        // discard takes no flags
        (VIRTIO_BLK_T_DISCARD, 0, 8, 1, VIRTIO_BLK_S_UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 2, VIRTIO_BLK_S_UNSUPP),
        (
            VIRTIO_BLK_T_DISCARD,
            DISK_SECTORS - 4,
            8,
            0,
            VIRTIO_BLK_S_IOERR,
        ),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            u64::MAX / 256,
            8,
            0,
            VIRTIO_BLK_S_IOERR,
        ),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            MAX_WRITE_ZEROES_SECTORS + 1,
            0,
            VIRTIO_BLK_S_IOERR,
        ),
        (
            VIRTIO_BLK_T_DISCARD,
            0,
            MAX_DISCARD_SECTORS + 1,
            0,
            VIRTIO_BLK_S_IOERR,
        ),
        (VIRTIO_BLK_T_DISCARD, 0, u32::MAX, 0, VIRTIO_BLK_S_IOERR),
        // Misaligned and out of the disk: the range check still applies.
        (
            VIRTIO_BLK_T_DISCARD,
            DISK_SECTORS - 3,
            5,
            0,
            VIRTIO_BLK_S_IOERR,
        ),
    ];
    for &(req, sector, n, flags, want) in cases {
        let (_t, f) = disk();
        let mut t = TestQueue::new(&mem, 16);
        hdr(&t, req, 0);
        seg(&t, sector, n, flags);
        let r = run(
            BlockConfig::default(),
            f,
            &mut t,
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        );
        assert_eq!(r, (1, want), "{req} {sector} {n} {flags}");
    }
}

#[test]
fn readonly_disk() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let cfg = BlockConfig {
        readonly: true,
        ..Default::default()
    };
    let blk = Block::new(f.try_clone().unwrap(), cfg.clone()).unwrap();
    assert_ne!(blk.features() & feature(VIRTIO_BLK_F_RO), 0);
    assert_eq!(blk.features() & feature(VIRTIO_BLK_F_DISCARD), 0);

    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_OUT, 0);
    let r = run(
        cfg.clone(),
        f.try_clone().unwrap(),
        &mut t,
        &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
    );
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));

    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_DISCARD, 0);
    seg(&t, 0, 8, 0);
    let r = run(
        cfg,
        f,
        &mut t,
        &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
    );
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn malformed_requests_get_ioerr() {
    let mem = guest_mem();
    let io = VIRTIO_BLK_S_IOERR;
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, u32, u64, Vec<(u64, u32, bool)>, (u32, u8))> = vec![
        (
            "short header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "long header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 17, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "writable header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "only status",
            VIRTIO_BLK_T_IN,
            0,
            vec![(STATUS, 1, true)],
            (1, io),
        ),
        (
            "read into readable",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "write from writable",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "mixed directions",
            VIRTIO_BLK_T_IN,
            0,
            vec![
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA2, 512, false),
                (STATUS, 1, true),
            ],
            (1, io),
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "zero-length data",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(HDR, 16, false), (DATA, 0, false), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "past the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "straddles the end",
            VIRTIO_BLK_T_OUT,
            DISK_SECTORS - 1,
            vec![(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "sector overflow",
            VIRTIO_BLK_T_IN,
            u64::MAX,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "offset overflow",
            VIRTIO_BLK_T_IN,
            u64::MAX >> 9,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "segment too large",
            VIRTIO_BLK_T_IN,
            0,
            vec![
                (HDR, 16, false),
                (DATA, SIZE_MAX + 512, true),
                (STATUS, 1, true),
            ],
            (1, io),
        ),
        (
            "data outside memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![
                (HDR, 16, false),
                (MEM_SIZE as u64 - 256, 512, true),
                (STATUS, 1, true),
            ],
            (1, io),
        ),
        (
            "flush with data",
            VIRTIO_BLK_T_FLUSH,
            0,
            vec![(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "get-id readable",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![(HDR, 16, false), (DATA, 20, false), (STATUS, 1, true)],
            (1, io),
        ),
        (
            "unknown type",
            99,
            0,
            vec![(HDR, 16, false), (STATUS, 1, true)],
            (1, VIRTIO_BLK_S_UNSUPP),
        ),
        // No usable status byte: returned with used length 0, status untouched.
        (
            "readable status",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
            (0, 0xff),
        ),
        (
            "zero-length status",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 0, true)],
            (0, 0xff),
        ),
        (
            "status outside memory",
            VIRTIO_BLK_T_FLUSH,
            0,
            vec![(HDR, 16, false), (MEM_SIZE as u64, 1, true)],
            (0, 0xff),
        ),
    ];
    for (name, req, sector, descs, want) in cases {
        let (_t, f) = disk();
        let mut t = TestQueue::new(&mem, 16);
        hdr(&t, req, sector);
        let got = run(BlockConfig::default(), f, &mut t, &descs);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn too_many_segments() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let cfg = BlockConfig {
        queue_size: 4, // seg_max = 2
        ..Default::default()
    };
    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_IN, 0);
    let descs = [
        (HDR, 16, false),
        (DATA, 512, true),
        (DATA + 512, 512, true),
        (DATA + 1024, 512, true),
        (STATUS, 1, true),
    ];
    assert_eq!(run(cfg, f, &mut t, &descs), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn size_max_is_the_configured_dma_limit() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let size_max = |cfg: BlockConfig| {
        let blk = Block::new(f.try_clone().unwrap(), cfg).unwrap();
        let mut b = [0u8; 4];
        blk.read_config(8, &mut b);
        u32::from_le_bytes(b)
    };
    let limited = |size_max| BlockConfig {
        size_max,
        ..Default::default()
    };
    assert_eq!(size_max(BlockConfig::default()), SIZE_MAX);
    assert_eq!(size_max(limited(256 << 10)), 256 << 10);
    // Clamped: below a page (Linux would raise it to one) and above the device's own limit.
    assert_eq!(size_max(limited(64)), 4096);
    assert_eq!(size_max(limited(u32::MAX)), SIZE_MAX);
    // Enforced: a segment past the advertised limit fails, one at it succeeds.
    for (len, want) in [(8192, VIRTIO_BLK_S_IOERR), (4096, VIRTIO_BLK_S_OK)] {
        let mut t = TestQueue::new(&mem, 16);
        hdr(&t, VIRTIO_BLK_T_IN, 0);
        let descs = [(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)];
        assert_eq!(
            run(limited(4096), f.try_clone().unwrap(), &mut t, &descs).1,
            want
        );
    }
}

#[test]
fn broken_chains_are_returned_not_stalled() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut blk = Block::new(f, BlockConfig::default()).unwrap();
    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_FLUSH, 0);
    // Chain 0 loops back on itself.
    t.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    t.set_desc(1, STATUS, 1, (VRING_F_WRITE | VRING_F_NEXT) as u16, 0);
    // Chain 2: next index out of the table.
    t.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    t.set_desc(2, HDR, 16, VRING_F_NEXT as u16, 200);
    // Chain 4: fine, and must still be served.
    t.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    let (irq, _e) = test_interrupt();
    blk.activate(vec![t.dma_queue()], irq).unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(t.used(), vec![(0, 0), (2, 0), (4, 1)]);
    assert_eq!(status(&t), VIRTIO_BLK_S_OK);
}

const VRING_F_NEXT: u32 = 1;
const VRING_F_WRITE: u32 = 2;

#[test]
fn multiqueue_and_config_space() {
    let mem = guest_mem();
    let (_t, f) = disk();
    let cfg = BlockConfig {
        num_queues: 2,
        ..Default::default()
    };
    let mut blk = Block::new(f, cfg).unwrap();
    assert_ne!(blk.features() & feature(VIRTIO_BLK_F_MQ), 0);
    let mut b = [0u8; 8];
    blk.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), DISK_SECTORS);
    let mut nq = [0u8; 2];
    blk.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 2);
    let mut past = [0xffu8; 4];
    blk.read_config(1000, &mut past);
    assert_eq!(past, [0; 4]);

    let t0 = TestQueue::new(&mem, 16);
    let mut t1 = TestQueue::at(&mem, 0x8000, 16);
    hdr(&t1, VIRTIO_BLK_T_FLUSH, 0);
    t1.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    let (irq, _e) = test_interrupt();
    blk.activate(vec![t0.dma_queue(), t1.dma_queue()], irq)
        .unwrap();
    blk.process_queue(1).unwrap();
    assert_eq!(t1.used(), vec![(0, 1)]);
    assert!(t0.used().is_empty());
    assert!(blk.process_queue(2).is_err());
    blk.reset();
    assert!(blk.process_queue(0).is_err());
}

#[test]
fn rejects_bad_queue_config() {
    let (_t, f) = disk();
    for (n, qs) in [(0, 256), (1, 0), (1, 1), (1, 100)] {
        let cfg = BlockConfig {
            num_queues: n,
            queue_size: qs,
            ..Default::default()
        };
        assert!(Block::new(f.try_clone().unwrap(), cfg).is_err());
    }
}

#[test]
fn bounced_buffers_longer_than_a_segment_are_split() {
    // 8 KiB segments (4 slots of 2 KiB): a 24 KiB data descriptor needs three mappings.
    let mem = guest_mem();
    let (_t, f) = disk();
    let dma = bounce::Dma::bounced_from_str(mem.clone(), "size=64K,segment=4,areas=1").unwrap();
    let len = 24 * 1024u32;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut t = TestQueue::new(&mem, 16);
    t.write(DATA, &pattern);
    hdr(&t, VIRTIO_BLK_T_OUT, 8);
    t.add_chain(&[(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)]);
    let mut blk = Block::new(f.try_clone().unwrap(), BlockConfig::default()).unwrap();
    let (irq, _e) = test_interrupt();
    blk.activate(vec![t.dma_queue_with(dma.clone())], irq)
        .unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(status(&t), VIRTIO_BLK_S_OK);

    let mut on_disk = vec![0u8; len as usize];
    let mut g = f.try_clone().unwrap();
    g.seek(SeekFrom::Start(8 * 512)).unwrap();
    g.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);

    // Read it back into other guest memory, through the same small segments.
    t.write(DATA2, &vec![0u8; len as usize]);
    hdr(&t, VIRTIO_BLK_T_IN, 8);
    t.add_chain(&[(HDR, 16, false), (DATA2, len, true), (STATUS, 1, true)]);
    blk.process_queue(0).unwrap();
    assert_eq!(status(&t), VIRTIO_BLK_S_OK);
    assert_eq!(t.read(DATA2, len as usize), pattern);
    let stats = dma.stats().unwrap();
    assert_eq!((stats.failures.too_large, stats.maps), (0, 2 * (3 + 2)));
}

#[test]
fn request_bigger_than_the_bounce_pool_gets_ioerr_and_frees_its_slots() {
    // A 16 KiB pool without growth: a 24 KiB request cannot be mapped as a whole.
    let mem = guest_mem();
    let (_t, f) = disk();
    let dma = bounce::Dma::bounced_from_str(
        mem.clone(),
        "size=16K,segment=4,areas=1,dynamic=off,transient=off",
    )
    .unwrap();
    let mut t = TestQueue::new(&mem, 16);
    hdr(&t, VIRTIO_BLK_T_OUT, 0);
    t.write(STATUS, &[0xff]);
    t.add_chain(&[
        (HDR, 16, false),
        (DATA, 24 * 1024, false),
        (STATUS, 1, true),
    ]);
    let mut blk = Block::new(f, BlockConfig::default()).unwrap();
    let (irq, _e) = test_interrupt();
    blk.activate(vec![t.dma_queue_with(dma.clone())], irq)
        .unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(status(&t), VIRTIO_BLK_S_IOERR);
    let stats = dma.stats().unwrap();
    assert!(stats.failures.no_space > 0, "{stats:?}");
    assert_eq!(stats.slots_used, 0, "mapped pieces were released");
    assert_eq!(stats.maps, stats.unmaps);
}

#[test]
fn discard_deallocates_whole_granules_write_zeroes_the_exact_range() {
    let mem = guest_mem();
    let align = u64::from(DISCARD_SECTOR_ALIGNMENT);
    assert_eq!(align, 8);
    // (request, flags, first sector, sectors) -> the sectors that read as zero afterwards.
    let cases: &[(u32, u32, u64, u32, std::ops::Range<u64>)] = &[
        // Head and tail outside whole 4 KiB granules are left alone.
        (VIRTIO_BLK_T_DISCARD, 0, 3, 18, 8..16),
        (VIRTIO_BLK_T_DISCARD, 0, 8, 15, 8..16),
        (VIRTIO_BLK_T_DISCARD, 0, 1, 6, 0..0),
        (VIRTIO_BLK_T_DISCARD, 0, 16, 8, 16..24),
        // Write zeroes has no alignment (discard_sector_alignment is discard's): exact.
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 3, 18, 3..21),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            3,
            18,
            3..21,
        ),
    ];
    for &(req, flags, sector, n, ref zeroed) in cases {
        let (_t, f) = disk();
        f.try_clone().unwrap().write_all(&[0xab; 64 * 512]).unwrap();
        let mut t = TestQueue::new(&mem, 16);
        hdr(&t, req, 0);
        seg(&t, sector, n, flags);
        let r = run(
            BlockConfig::default(),
            f.try_clone().unwrap(),
            &mut t,
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        );
        assert_eq!(r, (1, VIRTIO_BLK_S_OK), "{req} {sector}+{n}");
        let on_disk = disk_bytes(&f, 0, 64 * 512);
        for (s, bytes) in on_disk.chunks(512).enumerate() {
            let want = if zeroed.contains(&(s as u64)) {
                0
            } else {
                0xab
            };
            assert!(
                bytes.iter().all(|&b| b == want),
                "{req} {sector}+{n}: sector {s}"
            );
        }
    }
}
