//! Durability under faults and the image lock.

use std::fs::File;

use super::super::*;
use super::{disk, hdr, seg, status, DATA, HDR, STATUS};
use crate::virtio::test_utils::*;

/// A device on a fresh queue, for tests that send several requests in turn.
struct Rig<'a> {
    blk: Block,
    t: TestQueue<'a>,
    _irqfd: vmm_sys_util::eventfd::EventFd,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a vm_memory::GuestMemoryMmap, file: File, cfg: BlockConfig) -> Rig<'a> {
        let mut r = Rig {
            blk: Block::new(file, cfg).unwrap(),
            t: TestQueue::new(mem, 16),
            _irqfd: test_interrupt().1,
        };
        r.activate();
        r
    }

    /// The driver resets the device and sets it up again.
    fn reset(&mut self) {
        self.blk.reset();
        self.t = TestQueue::new(self.t.mem, 16);
        self.activate();
    }

    fn activate(&mut self) {
        let (irq, irqfd) = test_interrupt();
        self._irqfd = irqfd;
        self.blk.activate(vec![self.t.dma_queue()], irq).unwrap();
    }

    /// Sends one request; returns its status byte.
    fn request(&mut self, req: u32, sector: u64, data: Option<(u32, bool)>) -> u8 {
        hdr(&self.t, req, sector);
        self.t.write(STATUS, &[0xff]);
        match data {
            Some((len, w)) => {
                self.t
                    .add_chain(&[(HDR, 16, false), (DATA, len, w), (STATUS, 1, true)])
            }
            None => self.t.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]),
        };
        self.blk.process_queue(0).unwrap();
        self.blk.complete_all();
        status(&self.t)
    }

    fn flush(&mut self) -> u8 {
        self.request(VIRTIO_BLK_T_FLUSH, 0, None)
    }

    fn faults(&self) -> &image::Faults {
        &self.blk.disk.image.faults
    }
}

fn engine(engine: Engine) -> BlockConfig {
    BlockConfig {
        engine,
        ..Default::default()
    }
}

#[test]
fn after_a_failed_fdatasync_every_flush_fails_until_reset() {
    failed_fdatasync(Engine::Sync);
    failed_fdatasync(Engine::Uring);
}

#[test]
fn after_a_failed_write_every_flush_fails_until_reset() {
    failed_write(Engine::Sync);
    failed_write(Engine::Uring);
}

fn failed_fdatasync(e: Engine) {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut r = Rig::new(&mem, f, engine(e));
    assert_eq!(r.flush(), VIRTIO_BLK_S_OK);
    r.faults().sync.set(1);
    assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    // The next fdatasyncs would succeed (the kernel reported its error once): the device does
    // not believe them.
    assert_eq!(r.faults().sync.get(), 0);
    for _ in 0..3 {
        assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    }
    // Reads and writes still work; only durability is in doubt.
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((512, false))),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 0, Some((512, true))),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    r.reset();
    assert_eq!(r.flush(), VIRTIO_BLK_S_OK);
}

fn failed_write(e: Engine) {
    let mem = guest_mem();
    let (_t, f) = disk();
    let mut r = Rig::new(&mem, f, engine(e));
    r.faults().write.set(1);
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 8, Some((4096, false))),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(r.faults().write.get(), 0);
    assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    r.reset();
    assert_eq!(r.flush(), VIRTIO_BLK_S_OK);

    // Write zeroes is a write: both its hole punch and its fallback fail here.
    r.faults().write.set(2);
    seg(&r.t, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((16, false))),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(r.flush(), VIRTIO_BLK_S_IOERR);
    r.reset();

    // A hole punch that fails but falls back to writing zeroes lost nothing.
    r.faults().write.set(1);
    seg(&r.t, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((16, false))),
        VIRTIO_BLK_S_OK
    );
    // Nor does a failed discard (a hint): the request fails, FLUSH does not.
    r.faults().write.set(1);
    seg(&r.t, 0, 8, 0);
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, Some((16, false))),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(r.flush(), VIRTIO_BLK_S_OK);
}

#[test]
fn images_are_locked_exclusively_for_writing_and_shared_for_reading() {
    // Two opens of one file: OFD locks conflict between them even in one process, as between
    // two microvms.
    let (t, _f) = disk();
    let open = |write| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(t.as_path())
            .unwrap()
    };
    let cfg = |readonly| BlockConfig {
        readonly,
        ..Default::default()
    };
    let locked = |r: Result<Block, BlockError>| matches!(r, Err(BlockError::Locked));

    let writer = Block::new(open(true), cfg(false)).unwrap();
    assert!(locked(Block::new(open(true), cfg(false))));
    assert!(locked(Block::new(open(false), cfg(true))));
    drop(writer);

    let reader = Block::new(open(false), cfg(true)).unwrap();
    let reader2 = Block::new(open(false), cfg(true)).unwrap();
    assert!(locked(Block::new(open(true), cfg(false))));
    drop((reader, reader2));
    Block::new(open(true), cfg(false)).unwrap();

    assert_eq!(
        BlockError::Locked.to_string(),
        "the disk image is in use by another process (locked)"
    );
}
