//! One pool: shared memory carved into slots, split into areas with a lock each.
//!
//! The allocator follows Linux's `swiotlb_search_pool_area` (kernel/dma/swiotlb.c, 6.9+ form of
//! the alignment checks): each slot records the length of the free run from it to the end of its
//! segment (`list`), so a search only has to look at one slot per candidate start; starts are
//! stepped by a stride derived from the alignment masks.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use aligned_vec::{AVec, ConstAlign, CACHELINE_ALIGN};
use crossbeam_utils::CachePadded;

use crate::spinlock::{SpinGuard, SpinLock};
use crate::stats::{add, PoolStats, Shard};

/// Anonymous, populated, page-aligned memory; unmapped by [`PoolMem::release`] or on drop.
pub(crate) struct PoolMem {
    ptr: NonNull<u8>,
    len: usize,
    released: AtomicBool,
}

// SAFETY: PoolMem is a plain owned allocation; all accesses go through raw pointers whose
// exclusivity is guaranteed by slot ownership (one live mapping per slot).
unsafe impl Send for PoolMem {}
// SAFETY: as above; &PoolMem only hands out the base pointer.
unsafe impl Sync for PoolMem {}

/// Pools are prefaulted (`MAP_POPULATE`), except under Miri, which only models plain private
/// anonymous mappings (the flag changes no semantics).
#[cfg(not(miri))]
const POPULATE: libc::c_int = libc::MAP_POPULATE;
#[cfg(miri)]
const POPULATE: libc::c_int = 0;

