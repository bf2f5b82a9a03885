//! A reference model for the tests: Linux 6.12's swiotlb slot allocator (kernel/dma/swiotlb.c,
//! `CONFIG_SWIOTLB_DYNAMIC`, `CONFIG_DEBUG_FS`), ported function by function in the kernel's
//! own shape, names and order of operations, so that a test can check that `bounce` hands out
//! **the same slot** as Linux for every request, not only that its answers are valid:
//!
//! - `swiotlb_tbl_map_single` (the offset and the rounded-up size, the `pad_slots` bookkeeping),
//! - `swiotlb_find_slots` (each area offset from the mapping CPU's, across every pool; then a
//!   transient pool of exactly the request's slots), `swiotlb_search_area`,
//! - `swiotlb_search_pool_area` (the 6.9+ alignment rules: page alignment only when neither mask
//!   is given and the allocation is a page or more; the stride; `wrap_area_index`),
//! - `swiotlb_release_slots` and `swiotlb_del_transient` (`__swiotlb_tbl_unmap_single`),
//! - `swiotlb_init_io_tlb_pool`, `swiotlb_align_offset`, `iommu_is_span_boundary`,
//!   `add_mem_pool` (newest pool at the head of the list), `__swiotlb_find_pool`.
//!
//! Only what decides slot choice is kept: no memory, no copies, no locks (the model is driven
//! from one thread), no statistics. The CPU is the mapping's `DmaSource` hint, as in `bounce`;
//! the device's segment boundary mask is the default (`ULONG_MAX`: no boundary); pool
//! addresses are given by the test (they are `bounce`'s own, so that alignment is judged on
//! the same numbers). Never used by the product.

/// `IO_TLB_SHIFT`, `IO_TLB_SIZE`, `IO_TLB_SEGSIZE`, `PAGE_SIZE` (x86-64 and arm64 4K).
pub(super) const IO_TLB_SHIFT: u32 = 11;
const IO_TLB_SIZE: u64 = 1 << IO_TLB_SHIFT;
const IO_TLB_SEGSIZE: usize = 128;
const PAGE_SIZE: u64 = 4096;
const INVALID_PHYS_ADDR: u64 = u64::MAX;
/// `dma_get_seg_boundary` of a device without `dma_parms`.
const BOUNDARY_MASK: u64 = u64::MAX;

/// `struct io_tlb_slot`.
#[derive(Clone, Copy)]
struct Slot {
    orig_addr: u64,
    alloc_size: usize,
    list: usize,
    pad_slots: usize,
}

/// `struct io_tlb_area`.
#[derive(Clone, Copy, Default)]
struct Area {
    used: usize,
    index: usize,
}

/// `struct io_tlb_pool`.
pub(super) struct Pool {
    pub start: u64,
    end: u64,
    nslabs: usize,
    nareas: usize,
    area_nslabs: usize,
    areas: Vec<Area>,
    slots: Vec<Slot>,
    transient: bool,
}

impl Pool {
    /// The free-run counts (`slots[i].list`), to compare with `bounce`'s.
    pub fn lists(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.list as u32).collect()
    }
}

/// `struct io_tlb_mem` (the parts the slot search reads), with one device's transient pools
/// (`dev->dma_io_tlb_pools`) and its `min_align_mask`.
pub(super) struct Mem {
    /// `mem->pools`: newest first.
    pub pools: Vec<Pool>,
    /// `dev->dma_io_tlb_pools`: newest first.
    pub transient: Vec<Pool>,
    default_nareas: usize,
    can_grow: bool,
}

fn io_tlb_offset(val: usize) -> usize {
    val & (IO_TLB_SEGSIZE - 1)
}

fn nr_slots(val: u64) -> usize {
    val.div_ceil(IO_TLB_SIZE) as usize
}

fn slot_addr(start: u64, idx: u64) -> u64 {
    start + (idx << IO_TLB_SHIFT)
}

