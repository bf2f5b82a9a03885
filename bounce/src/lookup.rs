//! Finding the pool that owns a bounce address (Linux: `swiotlb_find_pool`, `is_swiotlb_buffer`).
//!
//! The set of pools is an immutable [`PoolSet`] published RCU-style through `arc-swap`: readers
//! (every unmap and sync) never take a lock, writers (growth, shrink, transient pools) copy and
//! republish under a mutex. Both structures live in the same set so that only the search differs:
//! - `List`: Linux's RCU list, newest pool first (`list_add_rcu` adds at the head), walked
//!   linearly: O(n) (the kernel docs call it "linear and not performant with a large number of
//!   dynamic pools");
//! - `Tree`: the pools ordered by start address, binary-searched: O(log n). (An implicit
//!   balanced search tree in a sorted array: cache-friendly, and immutable like the list.)

use std::sync::Arc;

use crate::config::LookupKind;
use crate::pool::{Pool, PoolKind};

#[derive(Default, Clone)]
pub(crate) struct PoolSet {
    /// Newest first (Linux list order).
    pub list: Vec<Arc<Pool>>,
    /// By start address.
    pub sorted: Vec<Arc<Pool>>,
    /// Non-transient pools, oldest first: the order allocations try them in.
    pub alloc_order: Vec<Arc<Pool>>,
    pub slots_total: usize,
    pub shared_bytes: u64,
}

impl PoolSet {
    pub fn with(&self, p: Arc<Pool>) -> PoolSet {
        let mut s = self.clone();
        s.slots_total += p.nslots;
        s.shared_bytes += p.bytes();
        let at = s.sorted.partition_point(|q| q.start < p.start);
        s.sorted.insert(at, p.clone());
        if p.kind != PoolKind::Transient {
            s.alloc_order.push(p.clone());
        }
        s.list.insert(0, p);
        s
    }

    pub fn without(&self, id: u64) -> PoolSet {
        let mut s = self.clone();
        if let Some(p) = s.list.iter().find(|p| p.id == id).cloned() {
            s.slots_total -= p.nslots;
            s.shared_bytes -= p.bytes();
        }
        s.list.retain(|p| p.id != id);
        s.sorted.retain(|p| p.id != id);
        s.alloc_order.retain(|p| p.id != id);
        s
    }

    /// The pool containing `addr`, and the number of pools (list) or comparisons (tree) looked
    /// at.
    pub fn find(&self, kind: LookupKind, addr: u64) -> (Option<&Arc<Pool>>, u64) {
        match kind {
            LookupKind::List => {
                for (i, p) in self.list.iter().enumerate() {
                    if p.contains(addr) {
                        return (Some(p), i as u64 + 1);
                    }
                }
                (None, self.list.len() as u64)
            }
            LookupKind::Tree => {
                let (mut lo, mut hi, mut steps) = (0usize, self.sorted.len(), 0u64);
                while lo < hi {
                    steps += 1;
                    let mid = lo + (hi - lo) / 2;
                    let p = &self.sorted[mid];
                    if addr < p.start {
                        hi = mid;
                    } else if addr >= p.end() {
                        lo = mid + 1;
                    } else {
                        return (Some(p), steps);
                    }
                }
                (None, steps)
            }
        }
    }
}
