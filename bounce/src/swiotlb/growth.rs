//! The background worker (Linux `swiotlb_dyn_alloc`, run from a workqueue) and the growth
//! policies (`growth=`):
//!
//! - `linux`: woken when a map finds no pool with room (`swiotlb_find_slots` schedules the
//!   work); adds one chunk of `default_nslabs` (the initial pool's size) capped at
//!   `PAGE_SIZE << MAX_PAGE_ORDER` (4 MiB), halving on failure down to `IO_TLB_MIN_SLABS`
//!   (1 MiB), as `swiotlb_dyn_alloc` -> `swiotlb_alloc_pool` do.
//! - `proposed` (Hellwig's proposal, not merged): woken once use passes `threshold` (70 % by
//!   default) as well as when full, and adds chunks (`double`: as much as the pools hold;
//!   `initial`: the initial pool's size; or a size) while use stays past the threshold.
//!
//! Use is the global used counter when there is one (`total-used=on`, checked on every map).
//! Without it (`total-used=off`) nothing on the map path sums the areas: each area carries a
//! mark (`pool::arm_marks`), and the area whose use reaches its mark wakes the worker, which
//! sums every area's count exactly (all area locks held) and either grows or sets new marks
//! such that the total cannot pass the threshold before some area reaches its mark.
//!
//! The work is re-queued by a kick that comes while it runs (as Linux's `schedule_work` on a
//! running item). With `shrink` the worker also releases dynamic chunks left idle (not in
//! Linux), and it does dma-pool.c's work item (`atomic_pool_work_fn`): growing the atomic
//! pools an allocation left low.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::Shared;
use crate::config::{Chunk, Growth, MAX_ORDER_BYTES};
use crate::error::DmaError;
use crate::pool::{arm_marks, MarkCrossed, Pool, PoolKind};
use crate::stats::{add, Payer};

/// What the worker is asked to do (under `Signal::ctl`).
pub(super) struct Ctl {
    /// Grow the pools (`swiotlb_dyn_alloc`).
    pub pending: bool,
    /// A map found every pool full (grow whatever the threshold says).
    pub full: bool,
    /// Grow the atomic pools (`atomic_pool_work_fn`).
    pub atomic: bool,
    pub shutdown: bool,
}

/// Wakes the worker: from the map path, from areas reaching their marks, on shutdown.
pub(super) struct Signal {
    /// Growth asked for and not yet started (Linux: the work item's pending bit).
    kicked: AtomicBool,
    pub ctl: Mutex<Ctl>,
    pub cv: Condvar,
}