impl PoolMem {
    pub(crate) fn new(len: usize) -> Option<PoolMem> {
        if len == 0 {
            return None;
        }
        // SAFETY: anonymous private mapping, no file, no fixed address: cannot alias anything.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(PoolMem {
            ptr: NonNull::new(p.cast())?,
            len,
            released: AtomicBool::new(false),
        })
    }

    /// Unmaps the memory now (once).
    ///
    /// # Safety
    /// Nothing may access the memory afterwards: the pool is retired (no slot in use, none can
    /// be allocated), so no mapping points into it.
    unsafe fn release(&self) {
        if !self.released.swap(true, Relaxed) {
            // SAFETY: ptr/len are exactly what mmap returned, unmapped only here (once); the
            // caller guarantees that nothing refers to the memory any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

impl Drop for PoolMem {
    fn drop(&mut self) {
        // SAFETY: the pool that owns this memory is being dropped: no mapping can outlive it
        // (mappings are of pools in a published set, which owns its pools).
        unsafe { self.release() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolKind {
    Initial,
    Dynamic,
    Transient,
}

impl PoolKind {
    fn name(self) -> &'static str {
        match self {
            PoolKind::Initial => "initial",
            PoolKind::Dynamic => "dynamic",
            PoolKind::Transient => "transient",
        }
    }
}

/// Per-slot metadata (Linux: `struct io_tlb_slot`).
#[derive(Clone, Copy, Default)]
struct Slot {
    /// First slot of a mapping.
    head: bool,
    /// Head only: slots of the run before the head (Linux: `pad_slots`).
    pad: u16,
    /// Head only: slots of the whole run, padding and `alloc_align_mask` round-up included
    /// (Linux keeps `alloc_size` per slot and derives it: `nr_slots(alloc_size + offset)`).
    nslots: u16,
    /// Head only: offset of the bounce address inside the head slot (`min_align_mask` bits).
    offset: u32,
    /// Head only: the mapping's length (Linux: the caller's `mapping_size`).
    len: u32,
    /// Head only: original (guest) address.
    orig: u64,
}

/// Hot-path counters kept under the area lock (no atomic read-modify-write on the fast path);
/// folded into the owner's totals when the pool goes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AreaCounts {
    pub maps: u64,
    pub unmaps: u64,
    pub lookups: u64,
    pub lookup_steps: u64,
    /// Bytes copied in on `Dma::map` and out on unmap (syncs count theirs in the shards).
    pub bytes_to_pool: u64,
    pub bytes_to_guest: u64,
}

impl AreaCounts {
    pub fn add(&mut self, o: &AreaCounts) {
        self.maps += o.maps;
        self.unmaps += o.unmaps;
        self.lookups += o.lookups;
        self.lookup_steps += o.lookup_steps;
        self.bytes_to_pool += o.bytes_to_pool;
        self.bytes_to_guest += o.bytes_to_guest;
    }
}

/// An area's per-slot arrays. Every map and unmap of the area's queue writes them, so they share
/// no cache line, nor the neighbour the prefetcher pairs with it, with any other allocation:
/// 128-byte aligned (`CACHELINE_ALIGN`, as `CachePadded`) and followed by at least 128 bytes of
/// spare capacity. (As plain `Vec`s, one's first line could hold the end of the `Dma` handle
/// that every queue reads on every map: two queues then ran at 1.0x one queue's throughput
/// instead of 1.9x, depending on where the allocator put them.)
type Lines<T> = AVec<T, ConstAlign<CACHELINE_ALIGN>>;

fn lines<T>(items: impl ExactSizeIterator<Item = T>) -> Lines<T> {
    let spare = CACHELINE_ALIGN.div_ceil(std::mem::size_of::<T>().max(1));
    let mut v = Lines::with_capacity(CACHELINE_ALIGN, items.len() + spare);
    for x in items {
        v.push(x);
    }
    v
}

struct AreaInner {
    /// Next search start, relative to the area (Linux: `area->index`).
    index: usize,
    counts: AreaCounts,
    used: usize,
    hiwater: usize,
    /// Use at which this area tells the growth worker to sum all areas (`growth=proposed`
    /// without the global counter; set by `arm_marks`), `usize::MAX` when disarmed.
    kick_at: usize,
    /// Per slot: free slots from here to the end of the segment; 0 = in use (Linux:
    /// `slots[i].list`). Kept apart from the metadata so the bounded free-run updates scan a
    /// dense array.
    list: Lines<u32>,
    /// Per slot metadata; only a mapping's head slot carries any.
    slots: Lines<Slot>,
}

struct Area {
    lock: SpinLock<AreaInner>,
    /// Mirrors of `used`/`hiwater` for lock-free reads (snapshots, idle checks).
    used: AtomicUsize,
    hiwater: AtomicUsize,
    /// Time (ns since the owner's epoch) of the last free in this area.
    last_free_ns: AtomicU64,
}

/// Alignment requirements of one mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapAttrs {
    /// Device's `min_align_mask` (e.g. NVMe: 4095): the bounce address keeps these bits of the
    /// original address.
    pub min_align_mask: u64,
    /// Alignment of the allocation itself (`alloc_align_mask`).
    pub alloc_align_mask: u64,
    /// The caller can defer the request (Linux: `DMA_ATTR_MAY_BLOCK`, from Kelley's throttling
    /// RFC): with `exhaustion=throttle` or `wait` the map may answer `DmaError::WouldBlock`.
    pub may_block: bool,
}

/// Bytes between the start of the allocation and the bounce address: the original address's
/// bits under `min_align_mask`, up to the allocation alignment (at least the slot).
pub(crate) fn align_offset(orig: u64, attrs: MapAttrs, slot_mask: u64) -> usize {
    (orig & attrs.min_align_mask & (attrs.alloc_align_mask | slot_mask)) as usize
}

/// One allocation request, with Linux's rules (6.12 `swiotlb_tbl_map_single` for the offset
/// and size, `swiotlb_search_pool_area` for the alignment) worked out once rather than in
/// every area tried.
pub(crate) struct Request {
    pub orig: u64,
    pub len: usize,
    /// Bytes between the start of the allocation and the bounce address.
    pub offset: usize,
    /// Bytes allocated: `offset + len` rounded up to `alloc_align_mask + 1` (Linux's `size`,
    /// the `alloc_size` it searches with); `u64::MAX` if that overflows.
    pub size: u64,
    pub nslots: usize,
    /// The allocation's start must be aligned to this mask (at least a slot).
    alloc_align_mask: u64,
    /// `min_align_mask` bits above `alloc_align_mask` that the start must share with `orig`.
    iotlb_align_mask: u64,
    /// Step between candidate starts, in slots.
    stride: usize,
    /// Bytes the caller copies in, counted with the map under the area lock.
    pub copy_in: u64,
}

impl Request {
    pub fn new(
        orig: u64,
        len: usize,
        attrs: MapAttrs,
        shift: u32,
        page: usize,
        copy_in: u64,
    ) -> Self {
        let slot_mask = (1u64 << shift) - 1;
        // `swiotlb_tbl_map_single`: offset = swiotlb_align_offset(dev, alloc_align_mask, orig)
        // (the kept bits may reach past the slot, up to the allocation alignment; whole slots
        // of it become `pad_slots`), size = ALIGN(mapping_size + offset, alloc_align_mask + 1).
        let offset = align_offset(orig, attrs, slot_mask);
        let mask = attrs.alloc_align_mask;
        let size = ((offset + len) as u64)
            .checked_add(mask)
            .map_or(u64::MAX, |s| s & !mask);
        // `swiotlb_search_pool_area`: mappings of a page or more are page aligned when neither
        // mask is given ("historically, swiotlb allocations >= PAGE_SIZE were guaranteed to be
        // page-aligned"); then at least slot aligned, and the `min_align_mask` bits the offset
        // already keeps are not matched again.
        let mut alloc_align_mask = mask;
        if alloc_align_mask == 0 && attrs.min_align_mask == 0 && size >= page as u64 {
            alloc_align_mask = page as u64 - 1;
        }
        alloc_align_mask |= slot_mask;
        let iotlb_align_mask = attrs.min_align_mask & !alloc_align_mask;
        Request {
            orig,
            len,
            offset,
            size,
            nslots: size.div_ceil(1 << shift) as usize,
            alloc_align_mask,
            iotlb_align_mask,
            stride: ((alloc_align_mask.max(iotlb_align_mask) >> shift) + 1) as usize,
            copy_in,
        }
    }

    /// Whether an allocation may start at bounce address `addr`.
    fn fits_alignment(&self, addr: u64) -> bool {
        addr & self.alloc_align_mask == 0
            && (self.orig == 0 || addr & self.iotlb_align_mask == self.orig & self.iotlb_align_mask)
    }
}

/// The head slot of the live mapping at area slot `li` whose bounce address is `in_slot` bytes
/// into that slot: `NotMapped` if the slot is free, `NotMappingStart` if it is not where a
/// mapping's bounce address points.
#[inline(always)]
fn mapping_head(
    g: &AreaInner,
    li: usize,
    in_slot: u32,
    addr: u64,
) -> Result<Slot, crate::DmaError> {
    let head = g.slots[li];
    if g.list[li] != 0 {
        return Err(crate::DmaError::NotMapped { addr });
    }
    if !head.head || head.offset != in_slot {
        return Err(crate::DmaError::NotMappingStart { addr });
    }
    Ok(head)
}

/// Linux `wrap_area_index`: past the end of the area, the search goes on at its start (slot
/// 0, not `i - n`: with a stride above one the two differ).
fn wrap(i: usize, n: usize) -> usize {
    if i >= n {
        0
    } else {
        i
    }
}

pub struct Pool {
    pub(crate) id: u64,
    pub(crate) kind: PoolKind,
    mem: PoolMem,
    /// Bounce address of slot 0, in the model's own bounce address space (see
    /// `swiotlb::BOUNCE_BASE`), not the host address of `mem`.
    pub(crate) start: u64,
    pub(crate) nslots: usize,
    shift: u32,
    seg: usize,
    area_nslots: usize,
    /// `log2(area_nslots)` when it is a power of two (the usual case): finding a slot's area is
    /// then a shift, not a division, on every unmap.
    area_shift: Option<u32>,
    areas: Box<[CachePadded<Area>]>,
    /// Set (under every area lock, with no slot in use) when the pool is being released.
    retired: AtomicBool,
    /// `SlotReuse::Lifo`.
    lifo: bool,
    /// Time spent waiting for this pool's area locks (contended acquisitions only). Padded:
    /// written by contending threads, it must not share a line with the read-mostly fields.
    lock_wait_ns: CachePadded<AtomicU64>,
    pub(crate) created: Instant,
    /// A transient pool whose memory came from the atomic pools (shared already: not counted
    /// again in the set's shared bytes, not converted back on release).
    pub(crate) carved: bool,
    /// Told when an area's use reaches its mark (`arm_marks`).
    pub(crate) marks: Option<Arc<dyn MarkCrossed>>,
}

/// What an area calls when its use reaches the mark the growth worker set (the worker then
/// sums every area's use: `growth=proposed` without the global used counter).
pub(crate) trait MarkCrossed: Send + Sync {
    fn crossed(&self);
}

/// Locks every area of `pools` at once and sums their use exactly. If `arm` and `used * 100 <
/// threshold * total`, arms each area's mark at its use plus `ceil(D / n)`, where `D` more
/// slots would reach the threshold and `n` is the number of areas: the total cannot reach the
/// threshold again before some area reaches its mark (if every area rose by less, the total
/// rose by less than `D`). Returns (used, total) slots.
pub(crate) fn arm_marks(pools: &[Arc<Pool>], threshold: u8, arm: bool) -> (usize, usize) {
    let mut guards: Vec<_> = pools
        .iter()
        .flat_map(|p| p.areas.iter().map(|a| a.lock.lock()))
        .collect();
    let used: usize = guards.iter().map(|g| g.used).sum();
    let total: usize = pools
        .iter()
        .filter(|p| !p.is_retired())
        .map(|p| p.nslots)
        .sum();
    let goal = (threshold as usize * total).div_ceil(100);
    if arm && used < goal && !guards.is_empty() {
        let step = (goal - used).div_ceil(guards.len());
        for g in &mut guards {
            g.kick_at = g.used + step;
        }
    }
    (used, total)
}

impl Pool {
    /// A pool of `nslots` slots of `1 << shift` bytes at bounce address `start`, `nareas` areas
    /// (a power of two dividing `nslots` in whole segments, or 1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        kind: PoolKind,
        start: u64,
        nslots: usize,
        shift: u32,
        seg: usize,
        nareas: usize,
        page: usize,
        lifo: bool,
    ) -> Option<Pool> {
        let bytes = (nslots << shift).next_multiple_of(page);
        let mem = PoolMem::new(bytes)?;
        let nareas = if nareas > 1 && nslots % (nareas * seg) == 0 {
            nareas
        } else {
            1
        };
        let area_nslots = nslots / nareas;
        let areas = (0..nareas)
            .map(|a| {
                let base = a * area_nslots;
                // Linux `swiotlb_init_io_tlb_pool`:
                // min(IO_TLB_SEGSIZE - io_tlb_offset(i), nslabs - i).
                let list = lines(
                    (base..base + area_nslots)
                        .map(|i| (seg - (i & (seg - 1))).min(nslots - i) as u32),
                );
                let slots = lines((0..area_nslots).map(|_| Slot::default()));
                CachePadded::new(Area {
                    lock: SpinLock::new(AreaInner {
                        index: 0,
                        counts: AreaCounts::default(),
                        used: 0,
                        hiwater: 0,
                        kick_at: usize::MAX,
                        list,
                        slots,
                    }),
                    used: AtomicUsize::new(0),
                    hiwater: AtomicUsize::new(0),
                    last_free_ns: AtomicU64::new(0),
                })
            })
            .collect();
        Some(Pool {
            id,
            kind,
            start,
            mem,
            nslots,
            shift,
            seg,
            area_nslots,
            area_shift: area_nslots
                .is_power_of_two()
                .then(|| area_nslots.trailing_zeros()),
            areas,
            retired: AtomicBool::new(false),
            lifo,
            lock_wait_ns: CachePadded::new(AtomicU64::new(0)),
            created: Instant::now(),
            carved: false,
            marks: None,
        })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.mem.len as u64
    }

    pub(crate) fn end(&self) -> u64 {
        self.start + ((self.nslots as u64) << self.shift)
    }

    pub(crate) fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end()
    }

    /// Sets every area's high-water mark to its current use.
    pub(crate) fn reset_hiwater(&self) {
        for a in self.areas.iter() {
            let mut g = a.lock.lock();
            g.hiwater = g.used;
            a.hiwater.store(g.used, Relaxed);
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.areas.iter().map(|a| a.used.load(Relaxed)).sum()
    }

    pub(crate) fn last_free_ns(&self) -> u64 {
        self.areas
            .iter()
            .map(|a| a.last_free_ns.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Host pointer of a bounce address inside this pool.
    pub(crate) fn host_ptr(&self, addr: u64) -> NonNull<u8> {
        debug_assert!(self.contains(addr));
        // SAFETY: addr is inside the mapping (callers check `contains`), so the offset is in
        // bounds of the same allocation.
        unsafe { self.mem.ptr.add((addr - self.start) as usize) }
    }

    fn area_of(&self, index: usize) -> usize {
        match self.area_shift {
            Some(s) => index >> s,
            None => index / self.area_nslots,
        }
    }

    pub(crate) fn slot_addr(&self, index: usize) -> u64 {
        self.start + ((index as u64) << self.shift)
    }

    #[inline(always)]
    fn lock_area<'a>(&'a self, a: &'a Area, shard: &Shard) -> SpinGuard<'a, AreaInner> {
        match a.lock.try_lock() {
            Some(g) => g,
            None => self.lock_contended(a, shard),
        }
    }

    /// Waits for an area lock another thread holds, counting the wait.
    #[cold]
    #[inline(never)]
    fn lock_contended<'a>(&'a self, a: &'a Area, shard: &Shard) -> SpinGuard<'a, AreaInner> {
        let t = Instant::now();
        let g = a.lock.lock();
        let ns = t.elapsed().as_nanos() as u64;
        add(&shard.lock_wait_ns, ns);
        self.lock_wait_ns.fetch_add(ns, Relaxed);
        add(&shard.lock_contended, 1);
        g
    }

    /// Tries every area, starting at `hint`'s (Linux: `swiotlb_search_area`).
    /// Returns the first slot of the allocation.
    #[inline(always)]
    pub(crate) fn alloc(&self, hint: usize, req: &Request, shard: &Shard) -> Option<usize> {
        let n = self.areas.len();
        let first = hint & (n - 1);
        // A plain loop: `find_map`'s closure was left out of line (a call and a frame per map).
        for i in 0..n {
            if let Some(found) = self.alloc_in_area((first + i) & (n - 1), req, shard) {
                return Some(found);
            }
        }
        None
    }

    /// Areas of the pool (a power of two).
    pub(crate) fn nareas(&self) -> usize {
        self.areas.len()
    }

    /// Linux `swiotlb_search_pool_area`: the first fitting run from area `a`'s search index.
    #[inline(always)]
    pub(crate) fn alloc_in_area(&self, a: usize, req: &Request, shard: &Shard) -> Option<usize> {
        let nslots = req.nslots;
        let area = &self.areas[a];
        if area.used.load(Relaxed) + nslots > self.area_nslots {
            return None; // Cheap early out without the lock (re-checked below).
        }
        let mut g = self.lock_area(area, shard);
        if self.retired.load(Relaxed) || g.used + nslots > self.area_nslots {
            return None;
        }
        let base = a * self.area_nslots;
        let mut index = g.index;
        let mut checked = 0;
        let found = loop {
            if checked >= self.area_nslots {
                return None;
            }
            if !req.fits_alignment(self.slot_addr(base + index)) {
                index = wrap(index + 1, self.area_nslots);
                checked += 1;
                continue;
            }
            if g.list[index] as usize >= nslots {
                break index;
            }
            index = wrap(index + req.stride, self.area_nslots);
            checked += req.stride;
        };
        let g = &mut *g;
        let list = &mut g.list;
        // An opaque zero: a store of a known constant in a loop (or `fill`) becomes a call to
        // `memset`, several times the cost of the few stores a run needs.
        let in_use = std::hint::black_box(0);
        for x in &mut list[found..found + nslots] {
            *x = in_use;
        }
        let pad = req.offset >> self.shift;
        g.slots[found + pad] = Slot {
            head: true,
            pad: pad as u16,
            nslots: nslots as u16,
            offset: (req.offset & ((1 << self.shift) - 1)) as u32,
            len: req.len as u32,
            orig: req.orig,
        };
        // Free slots before the run, in the same segment, now end at the run.
        self.count_back(list, base, found, 0);
        g.index = wrap(found + nslots, self.area_nslots);
        g.counts.maps += 1;
        g.counts.bytes_to_pool += req.copy_in;
        g.used += nslots;
        if g.used > g.hiwater {
            g.hiwater = g.used;
            area.hiwater.store(g.hiwater, Relaxed);
        }
        area.used.store(g.used, Relaxed);
        if g.used >= g.kick_at {
            g.kick_at = usize::MAX;
            self.mark_crossed();
        }
        Some(base + found)
    }

    #[cold]
    #[inline(never)]
    fn mark_crossed(&self) {
        if let Some(m) = &self.marks {
            m.crossed();
        }
    }

    /// Linux's loop over the free slots before area slot `at` in its segment (`list[at - 1] =
    /// after + 1`, `list[at - 2] = after + 2`, ... until a used slot or the segment start), as a
    /// scan for the run's start and then a straight store loop (vectorizable; same result).
    #[inline]
    fn count_back(&self, list: &mut [u32], base: usize, at: usize, after: u32) {
        // Areas start on a segment boundary (`base` is a multiple of `seg`).
        let seg_lo = at - ((base + at) & (self.seg - 1));
        if at == seg_lo || list[at - 1] == 0 {
            return; // The common case with `reuse=lifo` (a run at the segment start).
        }
        let lo = list[seg_lo..at]
            .iter()
            .rposition(|&x| x == 0)
            .map_or(seg_lo, |p| seg_lo + p + 1);
        let n = (at - lo) as u32;
        for (d, x) in list[lo..at].iter_mut().enumerate() {
            *x = after + n - d as u32;
        }
    }

    /// Releases the mapping whose bounce address is `addr` (Linux: `swiotlb_release_slots`).
    /// Returns (nslots, original address, mapping length). `copied_out`: bytes the caller copied
    /// back to the guest, counted (under the area lock) only when the release succeeds.
    #[inline(always)]
    pub(crate) fn free(
        &self,
        addr: u64,
        now_ns: u64,
        lookup_steps: u64,
        shard: &Shard,
        copied_out: u64,
    ) -> Result<(usize, u64, usize), crate::DmaError> {
        let (mut g, a, li, in_slot) = self.lock_slot(addr, shard)?;
        let area = &self.areas[a];
        let base = a * self.area_nslots;
        g.counts.lookups += 1;
        g.counts.lookup_steps += lookup_steps;
        let head = mapping_head(&g, li, in_slot, addr)?;
        // Linux: `index -= mem->slots[index].pad_slots`.
        let li = li - head.pad as usize;
        let index = base + li;
        let nslots = head.nslots as usize;
        let g = &mut *g;
        // Only a head's metadata is ever read, and a new head writes all of it.
        g.slots[li + head.pad as usize].head = false;
        let list = &mut g.list;
        let mut count = if li + nslots < self.area_nslots && (index + nslots) & (self.seg - 1) != 0
        {
            list[li + nslots]
        } else {
            0
        };
        // The run is free again (short: a plain loop beats a vectorized one's set-up here).
        for x in list[li..li + nslots].iter_mut().rev() {
            count += 1;
            *x = count;
        }
        // And the free slots before it, in the same segment, now run on through it.
        self.count_back(list, base, li, count);
        if self.lifo && g.index == wrap(li + nslots, self.area_nslots) {
            g.index = li;
        }
        g.counts.unmaps += 1;
        g.counts.bytes_to_guest += copied_out;
        g.used -= nslots;
        area.used.store(g.used, Relaxed);
        if now_ns != 0 {
            area.last_free_ns.store(now_ns, Relaxed); // Only pools that can shrink pass a time.
        }
        Ok((nslots, head.orig, head.len as usize))
    }

    /// Original address and length of the live mapping at `addr`, if any (for address-based
    /// syncs).
    pub(crate) fn mapping(
        &self,
        addr: u64,
        shard: &Shard,
    ) -> Result<(u64, usize), crate::DmaError> {
        let (g, _, li, in_slot) = self.lock_slot(addr, shard)?;
        let s = mapping_head(&g, li, in_slot, addr)?;
        Ok((s.orig, s.len as usize))
    }

    /// Locks the area holding bounce address `addr` (inside this pool); returns its guard, the
    /// area, the slot's index in the area and `addr`'s offset in the slot. A retired pool (found
    /// in a set read before it went) answers as if it had not been found.
    #[inline(always)]
    fn lock_slot(
        &self,
        addr: u64,
        shard: &Shard,
    ) -> Result<(SpinGuard<'_, AreaInner>, usize, usize, u32), crate::DmaError> {
        let rel = addr - self.start;
        let index = (rel >> self.shift) as usize;
        let in_slot = (rel & ((1 << self.shift) - 1)) as u32;
        let a = self.area_of(index);
        let g = self.lock_area(&self.areas[a], shard);
        if self.retired.load(Relaxed) {
            return Err(crate::DmaError::UnknownAddress { addr });
        }
        Ok((g, a, index - a * self.area_nslots, in_slot))
    }

    /// Retires the pool if no slot is in use (or, with `force`, in any case: its owner is being
    /// dropped): afterwards nothing can be allocated or freed in it, and its memory and slot
    /// metadata are released at once, not when the last reader's copy of a pool set goes.
    pub(crate) fn retire(&self, force: bool) -> bool {
        let mut guards: Vec<_> = self.areas.iter().map(|a| a.lock.lock()).collect();
        if self.retired.load(Relaxed) || (!force && guards.iter().any(|g| g.used != 0)) {
            return false;
        }
        self.retired.store(true, Relaxed);
        for g in &mut guards {
            g.list = Lines::new(CACHELINE_ALIGN);
            g.slots = Lines::new(CACHELINE_ALIGN);
        }
        // SAFETY: retired under every area lock: no slot is in use (or the owner is going, and
        // with it every mapping), and allocation and release check `retired` under the lock.
        unsafe { self.mem.release() };
        true
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn memory_released(&self) -> bool {
        self.mem.released.load(Relaxed)
    }

    /// The free-run counts of every slot (Linux: `slots[i].list`; test helper).
    #[cfg(test)]
    pub(crate) fn free_runs(&self) -> Vec<u32> {
        self.areas
            .iter()
            .flat_map(|a| a.lock.lock().list.iter().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Every slot free and its free-run count as after init (test helper).
    #[cfg(test)]
    pub(crate) fn check_all_free(&self) -> bool {
        self.areas.iter().enumerate().all(|(a, area)| {
            let g = area.lock.lock();
            g.used == 0
                && g.slots
                    .iter()
                    .zip(g.list.iter())
                    .enumerate()
                    .all(|(li, (s, &l))| {
                        let i = a * self.area_nslots + li;
                        l as usize == (self.seg - (i & (self.seg - 1))).min(self.nslots - i)
                            && !s.head
                    })
        })
    }

    /// Sum of the areas' hot-path counters.
    pub(crate) fn counts(&self) -> AreaCounts {
        let mut c = AreaCounts::default();
        for a in self.areas.iter() {
            c.add(&a.lock.lock().counts);
        }
        c
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let c = self.counts();
        PoolStats {
            id: self.id,
            kind: self.kind.name().to_string(),
            start: self.start,
            bytes: self.bytes(),
            slots: self.nslots as u64,
            areas: self.areas.len() as u64,
            slots_used: self.used() as u64,
            slots_used_hiwater: self
                .areas
                .iter()
                .map(|a| a.hiwater.load(Relaxed) as u64)
                .sum(),
            maps: c.maps,
            unmaps: c.unmaps,
            lookups: c.lookups,
            lookup_steps: c.lookup_steps,
            lock_wait_ns: self.lock_wait_ns.load(Relaxed),
        }
    }
}