fn get_max_slots(boundary_mask: u64) -> u64 {
    (boundary_mask >> IO_TLB_SHIFT) + 1
}

fn wrap_area_index(mem: &Pool, index: usize) -> usize {
    if index >= mem.area_nslabs {
        return 0;
    }
    index
}

/// include/linux/iommu-helper.h.
fn iommu_is_span_boundary(index: u64, nr: u64, shift: u64, boundary_size: u64) -> bool {
    let shift = (shift + index) & (boundary_size - 1);
    shift + nr > boundary_size
}

fn swiotlb_align_offset(min_align_mask: u64, align_mask: u64, addr: u64) -> u64 {
    addr & min_align_mask & (align_mask | (IO_TLB_SIZE - 1))
}

/// `limit_nareas`.
pub(super) fn limit_nareas(nareas: usize, nslots: usize) -> usize {
    if nslots < nareas * IO_TLB_SEGSIZE {
        return nslots / IO_TLB_SEGSIZE;
    }
    nareas
}

/// `swiotlb_init_io_tlb_pool` (with `swiotlb_alloc_pool`'s allocation of the arrays).
pub(super) fn init_pool(start: u64, nslabs: usize, nareas: usize, transient: bool) -> Pool {
    let bytes = (nslabs as u64) << IO_TLB_SHIFT;
    let mut mem = Pool {
        start,
        end: start + bytes,
        nslabs,
        nareas,
        area_nslabs: nslabs / nareas,
        areas: vec![Area::default(); nareas],
        slots: Vec::with_capacity(nslabs),
        transient,
    };
    for i in 0..nslabs {
        mem.slots.push(Slot {
            list: (IO_TLB_SEGSIZE - io_tlb_offset(i)).min(nslabs - i),
            orig_addr: INVALID_PHYS_ADDR,
            alloc_size: 0,
            pad_slots: 0,
        });
    }
    mem
}

/// `swiotlb_search_pool_area`: the index of the first allocated slot.
fn swiotlb_search_pool_area(
    min_align_mask: u64,
    pool: &mut Pool,
    area_index: usize,
    orig_addr: u64,
    alloc_size: u64,
    mut alloc_align_mask: u64,
) -> Option<usize> {
    let boundary_mask = BOUNDARY_MASK;
    let tbl_dma_addr = pool.start & boundary_mask;
    let max_slots = get_max_slots(boundary_mask);
    let mut iotlb_align_mask = min_align_mask;
    let nslots = nr_slots(alloc_size);
    let offset = swiotlb_align_offset(min_align_mask, 0, orig_addr) as usize;
    let mut count = 0;
    assert!(nslots != 0 && area_index < pool.nareas);

    // Historically, allocations >= PAGE_SIZE were page aligned when nothing else is asked.
    if alloc_align_mask == 0 && iotlb_align_mask == 0 && alloc_size >= PAGE_SIZE {
        alloc_align_mask = PAGE_SIZE - 1;
    }
    alloc_align_mask |= IO_TLB_SIZE - 1;
    iotlb_align_mask &= !alloc_align_mask;
    let stride = get_max_slots(alloc_align_mask.max(iotlb_align_mask)) as usize;

    // spin_lock_irqsave(&area->lock)
    let area = pool.areas[area_index];
    if nslots > pool.area_nslabs - area.used {
        return None;
    }
    let slot_base = area_index * pool.area_nslabs;
    let mut index = area.index;
    let mut slots_checked = 0;
    let mut slot_index;
    loop {
        if slots_checked >= pool.area_nslabs {
            return None; // not_found
        }
        slot_index = slot_base + index;
        let tlb_addr = slot_addr(tbl_dma_addr, slot_index as u64);
        if (tlb_addr & alloc_align_mask) != 0
            || (orig_addr != 0 && (tlb_addr & iotlb_align_mask) != (orig_addr & iotlb_align_mask))
        {
            index = wrap_area_index(pool, index + 1);
            slots_checked += 1;
            continue;
        }
        if !iommu_is_span_boundary(
            slot_index as u64,
            nslots as u64,
            nr_slots(tbl_dma_addr) as u64,
            max_slots,
        ) && pool.slots[slot_index].list >= nslots
        {
            break; // found
        }
        index = wrap_area_index(pool, index + stride);
        slots_checked += stride;
    }
    // found:
    for i in slot_index..slot_index + nslots {
        pool.slots[i].list = 0;
        // size_t arithmetic: wraps for a slot past the mapping's end (never read back).
        pool.slots[i].alloc_size =
            (alloc_size as usize).wrapping_sub(offset + ((i - slot_index) << IO_TLB_SHIFT));
    }
    let mut i = slot_index as isize - 1;
    while i >= 0
        && io_tlb_offset(i as usize) != IO_TLB_SEGSIZE - 1
        && pool.slots[i as usize].list != 0
    {
        count += 1;
        pool.slots[i as usize].list = count;
        i -= 1;
    }
    pool.areas[area_index].index = wrap_area_index(pool, index + nslots);
    pool.areas[area_index].used += nslots;
    Some(slot_index)
}

