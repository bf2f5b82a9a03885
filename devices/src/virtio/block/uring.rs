//! The io_uring engine: many requests in flight per queue.
//!
//! A read or write becomes one `READV`/`WRITEV` on the image at the request's offset, straight
//! from or into its mapped buffers (the bounce slots when bouncing); a flush becomes one
//! `FSYNC(DATASYNC)`; a discard one `FALLOCATE(PUNCH_HOLE | KEEP_SIZE)` of its whole granules, a
//! write zeroes one `FALLOCATE` too (`PUNCH_HOLE` if the driver allows unmapping, else
//! `ZERO_RANGE`; if the kernel refuses it, zeroes are written synchronously when it is reaped).
//! The kernel runs a `FALLOCATE` on an io-wq worker, so a large one no longer stalls the
//! device's other requests as the inline `fallocate` did. Submissions are batched: one
//! `io_uring_enter` per pass over a queue, after which what completed inside it (reads from the
//! page cache, mostly) is reaped at once. Every
//! completion is also signalled on an eventfd the device's event loop polls (registered with
//! `IORING_REGISTER_EVENTFD` at set-up; the same eventfd the bounce pools wake for deferred
//! maps), which brings the event loop back for what completes later.
//!
//! **Buffers live until completion.** A submitted request ([`Prepared`]) owns its mappings
//! (`bounce::OwnedDmaBuffer`): the bounce slot (or guest page) the kernel reads or writes stays
//! mapped, and so valid, until its completion is reaped here (`Mapping::host_ptr`: a slot's
//! memory lives until the mapping is freed; guest memory lives as long as the `Dma` handle each
//! buffer holds). The iovec array is owned beside it. Nothing is dropped while in flight: reset
//! and drop wait for every completion first ([`Uring::wait_idle`]), and a request the kernel never
//! completes is leaked rather than freed under it.
//!
//! **FLUSH ordering.** A flush must cover the writes the driver saw completed before it sent
//! the flush; the driver may also have writes in flight it expects a flush to cover. The flush's
//! SQE carries `IOSQE_IO_DRAIN`: the kernel starts it only once every SQE submitted before it has
//! completed (and starts later SQEs only after it), so every write submitted earlier, on any
//! queue, is either on disk or has failed before `fdatasync` runs; their completions precede the
//! flush's in the completion ring, so a failed write has made the flush fail (sticky, as with the
//! sync engine) by the time the flush is answered. The alternative, holding the flush in the
//! device until the queue has nothing in flight, orders the same but costs an extra pass through
//! the event loop and needs per-queue bookkeeping across queues; the drain stalls the ring only
//! for the flush's own duration, which a flush costs anyway. Discards and write zeroes are
//! ordered the same way (a write zeroes' failure is a failed write). What the device writes
//! synchronously when it reaps a completion (the rest of a short write, a write zeroes'
//! fallback) is not covered by a drained flush that may already have run: a flush answered after
//! such a write syncs once more first (`Disk::late_writes`).
//!
//! **Options** (`UringOptions`). SQPOLL: a kernel thread (`iou-sqp-*`, created at set-up,
//! before any seccomp filter; it makes no system calls a filter could see) takes SQEs from the
//! ring as they are pushed and issues them, so a page-cache read's copy into the bounce slot
//! runs on it while the device thread copies earlier completions out; the device thread calls
//! `io_uring_enter` only to wake it after its idle time. It spends a host core. `IOSQE_ASYNC`
//! and a registered file are there to be measured (devices/benches/block.rs).
//!
//! (A request the ring cannot take, its submission queue being full even after a submit, is done
//! synchronously instead; for a flush that still covers every write the driver has seen
//! completed, which is all virtio and Linux's `REQ_PREFLUSH` ask. The ring is sized for every
//! queue's requests in flight, so this does not happen in practice.)
//!
//! **Short transfers** (the kernel may return fewer bytes than asked: `MAX_RW_COUNT`, a signal)
//! are finished synchronously from where the kernel stopped. More iovecs than `IOV_MAX` (a
//! hostile `seg_max` request split into pieces) go the synchronous way entirely.

use std::io;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::request::{IoKind, Prepared};
use super::UringOptions;

/// Linux's `UIO_MAXIOV`: a readv/writev with more iovecs fails with EINVAL.
pub(super) const IOV_MAX: usize = 1024;

/// Longest iovec vector kept for reuse.
const POOLED_IOVECS: usize = 64;

/// Largest ring microvm asks for (in-flight requests beyond it wait in the SQ or the overflow
/// list, which `IORING_FEAT_NODROP` kernels keep).
const MAX_ENTRIES: u32 = 4096;

/// A submitted request.
struct Op {
    queue: usize,
    /// The device's reset generation when submitted: a completion from before a reset is not
    /// answered on the new queues.
    epoch: u64,
    req: Prepared,
    /// The iovecs the kernel reads (owned here until completion, then back to the pool).
    iovecs: Iovecs,
}

