//! Adding pools to the published set and removing them: the cap on shared memory, the bounce
//! address space (never reused), the conversion each new or released pool pays, and transient
//! pools carved from the atomic pools (which convert nothing).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::{Shared, POOL_ALIGN};
use crate::config::PoolOrder;
use crate::convert::ConvertDirection as Direction;
use crate::convert::{delay, ConvertMode};
use crate::error::DmaError;
use crate::lookup::PoolSet;
use crate::pool::{Pool, PoolKind};
use crate::stats::{add, Payer};

impl Shared {
    /// Reserves against the cap, allocates, converts to shared (paid by `payer`, whose thread
    /// this is: delayed in inject mode) and publishes a pool.
    pub(super) fn add_pool(
        &self,
        kind: PoolKind,
        bytes: u64,
        payer: Payer,
    ) -> Result<Arc<Pool>, DmaError> {
        let (nslots, nareas, real) = self.geometry(kind, bytes);
        if !self.reserve(real) {
            return Err(DmaError::CapReached {
                len: bytes as usize,
                cap: self.cfg.cap,
            });
        }
        let Some(p) = self.new_pool(kind, nslots, nareas, real) else {
            self.reserved.fetch_sub(real, Relaxed);
            return Err(DmaError::NoSpace {
                len: bytes as usize,
            });
        };
        self.convert(payer, Direction::ToShared, real / self.cfg.page as u64);
        Ok(self.publish(p))
    }

    /// A transient pool for a request of `len` bytes in memory taken from the atomic pools
    /// (Linux `swiotlb_alloc_tlb` -> `dma_alloc_from_pool`): shared already, so neither
    /// reserved again nor converted. Wakes the worker when it leaves an atomic pool low.
    pub(super) fn add_carved(&self, bytes: u64, len: usize) -> Result<Arc<Pool>, DmaError> {
        let atomic = self.atomic.as_ref().ok_or(DmaError::NoSpace { len })?;
        let (nslots, nareas, real) = self.geometry(PoolKind::Transient, bytes);
        let id = self.next_id.fetch_add(1, Relaxed);
        let Some(low) = atomic.alloc(id, real) else {
            return Err(DmaError::AtomicPoolExhausted { len });
        };
        let Some(mut p) = self.new_pool_with_id(id, PoolKind::Transient, nslots, nareas, real)
        else {
            atomic.free(id);
            return Err(DmaError::NoSpace { len });
        };
        p.carved = true;
        if low {
            self.kick_atomic();
        }
        Ok(self.publish(p))
    }

    /// Slots, areas and page-rounded bytes of a new pool of at least `bytes`.
    fn geometry(&self, kind: PoolKind, bytes: u64) -> (usize, usize, u64) {
        let slot = 1u64 << self.shift;
        let mut nslots = bytes.div_ceil(slot) as usize;
        let mut nareas = 1;
        if kind != PoolKind::Transient {
            nareas = self.cfg.areas_for(nslots.next_multiple_of(self.seg));
            nslots = nslots.next_multiple_of(nareas * self.seg);
        }
        let real = (nslots as u64 * slot).next_multiple_of(self.cfg.page as u64);
        (nslots, nareas, real)
    }

    /// Reserves `bytes` of shared memory against the cap (and raises the high-water mark).
    pub(super) fn reserve(&self, bytes: u64) -> bool {
        let cap = self.cfg.cap;
        let ok = self
            .reserved
            .fetch_update(Relaxed, Relaxed, |r| {
                (r + bytes <= cap).then_some(r + bytes)
            })
            .is_ok();
        if ok {
            let now = self.reserved.load(Relaxed);
            self.g.shared_bytes_hiwater.fetch_max(now, Relaxed);
        }
        ok
    }

    fn new_pool(&self, kind: PoolKind, nslots: usize, nareas: usize, real: u64) -> Option<Pool> {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.new_pool_with_id(id, kind, nslots, nareas, real)
    }