/// Which pool an allocation is in: `mem->pools[i]` or the device's transient `[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Pool(usize),
    Transient(usize),
}

impl Mem {
    /// `swiotlb_init_remap`/`swiotlb_adjust_nareas`: `default_nareas` areas (a power of two);
    /// `can_grow`: transient pools allowed.
    pub fn new(default_nareas: usize, can_grow: bool) -> Mem {
        Mem {
            pools: Vec::new(),
            transient: Vec::new(),
            default_nareas,
            can_grow,
        }
    }

    /// `add_mem_pool`: `list_add_rcu` puts the pool at the head.
    pub fn add_mem_pool(&mut self, pool: Pool) {
        self.pools.insert(0, pool);
    }

    /// `swiotlb_search_area`.
    #[allow(clippy::too_many_arguments)]
    fn swiotlb_search_area(
        &mut self,
        min_align_mask: u64,
        start_cpu: usize,
        cpu_offset: usize,
        orig_addr: u64,
        alloc_size: u64,
        alloc_align_mask: u64,
    ) -> Option<(Which, usize)> {
        for (i, pool) in self.pools.iter_mut().enumerate() {
            if cpu_offset >= pool.nareas {
                continue;
            }
            let area_index = (start_cpu + cpu_offset) & (pool.nareas - 1);
            if let Some(index) = swiotlb_search_pool_area(
                min_align_mask,
                pool,
                area_index,
                orig_addr,
                alloc_size,
                alloc_align_mask,
            ) {
                return Some((Which::Pool(i), index));
            }
        }
        None
    }

    /// `swiotlb_find_slots`; `transient_start` is where the allocator puts a transient pool.
    fn swiotlb_find_slots(
        &mut self,
        min_align_mask: u64,
        cpu: usize,
        orig_addr: u64,
        alloc_size: u64,
        alloc_align_mask: u64,
        transient_start: u64,
    ) -> Option<(Which, usize)> {
        if alloc_size > IO_TLB_SEGSIZE as u64 * IO_TLB_SIZE {
            return None;
        }
        for i in 0..self.default_nareas {
            if let Some(found) = self.swiotlb_search_area(
                min_align_mask,
                cpu,
                i,
                orig_addr,
                alloc_size,
                alloc_align_mask,
            ) {
                return Some(found);
            }
        }
        if !self.can_grow {
            return None;
        }
        // schedule_work(&mem->dyn_alloc): the test adds pools itself.
        let nslabs = nr_slots(alloc_size);
        let mut pool = init_pool(transient_start, nslabs, 1, false);
        let index = swiotlb_search_pool_area(
            min_align_mask,
            &mut pool,
            0,
            orig_addr,
            alloc_size,
            alloc_align_mask,
        )?; // swiotlb_dyn_free
        pool.transient = true;
        self.transient.insert(0, pool);
        Some((Which::Transient(0), index))
    }

