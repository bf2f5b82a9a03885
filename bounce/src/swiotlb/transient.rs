//! When the initial pool has no room: the other pools (oldest first), then Linux's
//! `swiotlb_find_slots` fall-back: wake the growth worker and allocate a *transient* pool of
//! exactly the request's size on the I/O path: in an encrypted guest carved from dma-pool.c's
//! atomic pools (`atomic.rs`), converting nothing.

use std::sync::Arc;

use super::{Mapping, Shared};
use crate::error::DmaError;
use crate::pool::{MapAttrs, PoolKind, Request};
use crate::stats::{Payer, Shard};

impl Shared {
    #[inline(never)]
    pub(super) fn alloc_beyond_initial(
        &self,
        h: usize,
        req: &Request,
        attrs: MapAttrs,
        shard: &Shard,
    ) -> Result<Mapping, DmaError> {
        let len = req.len;
        let initial = self.initial.get();
        let set = self.pools.load();
        for p in &set.alloc_order {
            if initial.is_some_and(|i| Arc::ptr_eq(i, p)) {
                continue;
            }
            if let Some(i) = p.alloc(h, req, shard) {
                return Ok(self.allocated(p, i, req));
            }
        }
        drop(set);
        // Every pool is full (Linux `swiotlb_find_slots`): schedule growth, and go transient.
        if self.cfg.dynamic {
            self.kick();
        }
        if !self.cfg.transient {
            return Err(DmaError::NoSpace { len });
        }
        // Extra slots so that the `min_align_mask` bits above the slot can be matched.
        let extra = ((attrs.min_align_mask | attrs.alloc_align_mask) >> self.shift) as usize;
        let bytes = ((req.nslots + extra) as u64) << self.shift;
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