/// A request's iovecs: pointers into its own mapped buffers. Only kept alive for the kernel,
/// which reads them; never read here. The vector is reused for later requests once its request
/// completed (no allocation per request).
struct Iovecs(Vec<libc::iovec>);

// SAFETY: the pointers point into the buffers of the `Prepared` request beside them in `Op`
// (`OwnedDmaBuffer`s, which are Send), or nowhere once back in the pool; they are only read by
// the kernel while the request is in flight, never dereferenced here.
unsafe impl Send for Iovecs {}

/// A completed request, for the device to answer.
pub(super) struct Completion {
    pub queue: usize,
    pub req: Prepared,
    /// Bytes transferred (0 for a flush), or the error.
    pub result: io::Result<u64>,
}

/// Whether this kernel has io_uring with what the engine needs (READV, WRITEV, FSYNC,
/// FALLOCATE, and eventfd notification). Call at start-up, before any seccomp filter.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [
        ("READV", opcode::Readv::CODE),
        ("WRITEV", opcode::Writev::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("FALLOCATE", opcode::Fallocate::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    Ok(())
}

pub(super) struct Uring {
    ring: IoUring,
    fd: RawFd,
    opts: UringOptions,
    /// In-flight requests by `user_data`.
    slots: Vec<Option<Op>>,
    /// Emptied iovec vectors of completed requests, for the next ones.
    iov_pool: Vec<Iovecs>,
    free: Vec<usize>,
    in_flight: usize,
    /// SQEs pushed since the last `io_uring_enter`.
    unsubmitted: usize,
    /// FALLOCATE SQEs pushed (tests: a discard or write zeroes went through the ring).
    #[cfg(test)]
    pub fallocates: usize,
    /// Write SQEs pushed (tests: a write went through the ring).
    #[cfg(test)]
    pub writes: usize,
    epoch: u64,
}

impl Uring {
    /// A ring for the image `fd` (which must outlive it), for up to `capacity` requests in flight,
    /// signalling `eventfd` on completions. Set-up only: `io_uring_setup` and
    /// `io_uring_register` are not allowed at run time.
    pub fn new(
        fd: RawFd,
        capacity: usize,
        eventfd: RawFd,
        opts: UringOptions,
    ) -> io::Result<Uring> {
        let entries = u32::try_from(capacity.max(8))
            .unwrap_or(MAX_ENTRIES)
            .next_power_of_two()
            .min(MAX_ENTRIES);
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries.saturating_mul(2));
        if let Some(idle) = opts.sqpoll_idle_ms {
            builder.setup_sqpoll(idle);
        }
        let ring = builder.build(entries)?;
        if opts.fixed_file {
            ring.submitter().register_files(&[fd])?;
        }
        // Every completion signals the eventfd, also those reaped right after the submit (a
        // wasted event-loop pass). Not IORING_REGISTER_EVENTFD_ASYNC: it signals only for
        // completions posted by io-wq workers, not for those posted by task work on this
        // thread (an async buffered read finishing), which would then sit unreaped.
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Uring {
            ring,
            fd,
            opts,
            slots: Vec::new(),
            iov_pool: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unsubmitted: 0,
            #[cfg(test)]
            fallocates: 0,
            #[cfg(test)]
            writes: 0,
            epoch: 0,
        })
    }

    /// Queues `req`'s I/O (submitted at the next [`Uring::submit`]). Gives the request back if
    /// it must be done synchronously instead (too many iovecs, or no room in the ring).
    pub fn push(&mut self, queue: usize, req: Prepared) -> Result<(), Prepared> {
        if req.data.len() > IOV_MAX || (self.opts.inline_writes && req.kind == IoKind::Write) {
            return Err(req);
        }
        let mut iovecs = self.iov_pool.pop().unwrap_or(Iovecs(Vec::new()));
        iovecs.0.clear();
        iovecs.0.extend(req.data.iter().map(|b| libc::iovec {
            // The guard only tracks dirty pages (none here); the pointer stays valid while
            // the mapping lives (see the module's documentation).
            iov_base: b.slice().ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        }));
        let n = iovecs.0.len() as u32; // ≤ IOV_MAX
        let (offset, len) = (req.offset, req.len);
        // A discard, or a write zeroes the driver lets unmap: a hole; else zeroes in place.
        let fallocate_mode = libc::FALLOC_FL_KEEP_SIZE
            | if matches!(req.kind, IoKind::WriteZeroes { unmap: false }) {
                libc::FALLOC_FL_ZERO_RANGE
            } else {
                libc::FALLOC_FL_PUNCH_HOLE
            };
        // The image by its registered index, or by its fd.
        macro_rules! sqe {
            ($fd:expr) => {
                match req.kind {
                    IoKind::Read => opcode::Readv::new($fd, iovecs.0.as_ptr(), n)
                        .offset(offset)
                        .build(),
                    IoKind::Write => opcode::Writev::new($fd, iovecs.0.as_ptr(), n)
                        .offset(offset)
                        .build(),
                    // IOSQE_IO_DRAIN: after every SQE submitted before it (module docs).
                    IoKind::Flush => opcode::Fsync::new($fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .flags(squeue::Flags::IO_DRAIN),
                    IoKind::Discard | IoKind::WriteZeroes { .. } => {
                        opcode::Fallocate::new($fd, len)
                            .offset(offset)
                            .mode(fallocate_mode)
                            .build()
                    }
                }
            };
        }
        let mut sqe = if self.opts.fixed_file {
            sqe!(types::Fixed(0))
        } else {
            sqe!(types::Fd(self.fd))
        };
        if self.opts.force_async && matches!(req.kind, IoKind::Read | IoKind::Write) {
            sqe = sqe.flags(squeue::Flags::ASYNC);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let sqe = sqe.user_data(slot as u64);
        for attempt in 0..2 {
            // SAFETY: the SQE points at `iovecs` (moved into the slot below: a vector's heap
            // memory does not move, and it is not touched until the completion is reaped) and
            // through them at the request's mapped buffers, which the slot owns until the
            // completion is reaped (`reap`; `wait_idle` before any drop).
            // The image fd outlives the ring (the device owns both and drops the ring first).
            // If the push fails nothing was queued, and the request is given back intact.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                break;
            }
            // SQ full (more in flight than the ring was sized for, or submissions refused):
            // hand what is queued to the kernel and try once more, else do it synchronously.
            let submitted = attempt == 0 && self.submit().is_ok();
            if !submitted {
                self.free.push(slot);
                self.iov_pool.push(iovecs);
                return Err(req);
            }
        }
        self.slots[slot] = Some(Op {
            queue,
            epoch: self.epoch,
            req,
            iovecs,
        });
        self.in_flight += 1;
        self.unsubmitted += 1;
        #[cfg(test)]
        match self.slots[slot].as_ref().map(|o| o.req.kind) {
            Some(IoKind::Discard | IoKind::WriteZeroes { .. }) => self.fallocates += 1,
            Some(IoKind::Write) => self.writes += 1,
            _ => {}
        }
        Ok(())
    }

    /// Submits the SQEs queued since the last call (one `io_uring_enter`).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every completion posted so far into `out` (no system call: the completion ring is
    /// shared memory). Completions of requests submitted before the last [`Uring::forget_epoch`]
    /// are dropped here (their mappings released) instead.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let Uring {
            ring,
            slots,
            iov_pool,
            free,
            in_flight,
            epoch,
            ..
        } = self;
        for cqe in ring.completion() {
            let Ok(slot) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(op) = slots.get_mut(slot).and_then(Option::take) else {
                crate::error_limited!("virtio-blk: io_uring completion for unknown slot {slot}");
                continue;
            };
            free.push(slot);
            *in_flight -= 1;
            // The kernel is done with the iovecs. (A hostile request's long vector is not kept.)
            if op.iovecs.0.capacity() <= POOLED_IOVECS {
                iov_pool.push(op.iovecs);
            }
            if op.epoch != *epoch {
                continue;
            }
            let res = cqe.result();
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u64)
            };
            out.push(Completion {
                queue: op.queue,
                req: op.req,
                result,
            });
        }
    }

    /// Waits (sleeping, without io_uring system calls: it runs on a vCPU thread at reset, whose
    /// seccomp filter has none) until nothing submitted is in flight or `timeout` has passed,
    /// dropping what completes; later completions of what is left are dropped when reaped.
    /// SQEs left unsubmitted by a failed `io_uring_enter` (none normally: every pass submits
    /// its batch) are not waited for. Returns how many are still in flight.
    pub fn wait_idle(&mut self, timeout: Duration) -> usize {
        self.epoch += 1;
        let deadline = Instant::now() + timeout;
        let mut sink = Vec::new();
        loop {
            self.reap(&mut sink);
            sink.clear();
            let left = self.in_flight - self.unsubmitted.min(self.in_flight);
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Blocks in `io_uring_enter` until at least one completion is posted (tests and benches,
    /// which have no event loop).
    #[cfg(test)]
    pub fn wait_one(&mut self) -> io::Result<()> {
        self.unsubmitted = 0;
        self.ring.submit_and_wait(1).map(|_| ())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let left = self.wait_idle(Duration::from_secs(10));
        if left > 0 {
            crate::error_limited!(
                "virtio-blk: {left} io_uring requests still in flight at exit: their buffers are \
                 leaked, not freed under the kernel"
            );
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