    /// `swiotlb_tbl_map_single`: the bounce address, or `None` ("swiotlb buffer is full").
    pub fn map_single(
        &mut self,
        min_align_mask: u64,
        cpu: usize,
        orig_addr: u64,
        mapping_size: usize,
        alloc_align_mask: u64,
        transient_start: u64,
    ) -> Option<u64> {
        let mut offset = swiotlb_align_offset(min_align_mask, alloc_align_mask, orig_addr);
        let size = (mapping_size as u64 + offset + alloc_align_mask) & !alloc_align_mask;
        let (which, mut index) = self.swiotlb_find_slots(
            min_align_mask,
            cpu,
            orig_addr,
            size,
            alloc_align_mask,
            transient_start,
        )?;
        let pool = self.pool_mut(which);
        let pad_slots = (offset >> IO_TLB_SHIFT) as usize;
        offset &= IO_TLB_SIZE - 1;
        index += pad_slots;
        pool.slots[index].pad_slots = pad_slots;
        for i in 0..nr_slots(size) - pad_slots {
            pool.slots[index + i].orig_addr = slot_addr(orig_addr, i as u64);
        }
        Some(slot_addr(pool.start, index as u64) + offset)
    }

    fn pool_mut(&mut self, which: Which) -> &mut Pool {
        match which {
            Which::Pool(i) => &mut self.pools[i],
            Which::Transient(i) => &mut self.transient[i],
        }
    }

    /// `__swiotlb_find_pool`: the global list, then the device's transient pools.
    fn find_pool(&self, paddr: u64) -> Option<Which> {
        let within = |p: &Pool| paddr >= p.start && paddr < p.end;
        if let Some(i) = self.pools.iter().position(within) {
            return Some(Which::Pool(i));
        }
        self.transient.iter().position(within).map(Which::Transient)
    }

    /// `__swiotlb_tbl_unmap_single` (without the copy): `swiotlb_del_transient`, else
    /// `swiotlb_release_slots`.
    pub fn unmap_single(&mut self, min_align_mask: u64, tlb_addr: u64) {
        let which = self
            .find_pool(tlb_addr)
            .expect("unmap of an unknown address");
        if let Which::Transient(i) = which {
            assert!(self.transient[i].transient);
            self.transient.remove(i);
            return;
        }
        let mem = self.pool_mut(which);
        let offset = swiotlb_align_offset(min_align_mask, 0, tlb_addr);
        let mut index = ((tlb_addr - offset - mem.start) >> IO_TLB_SHIFT) as usize;
        index -= mem.slots[index].pad_slots;
        let nslots = nr_slots(mem.slots[index].alloc_size as u64 + offset);
        let aindex = index / mem.area_nslabs;
        assert!(aindex < mem.nareas && index + nslots <= mem.nslabs);

        let mut count = if index + nslots < (index + 1).next_multiple_of(IO_TLB_SEGSIZE) {
            mem.slots[index + nslots].list
        } else {
            0
        };
        // Step 1: return the slots to the free list, merging with the slots after.
        for i in (index..index + nslots).rev() {
            count += 1;
            mem.slots[i].list = count;
            mem.slots[i].orig_addr = INVALID_PHYS_ADDR;
            mem.slots[i].alloc_size = 0;
            mem.slots[i].pad_slots = 0;
        }
        // Step 2: merge with the free slots before.
        let mut i = index as isize - 1;
        while i >= 0
            && io_tlb_offset(i as usize) != IO_TLB_SEGSIZE - 1
            && mem.slots[i as usize].list != 0
        {
            count += 1;
            mem.slots[i as usize].list = count;
            i -= 1;
        }
        mem.areas[aindex].used -= nslots;
    }
}
