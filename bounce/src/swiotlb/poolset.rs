//! Adding pools to the published set and removing them: the cap on shared memory, the bounce
//! address space (never reused), the conversion each new or released pool pays.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::{Shared, POOL_ALIGN};
use crate::convert::ConvertDirection as Direction;
use crate::convert::{delay, ConvertMode};
use crate::error::DmaError;
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
        let slot = 1u64 << self.shift;
        let mut nslots = bytes.div_ceil(slot) as usize;
        let mut nareas = 1;
        if kind != PoolKind::Transient {
            nareas = self.cfg.areas_for(nslots.next_multiple_of(self.seg));
            nslots = nslots.next_multiple_of(nareas * self.seg);
        }
        let page = self.cfg.page as u64;
        let real = (nslots as u64 * slot).next_multiple_of(page);
        let cap = self.cfg.cap;
        self.reserved
            .fetch_update(Relaxed, Relaxed, |r| (r + real <= cap).then_some(r + real))
            .map_err(|_| DmaError::CapReached {
                len: bytes as usize,
                cap,
            })?;
        let id = self.next_id.fetch_add(1, Relaxed);
        let lifo = self.cfg.reuse == crate::config::SlotReuse::Lifo;
        // Never reused: a stale bounce address can only ever name its own (gone) pool.
        let span = real.next_multiple_of(POOL_ALIGN) + POOL_ALIGN;
        let start = self.next_addr.fetch_add(span, Relaxed);
        let Some(p) = Pool::new(
            id,
            kind,
            start,
            nslots,
            self.shift,
            self.seg,
            nareas,
            page as usize,
            lifo,
        ) else {
            self.reserved.fetch_sub(real, Relaxed);
            return Err(DmaError::NoSpace {
                len: bytes as usize,
            });
        };
        let p = Arc::new(p);
        self.convert(payer, Direction::ToShared, real / page);
        let now = self.reserved.load(Relaxed);
        self.g.shared_bytes_hiwater.fetch_max(now, Relaxed);
        add(&self.g.pools_created, 1);
        if kind == PoolKind::Transient {
            add(&self.g.transient_created, 1);
        }
        let _w = self.writer.lock();
        let set = self.pools.load().with(p.clone());
        self.slots_total.store(set.slots_total, Relaxed);
        self.pools.store(set);
        Ok(p)
    }

    /// Unpublishes a retired pool (its memory is already released) and converts it back to
    /// private, paid by `payer`.
    pub(super) fn remove_pool(&self, p: &Arc<Pool>, payer: Payer) {
        {
            let _w = self.writer.lock();
            // Fold its counters into the totals in the same step as unpublishing it, so a
            // snapshot (which takes the writer lock) counts them exactly once.
            self.retired_counts.lock().add(&p.counts());
            let set = self.pools.load().without(p.id);
            self.slots_total.store(set.slots_total, Relaxed);
            self.pools.store(set);
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
}