    fn new_pool_with_id(
        &self,
        id: u64,
        kind: PoolKind,
        nslots: usize,
        nareas: usize,
        real: u64,
    ) -> Option<Pool> {
        let lifo = self.cfg.reuse == crate::config::SlotReuse::Lifo;
        // Never reused: a stale bounce address can only ever name its own (gone) pool.
        let span = real.next_multiple_of(POOL_ALIGN) + POOL_ALIGN;
        let start = self.next_addr.fetch_add(span, Relaxed);
        let mut p = Pool::new(
            id,
            kind,
            start,
            nslots,
            self.shift,
            self.seg,
            nareas,
            self.cfg.page as usize,
            lifo,
        )?;
        if kind != PoolKind::Transient && self.cfg.area_marks() {
            p.marks = Some(self.sig.clone());
        }
        Some(p)
    }

    fn publish(&self, p: Pool) -> Arc<Pool> {
        let p = Arc::new(p);
        add(&self.g.pools_created, 1);
        if p.kind == PoolKind::Transient {
            add(&self.g.transient_created, 1);
        }
        {
            let _w = self.writer.lock();
            let set = self.pools.load().with(p.clone());
            self.store_set(set);
        }
        if p.kind != PoolKind::Transient {
            self.rearm_marks();
            self.pool_added();
        }
        p
    }

    /// Publishes `set` (the caller holds the writer lock) and what the fast path reads of it.
    fn store_set(&self, set: PoolSet) {
        self.slots_total.store(set.slots_total, Relaxed);
        let first = self.cfg.order == PoolOrder::Oldest || set.alloc_order.len() <= 1;
        self.initial_first.store(first, Relaxed);
        self.pools.store(set);
    }

    /// Unpublishes a retired pool (its memory is already released) and converts it back to
    /// private, paid by `payer`; a pool carved from the atomic pools goes back to them instead
    /// (Linux `swiotlb_free_tlb` -> `dma_free_from_pool`), converting nothing.
    pub(super) fn remove_pool(&self, p: &Arc<Pool>, payer: Payer) {
        {
            let _w = self.writer.lock();
            // Fold its counters into the totals in the same step as unpublishing it, so a
            // snapshot (which takes the writer lock) counts them exactly once.
            self.retired_counts.lock().add(&p.counts());
            let set = self.pools.load().without(p.id);
            self.store_set(set);
        }
        if p.kind != PoolKind::Transient {
            self.rearm_marks();
        }
        if p.carved {
            if let Some(a) = &self.atomic {
                a.free(p.id);
            }
            return;
        }
        let page = self.cfg.page as u64;
        self.convert(payer, Direction::ToPrivate, p.bytes() / page);
        self.reserved.fetch_sub(p.bytes(), Relaxed);
    }

    /// Converts `pages` pages in direction `dir` on the calling thread, which stands for `payer`:
    /// counts the calls, exits, pages and modeled time, and in inject mode delays the thread.
    pub(super) fn convert(&self, payer: Payer, dir: Direction, pages: u64) {
        if !self.cfg.convert.encrypted() {
            return;
        }
        let c = self.cfg.convert.cost(dir, pages);
        self.g.conv.count(payer, dir, c.calls, c.exits, pages, c.ns);
        if self.cfg.convert_mode == ConvertMode::Inject && c.ns > 0 {
            let t = Instant::now();
            delay(c.ns);
            self.g
                .conv
                .injected(payer, dir, t.elapsed().as_nanos() as u64);
        }
    }

    /// Adds atomic-pool blocks `(zone, pages)`: each reserved against the cap, halved when the
    /// cap refuses it (as `atomic_pool_expand` lowers the order when allocation fails), and
    /// converted, paid by `payer`. Returns whether every block was added.
    pub(super) fn add_atomic_blocks(&self, blocks: &[(usize, usize)], payer: Payer) -> bool {
        let Some(atomic) = &self.atomic else {
            return true;
        };
        let page = self.cfg.page as u64;
        let mut all = true;
        for &(zone, mut pages) in blocks {
            loop {
                if self.reserve(pages as u64 * page) {
                    self.convert(payer, Direction::ToShared, pages as u64);
                    atomic.add_block(zone, pages, payer == Payer::Background);
                    break;
                }
                if pages == 1 {
                    if payer == Payer::Background {
                        atomic.expansion_failed();
                    }
                    all = false;
                    break;
                }
                pages /= 2;
            }
        }
        all
    }
}
