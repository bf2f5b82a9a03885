//! Finding the pool that owns a bounce address (Linux: `swiotlb_find_pool`, `is_swiotlb_buffer`).
//!
//! The set of pools is an immutable [`PoolSet`] published RCU-style through `arc-swap`: writers
//! (growth, shrink, transient pools) copy and republish under a mutex. Lookups by address (every
//! unmap and address-based sync) use a per-thread copy of the `Arc` and re-read the published
//! set only when its generation moved: one plain load instead of `arc-swap`'s two locked
//! instructions, close to what Linux's readers pay under `rcu_read_lock` (nothing). A cached set
//! may lag a publication by a moment, so it is only ever a hint: a reader that finds no pool in
//! it, or a retired one, asks the published set (see [`Published::find`]). A thread's cached set
//! keeps retired pools' descriptions alive until that thread's next DMA, not their memory
//! (`Pool::retire` releases it).
//!
//! Both structures live in the same set so that only the search differs:
//! - `List`: Linux's RCU list, newest pool first (`list_add_rcu` adds at the head), walked
//!   linearly: O(n) (the kernel docs call it "linear and not performant with a large number of
//!   dynamic pools");
//! - `Tree`: the pools ordered by start address, binary-searched: O(log n). (An implicit
//!   balanced search tree in a sorted array: cache-friendly, and immutable like the list.)

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use crossbeam_utils::CachePadded;

use crate::config::LookupKind;
use crate::pool::{Pool, PoolKind};

/// Keys the per-thread caches: a thread may use several `Swiotlb`s (tests, replay).
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

struct Cached {
    owner: u64,
    gen: u64,
    set: Arc<PoolSet>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// The published pool set of one `Swiotlb`.
pub(crate) struct Published {
    owner: u64,
    set: ArcSwap<PoolSet>,
    /// Bumped after every publication; read by every reader, written by growth and shrink only.
    gen: CachePadded<AtomicU64>,
}

impl Published {
    pub fn new() -> Self {
        Published {
            owner: NEXT_OWNER.fetch_add(1, Relaxed),
            set: ArcSwap::from_pointee(PoolSet::default()),
            gen: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// The published set (authoritative; two locked instructions: off the fast path).
    pub fn load(&self) -> Guard<Arc<PoolSet>> {
        self.set.load()
    }

    /// Publishes `set`; the caller holds the writer lock.
    pub fn store(&self, set: PoolSet) {
        self.set.store(Arc::new(set));
        self.gen.fetch_add(1, Release);
    }

    /// Calls `f` with the pool owning `addr` (if any) and the lookup steps, found in this
    /// thread's cached set (refreshed when the generation moved). Finding no pool, or a retired
    /// one, there is confirmed by a search of the published set, whose answer `f` gets instead.
    #[inline(always)]
    pub fn find<R>(
        &self,
        kind: LookupKind,
        addr: u64,
        f: impl Fn(Option<&Arc<Pool>>, u64) -> R,
    ) -> R {
        let cached = CACHED.with(|c| {
            // Re-entered (an `f` that uses another pool set): the published set answers.
            let mut c = c.try_borrow_mut().ok()?;
            let gen = self.gen.load(Acquire);
            let c = match &mut *c {
                Some(x) if x.owner == self.owner && x.gen == gen => x,
                // `gen` is read before the set: a set published after that read is cached
                // under the older generation, so it is read again at the next change.
                c => c.insert(Cached {
                    owner: self.owner,
                    gen,
                    set: self.set.load_full(),
                }),
            };
            match c.set.find(kind, addr) {
                (Some(p), steps) if !p.is_retired() => Some(f(Some(p), steps)),
                _ => None,
            }
        });
        match cached {
            Some(r) => r,
            None => self.find_published(kind, addr, &f),
        }
    }

    #[cold]
    #[inline(never)]
    fn find_published<R>(
        &self,
        kind: LookupKind,
        addr: u64,
        f: &impl Fn(Option<&Arc<Pool>>, u64) -> R,
    ) -> R {
        let set = self.set.load();
        let (p, steps) = set.find(kind, addr);
        f(p, steps)
    }
}

/// A pool and its bounce address range `[start, end)`.
#[derive(Clone)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
    pub pool: Arc<Pool>,
}

#[derive(Default, Clone)]
pub(crate) struct PoolSet {
    /// Newest first (Linux list order).
    pub list: Vec<Arc<Pool>>,
    /// By start address, each with its bounds: the tree's nodes carry their keys, so a search
    /// touches one dense array, not every pool it passes (as the list does, like Linux's).
    pub sorted: Vec<Span>,
    /// Non-transient pools, oldest first: the order allocations try them in.
    pub alloc_order: Vec<Arc<Pool>>,
    pub slots_total: usize,
    /// Bytes of the pools not carved from the atomic pools.
    pub shared_bytes: u64,
}

impl PoolSet {
    pub fn with(&self, p: Arc<Pool>) -> PoolSet {
        let mut s = self.clone();
        s.slots_total += p.nslots;
        if !p.carved {
            s.shared_bytes += p.bytes();
        }
        let at = s.sorted.partition_point(|q| q.start < p.start);
        s.sorted.insert(
            at,
            Span {
                start: p.start,
                end: p.end(),
                pool: p.clone(),
            },
        );
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
            if !p.carved {
                s.shared_bytes -= p.bytes();
            }
        }
        s.list.retain(|p| p.id != id);
        s.sorted.retain(|p| p.pool.id != id);
        s.alloc_order.retain(|p| p.id != id);
        s
    }

