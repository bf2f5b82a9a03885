//! dma-pool.c's atomic pools (kernel/dma/pool.c, Linux 5.8+), where an encrypted guest's
//! transient swiotlb pools come from: `swiotlb_alloc_tlb` (kernel/dma/swiotlb.c, 6.6+) takes
//! memory for a pool made where it may not block (`GFP_NOWAIT`, as `swiotlb_find_slots` makes
//! transient pools on the map path) from `dma_alloc_from_pool` when the device needs
//! unencrypted memory, "because decrypting may block". That memory was decrypted when its pool
//! was created (`dma_atomic_pool_init`, at start-up) or expanded (`atomic_pool_work_fn`, a
//! work item, in the background) and is never encrypted again: a transient pool converts
//! nothing on the I/O path. `swiotlb_free_tlb` gives it back (`dma_free_from_pool`).
//!
//! The model: one pool per zone (searched kernel, DMA32, DMA: `dma_guess_pool` for a device
//! without zone limits), each a list of chunks with a page bitmap, allocated first fit with
//! the allocation aligned to its size rounded up to a power of two
//! (`gen_pool_first_fit_order_align`, page granularity). After an allocation leaves a pool
//! with less free space than `atomic_pool_size`, the worker is woken; it grows every such pool
//! by its current size (doubling), in one block of at most `MAX_ORDER_BYTES`, halving when the
//! cap refuses (`atomic_pool_expand`, which lowers the order when allocation fails). When no
//! pool can hold a transient pool, the map fails, as Linux's does (`swiotlb_find_slots`
//! returns -1: "swiotlb buffer is full"). Not modeled: the RCU grace period before a freed
//! transient pool's memory returns (`swiotlb_dyn_free`), and the atomic pools' other users
//! (`dma_alloc_coherent` in atomic context).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The atomic pools' state, in the statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtomicPoolStats {
    /// Pools (one per zone); 0 when transient pools do not come from atomic pools.
    pub zones: u64,
    /// `atomic_pool_size`: each pool's first size and the free space below which it grows.
    pub size_bytes: u64,
    /// All pools' memory (shared: converted at start-up or by the worker).
    pub bytes: u64,
    /// Of which holding transient pools now, and at most so far.
    pub used_bytes: u64,
    pub used_bytes_hiwater: u64,
    /// Transient pools carved, and the maps that found no room (also in `failures`).
    pub allocs: u64,
    pub exhausted: u64,
    /// Blocks the worker added, and expansions the cap refused.
    pub expansions: u64,
    pub expansion_failures: u64,
}

struct Chunk {
    used: Vec<bool>,
}

impl Chunk {
    /// `gen_pool_first_fit_order_align`: the first free run of `n` pages starting at a multiple
    /// of `n` rounded up to a power of two (relative to the chunk).
    fn find(&self, n: usize) -> Option<usize> {
        let align = n.next_power_of_two();
        (0..self.used.len())
            .step_by(align)
            .take_while(|&i| i + n <= self.used.len())
            .find(|&i| self.used[i..i + n].iter().all(|u| !u))
    }
}

#[derive(Default)]
struct Zone {
    chunks: Vec<Chunk>,
    used: usize,
}

impl Zone {
    fn pages(&self) -> usize {
        self.chunks.iter().map(|c| c.used.len()).sum()
    }

    fn avail(&self) -> usize {
        self.pages() - self.used
    }
}

#[derive(Clone, Copy)]
struct Loc {
    zone: usize,
    chunk: usize,
    first: usize,
    n: usize,
}

struct Inner {
    zones: Vec<Zone>,
    /// Transient pool id -> its pages.
    live: HashMap<u64, Loc>,
    stats: AtomicPoolStats,
}

pub(super) struct AtomicPools {
    page: u64,
    /// `atomic_pool_size`, in pages.
    watermark: usize,
    /// `MAX_ORDER_NR_PAGES`.
    max_block: usize,
    inner: Mutex<Inner>,
}

impl AtomicPools {
    pub fn new(zones: usize, size_bytes: u64, page: u64, max_block_bytes: u64) -> Self {
        AtomicPools {
            page,
            watermark: size_bytes.div_ceil(page) as usize,
            max_block: (max_block_bytes / page).max(1) as usize,
            inner: Mutex::new(Inner {
                zones: (0..zones).map(|_| Zone::default()).collect(),
                live: HashMap::new(),
                stats: AtomicPoolStats {
                    zones: zones as u64,
                    size_bytes,
                    ..Default::default()
                },
            }),
        }
    }

    /// Pages of a block of `pages` pages as the page allocator gives it: rounded up to a power
    /// of two (`get_order`), at most `MAX_ORDER_NR_PAGES`.
    fn block(&self, pages: usize) -> usize {
        pages.max(1).next_power_of_two().min(self.max_block)
    }

    /// The blocks start-up creates, one per zone (`__dma_atomic_pool_init` ->
    /// `atomic_pool_expand(pool, atomic_pool_size)`): `(zone, pages)`.
    pub fn initial_blocks(&self) -> Vec<(usize, usize)> {
        let n = self.inner.lock().zones.len();
        (0..n).map(|z| (z, self.block(self.watermark))).collect()
    }

