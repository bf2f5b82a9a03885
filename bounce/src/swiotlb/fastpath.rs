//! The allocation fast path, shared by `Dma::map`/`DmaBuffer::unmap` and the address-based API:
//! the request's checks, the initial pool tried without loading the published set, the
//! accounting of a successful allocation, and the release found by address (Linux
//! `swiotlb_tbl_map_single` / `swiotlb_tbl_unmap_single`). Everything here is inlined into its
//! callers; what is rare (failures, the other pools) is out of line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{Freed, Mapping, Shared, SHARDS};
use crate::error::DmaError;
use crate::pool::{MapAttrs, Pool, PoolKind, Request};
use crate::stats::{add, Payer, Shard};
use crate::types::DmaSource;

/// The area hint of a source (Linux: the mapping CPU).
pub(super) fn hint(src: DmaSource) -> usize {
    (src.device as usize).wrapping_mul(7) + src.queue as usize
}

impl Shared {
    pub(crate) fn shard(&self, src: DmaSource) -> &Shard {
        &self.shards[hint(src) % SHARDS]
    }

    pub(crate) fn count_failure(&self, e: &DmaError) {
        self.g.failures.count(e);
    }

    /// Releases a mapping (see [`Swiotlb::free`]) after the caller copied `copied_out` bytes back
    /// to the guest (counted in `bytes_to_guest`: under the area lock when the release succeeds,
    /// in the shard otherwise).
    #[inline(always)]
    pub(crate) fn free_copied(
        &self,
        src: DmaSource,
        addr: u64,
        copied_out: u64,
    ) -> Result<Freed, DmaError> {
        let r = self.free(src, addr, copied_out);
        if let Err(e) = &r {
            if copied_out != 0 {
                add(&self.shard(src).bytes_to_guest, copied_out);
            }
            self.count_failure(e);
        }
        r
    }

    /// Allocates bounce slots (see [`Swiotlb::alloc`]) for a caller that copies `copy_in` bytes
    /// into them (counted in `bytes_to_pool` under the area lock, with the map). The fast path
    /// (the initial pool) inline in `Dma::map`; the rest out of line.
    #[inline(always)]
    pub(crate) fn alloc_copying(
        &self,
        src: DmaSource,
        orig: u64,
        len: usize,
        attrs: MapAttrs,
        copy_in: u64,
    ) -> Result<Mapping, DmaError> {
        if len == 0 {
            return Err(self.failed(DmaError::ZeroLength { addr: orig }));
        }
        let page = self.cfg.page as usize;
        let req = Request::new(orig, len, attrs, self.shift, page, copy_in);
        // Linux `swiotlb_find_slots`: an allocation (offset and round-up included) larger than
        // a segment cannot be placed.
        let seg_bytes = (self.seg << self.shift) as u64;
        if req.size > seg_bytes {
            let max = (seg_bytes & !attrs.alloc_align_mask).saturating_sub(req.offset as u64);
            return Err(self.failed(DmaError::TooLarge {
                len,
                max: max as usize,
            }));
        }
        let h = hint(src);
        let shard = &self.shards[h % SHARDS];
        // Maps that may block, with a policy that blocks (never for `Dma::map`'s attributes).
        if attrs.may_block && self.blocking_policy {
            return self
                .alloc_blocking(src, &req, shard)
                .map_err(|e| self.failed(e));
        }
        // The initial pool (never retired) without a set load, while it comes first (the only
        // pool, or `order=oldest`): its areas from the source's (Linux: the CPU's) on.
        let mut tried = false;
        if let Some(p) = self.initial.get() {
            if self.initial_first.load(Relaxed) {
                if let Some(i) = p.alloc(h, &req, shard) {
                    return Ok(self.allocated(p, i, &req));
                }
                tried = true;
            }
        }
        self.alloc_beyond_initial(src, &req, tried, shard, false)
            .map_err(|e| self.failed(e))
    }

    /// Counts a failed allocation.
    #[cold]
    #[inline(never)]
    fn failed(&self, e: DmaError) -> DmaError {
        self.count_failure(&e);
        e
    }

    /// Retires and removes a transient pool whose one mapping was just freed, on the unmapping
    /// thread (Linux `swiotlb_del_transient`). Out of line: the fast path only tests the kind.
    #[cold]
    #[inline(never)]
    fn release_transient(&self, p: &Arc<Pool>) {
        if p.retire(false) {
            self.remove_pool(p, Payer::IoPath);
        }
    }

    /// Accounts a successful allocation (total use and its high-water mark, Linux's
    /// `inc_used_and_hiwater`; the growth threshold) and describes it.
    #[inline(always)]
    pub(super) fn allocated(&self, p: &Pool, index: usize, req: &Request) -> Mapping {
        if self.cfg.total_used {
            let used = self.g.inc_used(req.nslots as u64);
            if self.count_kick
                && p.kind != PoolKind::Transient
                && used * 100 >= self.threshold as u64 * self.slots_total.load(Relaxed) as u64
            {
                self.sig.kick(false);
            }
        }
        let addr = p.slot_addr(index) + req.offset as u64;
        Mapping {
            host: p.host_ptr(addr),
            addr,
            len: req.len,
        }
    }

    #[inline(always)]
    fn free(&self, src: DmaSource, addr: u64, copied_out: u64) -> Result<Freed, DmaError> {
        let shard = &self.shards[hint(src) % SHARDS];
        self.pools.find(
            self.cfg.lookup,
            addr,
            #[inline(always)]
            |p, steps| {
                let Some(p) = p else {
                    add(&shard.lookups, 1);
                    add(&shard.lookup_steps, steps);
                    return Err(DmaError::UnknownAddress { addr });
                };
                let now = if p.kind == PoolKind::Dynamic && self.cfg.shrink.is_some() {
                    self.now_ns()
                } else {
                    0
                };
                let (nslots, orig, len) = p.free(addr, now, steps, shard, copied_out)?;
                if self.cfg.total_used {
                    self.g.used.fetch_sub(nslots as u64, Relaxed);
                }
                if p.kind == PoolKind::Transient {
                    self.release_transient(p);
                }
                // A throttled mapping, or maps waiting for space (`exhaustion.rs`).
                if self.slow_unmap.load(Relaxed) {
                    self.after_unmap(addr);
                }
                Ok(Freed { orig, len })
            },
        )
    }
}