    /// The pool containing `addr`, and the number of pools (list) or comparisons (tree) looked
    /// at.
    #[inline]
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
                // The last pool starting at or below `addr`: halve the range until one is left,
                // one comparison per level, written so that the compiler can use a conditional
                // move (the addresses of random I/O would mispredict a branch at most levels).
                let (mut base, mut len, mut steps) = (0usize, self.sorted.len(), 0u64);
                if len == 0 {
                    return (None, 0);
                }
                while len > 1 {
                    let half = len / 2;
                    steps += 1;
                    base += half * usize::from(self.sorted[base + half].start <= addr);
                    len -= half;
                }
                let p = &self.sorted[base];
                (
                    (p.start..p.end).contains(&addr).then_some(&p.pool),
                    steps + 1,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolKind;

    fn pool(id: u64, start: u64) -> Arc<Pool> {
        Arc::new(Pool::new(id, PoolKind::Dynamic, start, 128, 11, 128, 1, 4096, false).unwrap())
    }

    fn find_id(p: &Published, addr: u64) -> Option<u64> {
        p.find(LookupKind::Tree, addr, |p, _| p.map(|p| p.id))
    }

    /// A pool this thread has not seen yet is found even when the generation it reads has not
    /// moved (the moment between a publication and its generation bump), and a retired pool in
    /// the cached set is not used.
    #[test]
    fn a_stale_cached_set_is_only_a_hint() {
        let p = Published::new();
        let (a, b) = (pool(1, 1 << 40), pool(2, 2 << 40));
        p.store(PoolSet::default().with(a.clone()));
        // Now in this thread's cache.
        assert_eq!(find_id(&p, 1 << 40), Some(1));
        // Published without a generation bump: the cache cannot know.
        p.set.store(Arc::new(p.load().with(b.clone())));
        assert_eq!(find_id(&p, 2 << 40), Some(2));
        // `a` retired and unpublished, still in this thread's cached set.
        assert!(a.retire(false));
        p.set.store(Arc::new(p.load().without(1)));
        assert_eq!(find_id(&p, 1 << 40), None);
        assert!(a.is_retired());
    }

    /// Another thread's publication reaches this thread's next lookup, whatever it looks up
    /// (the generation moved), and two sets used from one thread do not mix.
    #[test]
    fn publications_reach_cached_readers() {
        let (p, q) = (Published::new(), Published::new());
        p.store(PoolSet::default().with(pool(1, 1 << 40)));
        q.store(PoolSet::default().with(pool(7, 1 << 40)));
        assert_eq!(find_id(&q, 1 << 40), Some(7));
        assert_eq!(find_id(&p, 1 << 40), Some(1));
        let cached = || CACHED.with(|c| c.borrow().as_ref().map(|c| (c.owner, c.set.list.len())));
        assert_eq!(cached(), Some((p.owner, 1)));
        std::thread::scope(|s| {
            s.spawn(|| p.store(p.load().with(pool(2, 2 << 40))));
        });
        assert_eq!(find_id(&p, 1 << 40), Some(1));
        assert_eq!(cached(), Some((p.owner, 2)));
        assert_eq!(find_id(&p, 2 << 40), Some(2));
    }

    /// A retired pool's memory is released at once, though a cached set still holds the pool.
    #[test]
    fn retiring_releases_memory_that_a_cached_set_still_names() {
        let p = Published::new();
        let a = pool(1, 1 << 40);
        p.store(PoolSet::default().with(a.clone()));
        assert_eq!(find_id(&p, 1 << 40), Some(1));
        assert!(a.retire(false));
        p.store(p.load().without(1));
        assert!(a.memory_released());
        // This thread still caches the old set until its next lookup.
        let held = CACHED.with(|c| c.borrow().as_ref().map(|c| c.set.list.len()));
        assert_eq!(held, Some(1));
        assert_eq!(find_id(&p, 1 << 40), None);
    }
}