impl Signal {
    pub fn new() -> Self {
        Signal {
            kicked: AtomicBool::new(false),
            ctl: Mutex::new(Ctl {
                pending: false,
                full: false,
                atomic: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Queues the growth work (once until it starts); `full`: every pool was full.
    pub fn kick(&self, full: bool) {
        if !self.kicked.load(Relaxed) && !self.kicked.swap(true, Relaxed) {
            let mut c = self.ctl.lock();
            c.pending = true;
            c.full |= full;
            self.cv.notify_one();
        }
    }

    /// Whether growth was asked for and the work has not started (tests).
    #[cfg(test)]
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Relaxed)
    }

    pub fn shutdown(&self) {
        self.ctl.lock().shutdown = true;
        self.cv.notify_all();
    }
}

impl MarkCrossed for Signal {
    fn crossed(&self) {
        self.kick(false);
    }
}

impl Shared {
    /// Every pool was full: schedule growth (Linux `schedule_work(&mem->dyn_alloc)`).
    pub(super) fn kick(&self) {
        self.sig.kick(true);
    }

    /// Schedules the atomic pools' growth (Linux `schedule_work(&atomic_pool_work)`).
    pub(super) fn kick_atomic(&self) {
        self.sig.ctl.lock().atomic = true;
        self.sig.cv.notify_one();
    }

    pub(super) fn worker(&self) {
        let tick = self
            .cfg
            .shrink
            .map(|d| (d / 4).clamp(Duration::from_millis(1), Duration::from_secs(1)));
        loop {
            let (pending, full, atomic) = {
                let mut ctl = self.sig.ctl.lock();
                if !ctl.pending && !ctl.atomic && !ctl.shutdown {
                    // Maps waiting for space (`exhaustion=wait`) are woken at their timeout.
                    let deadline = self.wake_expired();
                    match tick.into_iter().chain(deadline).min() {
                        Some(t) => {
                            self.sig.cv.wait_for(&mut ctl, t);
                        }
                        None => self.sig.cv.wait(&mut ctl),
                    }
                }
                if ctl.shutdown {
                    return;
                }
                (
                    std::mem::take(&mut ctl.pending),
                    std::mem::take(&mut ctl.full),
                    std::mem::take(&mut ctl.atomic),
                )
            };
            if atomic {
                self.atomic_work();
            }
            if pending {
                add(&self.g.worker_wakeups, 1);
                // The work has started: a kick from now on queues it again.
                self.sig.kicked.store(false, Relaxed);
                match self.cfg.growth {
                    Growth::Linux => {
                        self.extend();
                    }
                    Growth::Proposed => self.grow_past_threshold(full),
                }
            }
            if let Some(idle) = self.cfg.shrink {
                self.shrink_idle(idle);
            }
        }
    }

    /// Linux `atomic_pool_work_fn`: every atomic pool with less free space than
    /// `atomic_pool_size` grows by its size, the worker paying the conversion.
    pub(super) fn atomic_work(&self) {
        if let Some(a) = &self.atomic {
            self.add_atomic_blocks(&a.wanted_blocks(), Payer::Background);
        }
    }

    /// `growth=proposed`: sums the pools' use (exactly, every area locked) and adds chunks
    /// while it is past the threshold (or once when a map found everything `full`); then, if
    /// the areas carry marks, arms them for the next check.
    fn grow_past_threshold(&self, mut full: bool) {
        loop {
            let set = self.pools.load();
            let (used, total) = arm_marks(&set.alloc_order, self.threshold, self.cfg.area_marks());
            drop(set);
            add(&self.g.threshold_checks, 1);
            let over = used * 100 >= self.threshold as usize * total;
            if !(over || full) || !self.extend() {
                return;
            }
            full = false;
        }
    }

    /// Re-arms the areas' marks after the set of pools changed (a new total moves the mark).
    pub(super) fn rearm_marks(&self) {
        if self.cfg.area_marks() {
            arm_marks(&self.pools.load().alloc_order, self.threshold, true);
        }
    }

    /// Bytes of the next extension (see [`Chunk`]).
    pub(super) fn chunk_bytes(&self) -> u64 {
        let double = || {
            let set = self.pools.load();
            set.alloc_order.iter().map(|p| p.bytes()).sum::<u64>()
        };
        let b = match (self.cfg.chunk, self.cfg.growth) {
            (Chunk::Size(b), _) => b,
            (Chunk::Initial, _) => self.cfg.size,
            (Chunk::Double, _) | (Chunk::Auto, Growth::Proposed) => double(),
            // `swiotlb_dyn_alloc`: `default_nslabs`, capped by `swiotlb_alloc_pool` at
            // `SLABS_PER_PAGE << MAX_PAGE_ORDER`.
            (Chunk::Auto, Growth::Linux) => self.cfg.size.min(MAX_ORDER_BYTES),
        };
        b.max(1)
    }

    /// One extension by the worker (Linux `swiotlb_dyn_alloc`); whether a pool was added.
    pub(super) fn extend(&self) -> bool {
        match self.add_chunk(Payer::Background) {
            Ok(_) => {
                add(&self.g.extensions, 1);
                true
            }
            Err(e) => {
                log::debug!("swiotlb: background extension failed: {e}");
                add(&self.g.extension_failures, 1);
                false
            }
        }
    }

    /// Adds a chunk (`swiotlb_alloc_pool`), paid by `payer`: halving while the cap refuses it,
    /// down to `min_chunk` (or the chunk, if smaller).
    pub(super) fn add_chunk(&self, payer: Payer) -> Result<Arc<Pool>, DmaError> {
        let mut size = self.chunk_bytes();
        let min = self.cfg.min_chunk.min(size);
        loop {
            match self.add_pool(PoolKind::Dynamic, size, payer) {
                Ok(p) => return Ok(p),
                Err(_) if size / 2 >= min => size /= 2,
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn shrink_idle(&self, idle: Duration) -> usize {
        let now = self.now_ns();
        let idle = idle.as_nanos() as u64;
        let set = arc_swap::Guard::into_inner(self.pools.load());
        let mut n = 0;
        for p in set
            .alloc_order
            .iter()
            .filter(|p| p.kind == PoolKind::Dynamic)
        {
            let created = p.created.duration_since(self.epoch).as_nanos() as u64;
            let last = p.last_free_ns().max(created);
            if p.used() == 0 && now.saturating_sub(last) >= idle && p.retire(false) {
                self.remove_pool(p, Payer::Background);
                add(&self.g.shrinks, 1);
                n += 1;
            }
        }
        n
    }
}