    /// The blocks the worker would add now (`atomic_pool_work_fn` -> `atomic_pool_resize`):
    /// each pool with less free space than `atomic_pool_size` grows by its current size.
    pub fn wanted_blocks(&self) -> Vec<(usize, usize)> {
        let inner = self.inner.lock();
        inner
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.avail() < self.watermark)
            .map(|(i, z)| (i, self.block(z.pages())))
            .collect()
    }

    /// Adds a block of `pages` (already converted) to zone `zone`'s pool.
    pub fn add_block(&self, zone: usize, pages: usize, expansion: bool) {
        let mut inner = self.inner.lock();
        inner.zones[zone].chunks.push(Chunk {
            used: vec![false; pages],
        });
        inner.stats.bytes += pages as u64 * self.page;
        if expansion {
            inner.stats.expansions += 1;
        }
    }

    pub fn expansion_failed(&self) {
        self.inner.lock().stats.expansion_failures += 1;
    }

    /// Takes `bytes` (rounded up to pages) for transient pool `id`: `None` when no pool can
    /// hold them; otherwise whether the pool it came from is now below the watermark (the
    /// worker should grow it).
    pub fn alloc(&self, id: u64, bytes: u64) -> Option<bool> {
        let n = bytes.div_ceil(self.page) as usize;
        let mut inner = self.inner.lock();
        let found = inner.zones.iter().enumerate().find_map(|(z, zone)| {
            zone.chunks
                .iter()
                .enumerate()
                .find_map(|(c, chunk)| chunk.find(n).map(|first| (c, first)))
                .map(|(chunk, first)| Loc {
                    zone: z,
                    chunk,
                    first,
                    n,
                })
        });
        let Some(loc) = found else {
            inner.stats.exhausted += 1;
            return None;
        };
        let zone = &mut inner.zones[loc.zone];
        zone.chunks[loc.chunk].used[loc.first..loc.first + n].fill(true);
        zone.used += n;
        let low = zone.avail() < self.watermark;
        inner.live.insert(id, loc);
        let s = &mut inner.stats;
        s.allocs += 1;
        s.used_bytes += n as u64 * self.page;
        s.used_bytes_hiwater = s.used_bytes_hiwater.max(s.used_bytes);
        Some(low)
    }

    /// Gives transient pool `id`'s pages back; false if it had none.
    pub fn free(&self, id: u64) -> bool {
        let mut inner = self.inner.lock();
        let Some(loc) = inner.live.remove(&id) else {
            return false;
        };
        let zone = &mut inner.zones[loc.zone];
        zone.chunks[loc.chunk].used[loc.first..loc.first + loc.n].fill(false);
        zone.used -= loc.n;
        inner.stats.used_bytes -= loc.n as u64 * self.page;
        true
    }

    pub fn stats(&self) -> AtomicPoolStats {
        self.inner.lock().stats.clone()
    }

    pub fn reset_hiwater(&self) {
        let mut inner = self.inner.lock();
        inner.stats.used_bytes_hiwater = inner.stats.used_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_aligned_to_the_size_rounded_up() {
        let a = AtomicPools::new(1, 32 << 12, 4096, 4 << 20);
        a.add_block(0, 32, false);
        assert_eq!(a.alloc(1, 4096), Some(true)); // page 0; 31 free < 32: grow
        assert_eq!(a.alloc(2, 3 * 4096), Some(true)); // 3 pages aligned to 4: pages 4..7
        assert_eq!(a.alloc(3, 4096), Some(true)); // page 1
        let inner = a.inner.lock();
        let at = |id| inner.live[&id].first;
        assert_eq!((at(1), at(2), at(3)), (0, 4, 1));
        drop(inner);
        // 16 pages aligned to 16: only 16..31 is free and aligned.
        assert_eq!(a.alloc(4, 16 * 4096), Some(true));
        assert_eq!(a.inner.lock().live[&4].first, 16);
        assert_eq!(a.alloc(5, 16 * 4096), None);
        assert!(a.free(4) && !a.free(4));
        assert_eq!(a.alloc(5, 16 * 4096), Some(true));
        let s = a.stats();
        assert_eq!((s.allocs, s.exhausted), (5, 1));
        assert_eq!(s.used_bytes, (1 + 3 + 1 + 16) * 4096);
        assert_eq!(s.used_bytes_hiwater, s.used_bytes);
    }

    #[test]
    fn blocks_double_the_pool_up_to_the_largest_block() {
        // 384 KiB (a 3 GiB guest): the first block is 512 KiB, the power of two above.
        let a = AtomicPools::new(2, 384 << 10, 4096, 4 << 20);
        assert_eq!(a.initial_blocks(), vec![(0, 128), (1, 128)]);
        for (z, p) in a.initial_blocks() {
            a.add_block(z, p, false);
        }
        assert_eq!(a.wanted_blocks(), vec![], "512 KiB free >= 384 KiB");
        // Take 200 KiB of zone 0 (the first searched): 312 KiB free < 384 KiB.
        assert_eq!(a.alloc(1, 200 << 10), Some(true));
        assert_eq!(a.wanted_blocks(), vec![(0, 128)], "grow by its size");
        a.add_block(0, 128, true);
        assert_eq!(a.wanted_blocks(), vec![]);
        // Pools past 4 MiB grow by 4 MiB blocks.
        let b = AtomicPools::new(1, 4 << 20, 4096, 4 << 20);
        for _ in 0..2 {
            b.add_block(0, 1024, true);
        }
        // 4 MiB left is not below the 4 MiB watermark; 2 MiB is.
        assert_eq!(b.alloc(1, 4 << 20), Some(false));
        assert_eq!(b.wanted_blocks(), vec![]);
        assert_eq!(b.alloc(2, 2 << 20), Some(true));
        assert_eq!(b.wanted_blocks(), vec![(0, 1024)]);
        assert_eq!(b.stats().expansions, 2);
    }
}
