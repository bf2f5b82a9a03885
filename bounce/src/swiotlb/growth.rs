//! The background worker (Linux `swiotlb_dyn_alloc`, run from a workqueue): woken when every
//! pool is full (or use crosses `threshold`), it adds a chunk, halving on failure; with `shrink`
//! it also releases dynamic chunks left idle (not in Linux). It also does dma-pool.c's work item
//! (`atomic_pool_work_fn`): growing the atomic pools an allocation left low.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::Shared;
use crate::pool::PoolKind;
use crate::stats::{add, Payer};

/// What the worker is asked to do (under `Shared::ctl`).
pub(super) struct Ctl {
    /// Grow the pools (`swiotlb_dyn_alloc`).
    pub pending: bool,
    /// Grow the atomic pools (`atomic_pool_work_fn`).
    pub atomic: bool,
    pub shutdown: bool,
}

impl Shared {
    pub(super) fn kick(&self) {
        if !self.kicked.swap(true, Relaxed) {
            self.ctl.lock().pending = true;
            self.cv.notify_one();
        }
    }

    /// Schedules the atomic pools' growth (Linux `schedule_work(&atomic_pool_work)`).
    pub(super) fn kick_atomic(&self) {
        self.ctl.lock().atomic = true;
        self.cv.notify_one();
    }

    pub(super) fn worker(&self) {
        let tick = self
            .cfg
            .shrink
            .map(|d| (d / 4).clamp(Duration::from_millis(1), Duration::from_secs(1)));
        loop {
            let (pending, atomic) = {
                let mut ctl = self.ctl.lock();
                if !ctl.pending && !ctl.atomic && !ctl.shutdown {
                    match tick {
                        Some(t) => {
                            self.cv.wait_for(&mut ctl, t);
                        }
                        None => self.cv.wait(&mut ctl),
                    }
                }
                if ctl.shutdown {
                    return;
                }
                (
                    std::mem::take(&mut ctl.pending),
                    std::mem::take(&mut ctl.atomic),
                )
            };
            if atomic {
                self.atomic_work();
            }
            if pending {
                add(&self.g.worker_wakeups, 1);
                self.extend();
                self.kicked.store(false, Relaxed);
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

    /// Linux `swiotlb_dyn_alloc`: a chunk of up to `chunk` bytes, halving on failure down to
    /// `min_chunk`.
    fn extend(&self) {
        let mut size = self.cfg.chunk;
        loop {
            match self.add_pool(PoolKind::Dynamic, size, Payer::Background) {
                Ok(_) => {
                    add(&self.g.extensions, 1);
                    return;
                }
                Err(_) if size / 2 >= self.cfg.min_chunk => size /= 2,
                Err(e) => {
                    log::debug!("swiotlb: background extension failed: {e}");
                    add(&self.g.extension_failures, 1);
                    return;
                }
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
