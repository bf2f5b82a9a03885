//! When the initial pool has no room: the pools in the configured order, then the exhaustion
//! policy (`exhaustion.rs`); by default Linux's `swiotlb_find_slots` fall-back: wake the growth worker and allocate a *transient* pool of
//! exactly the request's size on the I/O path: in an encrypted guest carved from dma-pool.c's
//! atomic pools (`atomic.rs`), converting nothing.

use std::sync::Arc;

use super::fastpath::hint;
use super::{Mapping, Shared};
use crate::config::{Exhaustion, PoolOrder};
use crate::error::DmaError;
use crate::pool::{PoolKind, Request};
use crate::stats::{Payer, Shard};
use crate::types::DmaSource;

impl Shared {
    /// The pools in the configured order (`initial_tried`: the fast path already searched the
    /// initial pool, which was the first to try).
    pub(super) fn search(
        &self,
        h: usize,
        req: &Request,
        initial_tried: bool,
        shard: &Shard,
    ) -> Option<Mapping> {
        let initial = self.initial.get();
        let set = self.pools.load();
        let pools = &set.alloc_order;
        match self.cfg.order {
            // `swiotlb_find_slots`: for i in 0..default_nareas, `swiotlb_search_area`: every
            // pool newest first that has an area i, its area (cpu + i) & (nareas - 1).
            PoolOrder::Linux if !(initial_tried && pools.len() == 1) => {
                let nareas = pools.iter().map(|p| p.nareas()).max().unwrap_or(0);
                for i in 0..nareas {
                    for p in pools.iter().rev() {
                        let n = p.nareas();
                        if i < n {
                            if let Some(x) = p.alloc_in_area((h + i) & (n - 1), req, shard) {
                                return Some(self.allocated(p, x, req));
                            }
                        }
                    }
                }
            }
            PoolOrder::Linux => {}
            PoolOrder::Oldest => {
                for p in pools {
                    if initial_tried && initial.is_some_and(|i| Arc::ptr_eq(i, p)) {
                        continue;
                    }
                    if let Some(i) = p.alloc(h, req, shard) {
                        return Some(self.allocated(p, i, req));
                    }
                }
            }
        }
        None
    }

    /// The pools (see [`Shared::search`]), then what the exhaustion policy does when none has
    /// room (`may_wait`: a map that may block, with `exhaustion=wait`).
    #[inline(never)]
    pub(super) fn alloc_beyond_initial(
        &self,
        src: DmaSource,
        req: &Request,
        initial_tried: bool,
        shard: &Shard,
        may_wait: bool,
    ) -> Result<Mapping, DmaError> {
        let len = req.len;
        if let Some(m) = self.search(hint(src), req, initial_tried, shard) {
            return Ok(m);
        }
        // Every pool is full (Linux `swiotlb_find_slots`): schedule growth, and go transient.
        if self.cfg.dynamic {
            self.kick();
        }
        if may_wait {
            return self.wait_for_space(src, req, shard);
        }
        if self.cfg.exhaustion == Exhaustion::Fail {
            return Err(DmaError::NoSpace { len });
        }
        // Exactly the request's slots (Linux: `nr_slots(alloc_size)`), searched with the same
        // rules: a request whose `min_align_mask` bits above the slot do not match the pool's
        // first slot finds no room in it, and fails, as in Linux.
        let bytes = (req.nslots as u64) << self.shift;
        // Encrypted memory: from the atomic pools, shared already (Linux `swiotlb_alloc_tlb`
        // with `GFP_NOWAIT`); otherwise fresh memory, converted here if `atomic-pool=off`.
        let p = if self.atomic.is_some() {
            self.add_carved(bytes, len)?
        } else {
            self.add_pool(PoolKind::Transient, bytes, Payer::IoPath)?
        };
        match p.alloc(0, req, shard) {
            Some(i) => Ok(self.allocated(&p, i, req)),
            None => {
                self.remove_pool(&p, Payer::IoPath);
                Err(DmaError::NoSpace { len })
            }
        }
    }
}
