//! The set of pools and its growth policy (Linux 6.6 dynamic swiotlb, `CONFIG_SWIOTLB_DYNAMIC`):
//! an initial pool converted once at start; when use crosses a threshold (Linux: when every pool
//! is full) a background worker adds a chunk (`swiotlb_dyn_alloc`); when no pool has room the
//! I/O path allocates a *transient* pool of exactly the request's size (`swiotlb_dyn_map`... in
//! `swiotlb_find_slots`), freed and converted back on unmap; optionally, idle chunks are
//! released (not in Linux); all under a cap on shared memory.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::config::{ConfigError, SwiotlbConfig};
use crate::convert::{delay, ConvertMode};
use crate::dma::DmaSource;
use crate::error::DmaError;
use crate::lookup::Published;
use crate::pool::{AreaCounts, MapAttrs, Pool, PoolKind, Request};
use crate::stats::{add, Global, Shard, StatsSnapshot};

const SHARDS: usize = 16;

/// Where the bounce address space starts: the addresses a device is given for bounce slots
/// (Linux: the physical addresses of the swiotlb pools). A model-owned space rather than host
/// pointers, so statistics and logs hold no host addresses and a run's bounce addresses repeat
/// across runs; above any guest-physical address microvm creates, so the two never look alike.
pub const BOUNCE_BASE: u64 = 0x1000_0000_0000;
/// Pools start on this alignment (2 MiB, as a huge page) with at least this much unused space
/// before the next, so an address just past a pool belongs to no pool.
const POOL_ALIGN: u64 = 2 << 20;

/// Runs first on the pool worker thread (see [`Swiotlb::with_worker_start`]).
pub type WorkerStart = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// A live bounce allocation.
pub struct Mapping {
    host: NonNull<u8>,
    /// The bounce address (what Linux would hand the device as its DMA address).
    pub addr: u64,
    pub len: usize,
}

// SAFETY: a plain description of an allocation; the pointer is only dereferenced by callers
// that own the mapping.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Host pointer to the first byte of the bounce buffer. Valid for `len` bytes until the
    /// mapping is freed or the `Swiotlb` dropped: a pool with a slot in use is never retired
    /// (`Pool::retire` checks under every area lock; a transient pool is retired only after its
    /// one mapping is freed), and pools release their memory only when retired.
    pub fn host_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    pub(crate) fn host(&self) -> NonNull<u8> {
        self.host
    }
}

/// What `free` found about the mapping it released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub orig: u64,
    pub len: usize,
}

struct Ctl {
    pending: bool,
    shutdown: bool,
}

pub(crate) struct Shared {
    cfg: SwiotlbConfig,
    shift: u32,
    seg: usize,
    pools: Published,
    /// The initial pool, first in every allocation order and never retired: allocations try it
    /// without loading the published set (the set is loaded when it is full, and on every
    /// unmap's lookup).
    initial: OnceLock<Arc<Pool>>,
    /// `pools.slots_total`, for the growth threshold check without loading the set.
    slots_total: AtomicUsize,
    writer: Mutex<()>,
    next_id: AtomicU64,
    /// Start of the next pool's bounce addresses.
    next_addr: AtomicU64,
    /// Shared bytes, including pools being created (reserved against the cap).
    reserved: AtomicU64,
    shards: Box<[CachePadded<Shard>]>,
    g: Global,
    epoch: Instant,
    kicked: AtomicBool,
    /// Hot-path counters of pools that are gone.
    retired_counts: Mutex<AreaCounts>,
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// The bounce pools of one VM (Linux: `struct io_tlb_mem`).
pub struct Swiotlb {
    sh: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl Swiotlb {
    /// Builds the pools (converting the initial one) and starts the worker when growth or shrink
    /// is on.
    pub fn new(cfg: SwiotlbConfig) -> Result<Arc<Swiotlb>, ConfigError> {
        Swiotlb::with_worker_start(cfg, None)
    }

    /// [`Swiotlb::new`], running `start` first on the worker thread (if there is one) before it
    /// serves any request: a VMM installs the thread's seccomp filter there. Returns once
    /// `start` has run; its error stops the worker and fails the call.
    pub fn with_worker_start(
        cfg: SwiotlbConfig,
        start: Option<WorkerStart>,
    ) -> Result<Arc<Swiotlb>, ConfigError> {
        cfg.validate()?;
        let sh = Arc::new(Shared {
            shift: cfg.slot.trailing_zeros(),
            seg: cfg.segment as usize,
            pools: Published::new(),
            initial: OnceLock::new(),
            slots_total: AtomicUsize::new(0),
            writer: Mutex::new(()),
            next_id: AtomicU64::new(0),
            next_addr: AtomicU64::new(BOUNCE_BASE),
            reserved: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            g: Global::default(),
            epoch: Instant::now(),
            kicked: AtomicBool::new(false),
            retired_counts: Mutex::new(AreaCounts::default()),
            ctl: Mutex::new(Ctl {
                pending: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
            cfg,
        });
        if sh.cfg.initial {
            let p = sh.add_pool(PoolKind::Initial, sh.cfg.size).map_err(|e| {
                ConfigError::Invalid(format!("cannot create the initial pool: {e}"))
            })?;
            let _ = sh.initial.set(p);
        }
        let worker = if sh.cfg.dynamic || sh.cfg.shrink.is_some() {
            let s = sh.clone();
            let (started_tx, started) = std::sync::mpsc::sync_channel(1);
            let worker = std::thread::Builder::new()
                .name("swiotlb-worker".into())
                .spawn(move || {
                    let r = start.map_or(Ok(()), |f| f());
                    let ok = r.is_ok();
                    let _ = started_tx.send(r);
                    if ok {
                        s.worker();
                    }
                })
                .map_err(|e| ConfigError::Invalid(format!("cannot start the worker: {e}")))?;
            match started.recv() {
                Ok(Ok(())) => Some(worker),
                Ok(Err(e)) => {
                    let _ = worker.join();
                    return Err(ConfigError::Invalid(format!("worker start: {e}")));
                }
                Err(_) => {
                    let _ = worker.join();
                    return Err(ConfigError::Invalid("worker start panicked".into()));
                }
            }
        } else {
            None
        };
        Ok(Arc::new(Swiotlb { sh, worker }))
    }

    /// `Swiotlb::new(s.parse()?)`, for a `key=value,...` string or JSON object.
    pub fn from_config_str(s: &str) -> Result<Arc<Swiotlb>, ConfigError> {
        Swiotlb::new(SwiotlbConfig::from_json_or_kv(s)?)
    }

    pub fn config(&self) -> &SwiotlbConfig {
        &self.sh.cfg
    }

    /// Longest mapping for a device without a `min_align_mask` (Linux:
    /// `swiotlb_max_mapping_size`).
    pub fn max_mapping_size(&self) -> usize {
        self.sh.cfg.max_mapping_size() as usize
    }

    /// The pools' state, for `Dma`'s hot path (one pointer fewer to follow than through `self`).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.sh
    }

    /// Allocates bounce slots for `len` bytes at original address `orig` (no copy).
    pub fn alloc(
        &self,
        src: DmaSource,
        orig: u64,
        len: usize,
        attrs: MapAttrs,
    ) -> Result<Mapping, DmaError> {
        self.sh.alloc_copying(src, orig, len, attrs, 0)
    }

    /// Releases the mapping at bounce address `addr` (no copy), finding its pool by address.
    pub fn free(&self, src: DmaSource, addr: u64) -> Result<Freed, DmaError> {
        self.sh.free_copied(src, addr, 0)
    }

    /// Original address and length of the live mapping at bounce address `addr`.
    pub fn mapping(&self, src: DmaSource, addr: u64) -> Result<Freed, DmaError> {
        let shard = self.sh.shard(src);
        self.sh.pools.find(self.sh.cfg.lookup, addr, |p, steps| {
            add(&shard.lookups, 1);
            add(&shard.lookup_steps, steps);
            let p = p.ok_or(DmaError::UnknownAddress { addr })?;
            let (orig, len) = p.mapping(addr, shard)?;
            Ok(Freed { orig, len })
        })
    }

    /// The id of the pool owning bounce address `addr` (Linux: `swiotlb_find_pool`).
    pub fn find_pool(&self, addr: u64) -> Option<u64> {
        self.sh.pools.find(self.sh.cfg.lookup, addr, |p, steps| {
            let shard = &self.sh.shards[0];
            add(&shard.lookups, 1);
            add(&shard.lookup_steps, steps);
            p.map(|p| p.id)
        })
    }

    /// Start addresses of all live pools (for tests and benchmarks of the lookup).
    pub fn pool_starts(&self) -> Vec<u64> {
        self.sh
            .pools
            .load()
            .sorted
            .iter()
            .map(|p| p.start)
            .collect()
    }

    /// Adds a dynamic pool of `bytes` now, on the calling thread (what the worker does).
    pub fn grow(&self, bytes: u64) -> Result<(), DmaError> {
        self.sh.add_pool(PoolKind::Dynamic, bytes).map(|_| ())
    }

    /// Releases dynamic pools idle for at least `idle` now; returns how many.
    pub fn shrink_idle(&self, idle: Duration) -> usize {
        self.sh.shrink_idle(idle)
    }

    /// Resets the high-water marks, the total and each pool's, to the current use (Linux:
    /// writing 0 to `io_tlb_used_hiwater`).
    pub fn reset_hiwater(&self) {
        for p in &self.sh.pools.load().list {
            p.reset_hiwater();
        }
        self.sh
            .g
            .used_hiwater
            .store(self.sh.g.used.load(Relaxed), Relaxed);
        self.sh
            .g
            .shared_bytes_hiwater
            .store(self.sh.reserved.load(Relaxed), Relaxed);
    }

    /// All statistics at this moment.
    pub fn stats(&self) -> StatsSnapshot {
        let _w = self.sh.writer.lock();
        let set = self.sh.pools.load();
        let mut s = StatsSnapshot {
            slot_bytes: 1 << self.sh.shift,
            ..Default::default()
        };
        s.fill(&self.sh.shards, &self.sh.g);
        let mut c = *self.sh.retired_counts.lock();
        for p in &set.list {
            c.add(&p.counts());
        }
        s.maps += c.maps;
        s.unmaps += c.unmaps;
        s.lookups += c.lookups;
        s.lookup_steps += c.lookup_steps;
        s.bytes_to_pool += c.bytes_to_pool;
        s.bytes_to_guest += c.bytes_to_guest;
        s.pools = set.sorted.iter().map(|p| p.pool.stats()).collect();
        s.slots_total = set.slots_total as u64;
        s.slots_used = s.pools.iter().map(|p| p.slots_used).sum();
        if !self.sh.cfg.total_used {
            s.slots_used_hiwater = s.pools.iter().map(|p| p.slots_used_hiwater).sum();
        }
        s.shared_bytes = set.shared_bytes;
        s.pools_live = set.list.len() as u64;
        s.transient_live = set
            .list
            .iter()
            .filter(|p| p.kind == PoolKind::Transient)
            .count() as u64;
        s
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Other threads' cached pool sets may outlive the pools' owner: release the memory now.
        for p in &self.pools.load().list {
            p.retire(true);
        }
    }
}

impl Drop for Swiotlb {
    fn drop(&mut self) {
        self.sh.ctl.lock().shutdown = true;
        self.sh.cv.notify_all();
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                log::error!("swiotlb worker panicked");
            }
        }
    }
}

fn hint(src: DmaSource) -> usize {
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

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
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
        let max = (self.seg << self.shift) - req.offset;
        if len > max {
            return Err(self.failed(DmaError::TooLarge { len, max }));
        }
        let h = hint(src);
        let shard = &self.shards[h % SHARDS];
        // Pools oldest first; the initial pool (the oldest, never retired) without a set load.
        if let Some(p) = self.initial.get() {
            if let Some(i) = p.alloc(h, &req, shard) {
                return Ok(self.allocated(p, i, &req));
            }
        }
        self.alloc_beyond_initial(h, &req, attrs, shard)
            .map_err(|e| self.failed(e))
    }

    /// Counts a failed allocation.
    #[cold]
    #[inline(never)]
    fn failed(&self, e: DmaError) -> DmaError {
        self.count_failure(&e);
        e
    }

    #[inline(never)]
    fn alloc_beyond_initial(
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
        let p = self.add_pool(PoolKind::Transient, bytes)?;
        match p.alloc(0, req, shard) {
            Some(i) => Ok(self.allocated(&p, i, req)),
            None => {
                self.remove_pool(&p);
                Err(DmaError::NoSpace { len })
            }
        }
    }

    /// Accounts a successful allocation (total use and its high-water mark, Linux's
    /// `inc_used_and_hiwater`; the growth threshold) and describes it.
    #[inline(always)]
    fn allocated(&self, p: &Pool, index: usize, req: &Request) -> Mapping {
        if self.cfg.total_used {
            let used = self.g.inc_used(req.nslots as u64);
            if self.cfg.dynamic
                && self.cfg.threshold < 100
                && p.kind != PoolKind::Transient
                && used * 100 >= self.cfg.threshold as u64 * self.slots_total.load(Relaxed) as u64
            {
                self.kick();
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
                if p.kind == PoolKind::Transient && p.retire(false) {
                    self.remove_pool(p);
                }
                Ok(Freed { orig, len })
            },
        )
    }

    /// Reserves against the cap, allocates, converts to shared (the caller's thread pays in
    /// inject mode) and publishes a pool.
    fn add_pool(&self, kind: PoolKind, bytes: u64) -> Result<Arc<Pool>, DmaError> {
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
        self.convert(real / page, true);
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
    /// private.
    fn remove_pool(&self, p: &Arc<Pool>) {
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
        self.convert(p.bytes() / page, false);
        self.reserved.fetch_sub(p.bytes(), Relaxed);
    }

    fn convert(&self, pages: u64, to_shared: bool) {
        let (calls, ns) = self.cfg.convert.cost(pages);
        let c = &self.g.conv;
        if to_shared {
            add(&c.to_shared_calls, calls);
            add(&c.to_shared_pages, pages);
        } else {
            add(&c.to_private_calls, calls);
            add(&c.to_private_pages, pages);
        }
        add(&c.modeled_ns, ns);
        if self.cfg.convert_mode == ConvertMode::Inject && ns > 0 {
            let t = Instant::now();
            delay(ns);
            add(&c.injected_ns, t.elapsed().as_nanos() as u64);
        }
    }

    fn kick(&self) {
        if !self.kicked.swap(true, Relaxed) {
            self.ctl.lock().pending = true;
            self.cv.notify_one();
        }
    }

    fn worker(&self) {
        let tick = self
            .cfg
            .shrink
            .map(|d| (d / 4).clamp(Duration::from_millis(1), Duration::from_secs(1)));
        loop {
            let pending = {
                let mut ctl = self.ctl.lock();
                if !ctl.pending && !ctl.shutdown {
                    match tick {
                        Some(t) => {
                            self.cv.wait_for(&mut ctl, t);
                        }
                        None => self.cv.wait(&mut ctl),
                    }
                }
                if ctl.shutdown {
                    return;
                }
                std::mem::take(&mut ctl.pending)
            };
            if pending {
                add(&self.g.worker_wakeups, 1);
                self.extend();
                self.kicked.store(false, Relaxed);
            }
            if let Some(idle) = self.cfg.shrink {
                self.shrink_idle(idle);
            }
        }
    }

    /// Linux `swiotlb_dyn_alloc`: a chunk of up to `chunk` bytes, halving on failure down to
    /// `min_chunk`.
    fn extend(&self) {
        let mut size = self.cfg.chunk;
        loop {
            match self.add_pool(PoolKind::Dynamic, size) {
                Ok(_) => {
                    add(&self.g.extensions, 1);
                    return;
                }
                Err(_) if size / 2 >= self.cfg.min_chunk => size /= 2,
                Err(e) => {
                    log::debug!("swiotlb: background extension failed: {e}");
                    add(&self.g.extension_failures, 1);
                    return;
                }
            }
        }
    }

    fn shrink_idle(&self, idle: Duration) -> usize {
        let now = self.now_ns();
        let idle = idle.as_nanos() as u64;
        let set = arc_swap::Guard::into_inner(self.pools.load());
        let mut n = 0;
        for p in set
            .alloc_order
            .iter()
            .filter(|p| p.kind == PoolKind::Dynamic)
        {
            let created = p.created.duration_since(self.epoch).as_nanos() as u64;
            let last = p.last_free_ns().max(created);
            if p.used() == 0 && now.saturating_sub(last) >= idle && p.retire(false) {
                self.remove_pool(p);
                add(&self.g.shrinks, 1);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: DmaSource = DmaSource {
        device: 0,
        queue: 0,
    };

    fn tlb(cfg: &str) -> Arc<Swiotlb> {
        Swiotlb::from_config_str(cfg).unwrap()
    }

    /// Fills a live mapping's bytes with `tag`.
    fn stamp(m: &Mapping, tag: u8) {
        // SAFETY: a live mapping owns `len` bytes at `host_ptr`; callers pass only mappings they
        // have not freed, and no other thread touches them.
        unsafe { std::ptr::write_bytes(m.host_ptr(), tag, m.len) };
    }

    /// Whether a live mapping's bytes are all `tag` (nothing else wrote into it).
    fn stamped(m: &Mapping, tag: u8) -> bool {
        // SAFETY: as in `stamp`.
        let b = unsafe { std::slice::from_raw_parts(m.host_ptr(), m.len) };
        b.iter().all(|&x| x == tag)
    }

    fn all_free(s: &Swiotlb) -> bool {
        s.sh.pools.load().list.iter().all(|p| p.check_all_free())
    }

    #[test]
    fn bad_addresses_get_specific_errors() {
        let s = tlb("size=1M,areas=1");
        let m = s.alloc(SRC, 0x1000, 3000, MapAttrs::default()).unwrap();
        assert_eq!(
            s.free(SRC, 1).err(),
            Some(DmaError::UnknownAddress { addr: 1 })
        );
        assert_eq!(
            s.free(SRC, m.addr + 2048).err(),
            Some(DmaError::NotMappingStart {
                addr: m.addr + 2048
            })
        );
        assert_eq!(
            s.free(SRC, m.addr + 1).err(),
            Some(DmaError::NotMappingStart { addr: m.addr + 1 })
        );
        assert_eq!(
            s.free(SRC, m.addr).unwrap(),
            Freed {
                orig: 0x1000,
                len: 3000
            }
        );
        assert_eq!(
            s.free(SRC, m.addr).err(),
            Some(DmaError::NotMapped { addr: m.addr })
        );
        assert_eq!(
            s.mapping(SRC, m.addr).err(),
            Some(DmaError::NotMapped { addr: m.addr })
        );
        let st = s.stats();
        assert_eq!(st.failures.unknown_address, 1);
        assert_eq!(st.failures.not_mapping_start, 2);
        assert_eq!(st.failures.not_mapped, 1);
        assert!(all_free(&s));
    }

    #[test]
    fn bounce_addresses_are_the_models_own_and_repeat() {
        let run = || {
            let s = tlb("size=256K,areas=1,dynamic=off,transient=on");
            let mut addrs: Vec<u64> = (0..129)
                .map(|i| {
                    s.alloc(SRC, i * 4096, 2048, MapAttrs::default())
                        .unwrap()
                        .addr
                })
                .collect();
            addrs.extend(s.pool_starts());
            addrs
        };
        let a = run();
        assert_eq!(a, run(), "same operations, same bounce addresses");
        assert_eq!(a[0], BOUNCE_BASE);
        // 128 slots fill the initial pool; the 129th is transient, in a pool that starts past
        // the initial one and a gap (an address just past a pool belongs to none).
        let (initial, transient) = (a[129], a[130]);
        assert_eq!(initial, BOUNCE_BASE);
        assert_eq!(a[128], transient);
        assert!(transient >= initial + (256 << 10) + POOL_ALIGN);
    }

    #[test]
    fn worker_start_runs_on_the_worker_and_its_error_fails_new() {
        let cfg = |s: &str| SwiotlbConfig::from_json_or_kv(s).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let start: WorkerStart = Box::new(move || -> Result<(), String> {
            let _ = tx.send(std::thread::current().name().map(String::from));
            Ok(())
        });
        let s = Swiotlb::with_worker_start(cfg("size=256K,dynamic=on"), Some(start)).unwrap();
        // `with_worker_start` returns after the hook ran.
        assert_eq!(rx.try_recv().unwrap().as_deref(), Some("swiotlb-worker"));
        drop(s);
        let failing: WorkerStart = Box::new(|| Err(String::from("no filter")));
        let e = Swiotlb::with_worker_start(cfg("size=256K,dynamic=on"), Some(failing)).err();
        assert!(e.unwrap().to_string().contains("no filter"));
        // No worker (no growth, no shrink): the hook is not run.
        let never: WorkerStart = Box::new(|| -> Result<(), String> { panic!("no worker thread") });
        assert!(Swiotlb::with_worker_start(cfg("size=256K,dynamic=off"), Some(never)).is_ok());
    }

    #[test]
    fn without_the_total_counter_the_total_mark_is_the_pools_sum() {
        assert!(
            SwiotlbConfig::from_json_or_kv("total-used=off,threshold=70")
                .and_then(|c| c.validate())
                .is_err()
        );
        for total in ["on", "off"] {
            let s = tlb(&format!("size=512K,areas=2,dynamic=off,total-used={total}"));
            let a = DmaSource {
                device: 0,
                queue: 0,
            };
            let b = DmaSource {
                device: 0,
                queue: 1,
            };
            // Area 0 peaks at 3 slots, then area 1 at 2 while area 0 holds 1: simultaneous
            // peak 3, sum of the areas' peaks 5.
            let m: Vec<_> = (0..3)
                .map(|_| s.alloc(a, 0, 2048, MapAttrs::default()).unwrap())
                .collect();
            for x in &m[1..] {
                s.free(a, x.addr).unwrap();
            }
            let n: Vec<_> = (0..2)
                .map(|_| s.alloc(b, 0, 2048, MapAttrs::default()).unwrap())
                .collect();
            let st = s.stats();
            assert_eq!(st.slots_used, 3);
            assert_eq!(st.slots_used_hiwater, if total == "on" { 3 } else { 5 });
            assert_eq!(st.pools[0].slots_used_hiwater, 5);
            s.reset_hiwater();
            let st = s.stats();
            assert_eq!(
                (st.slots_used_hiwater, st.pools[0].slots_used_hiwater),
                (3, 3)
            );
            s.free(a, m[0].addr).unwrap();
            for x in &n {
                s.free(b, x.addr).unwrap();
            }
            assert!(all_free(&s));
        }
    }

    #[test]
    fn full_pool_without_growth_fails_cleanly() {
        let s = tlb("size=256K,areas=1,dynamic=off,transient=off");
        let m: Vec<_> = (0..128)
            .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        assert_eq!(
            s.alloc(SRC, 0, 1, MapAttrs::default()).err(),
            Some(DmaError::NoSpace { len: 1 })
        );
        for x in m {
            s.free(SRC, x.addr).unwrap();
        }
        assert!(all_free(&s));
        assert_eq!(s.stats().failures.no_space, 1);
    }

    #[test]
    fn transient_pools_and_cap() {
        let s = tlb("size=256K,areas=1,dynamic=off,cap=300K,convert=snp");
        let m: Vec<_> = (0..128)
            .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        let t = s.alloc(SRC, 0x5000, 5000, MapAttrs::default()).unwrap();
        let st = s.stats();
        assert_eq!((st.transient_live, st.transient_created), (1, 1));
        assert_eq!(st.conversions.to_shared_calls, 2);
        // 256K + 8K used; another 40K transient would pass 300K.
        assert_eq!(
            s.alloc(SRC, 0, 40 << 10, MapAttrs::default()).err(),
            Some(DmaError::CapReached {
                len: 40 << 10,
                cap: 300 << 10
            })
        );
        s.free(SRC, t.addr).unwrap();
        let st = s.stats();
        assert_eq!(st.transient_live, 0);
        assert_eq!(st.conversions.to_private_calls, 1);
        assert_eq!(st.conversions.to_private_pages, 2);
        assert_eq!(st.failures.cap_reached, 1);
        assert!(st.conversions.modeled_ns > 0);
        assert_eq!(
            s.free(SRC, t.addr).err(),
            Some(DmaError::UnknownAddress { addr: t.addr })
        );
        for x in m {
            s.free(SRC, x.addr).unwrap();
        }
        assert!(all_free(&s));
    }

    #[test]
    fn background_extension_and_shrink() {
        let s = tlb("size=256K,areas=1,threshold=50,chunk=1M,shrink=20ms,transient=off");
        let m: Vec<_> = (0..70)
            .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        let t = Instant::now();
        while s.stats().extensions == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "worker never extended"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(s.stats().pools_live, 2);
        for x in m {
            s.free(SRC, x.addr).unwrap();
        }
        let t = Instant::now();
        while s.stats().shrinks == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "worker never shrank");
            std::thread::sleep(Duration::from_millis(2));
        }
        let st = s.stats();
        assert_eq!(st.pools_live, 1);
        assert_eq!(st.shared_bytes, 256 << 10);
        assert!(all_free(&s));
    }

    #[test]
    fn inject_delays_the_paying_thread() {
        // Transient pools: the I/O thread pays 2 ms to convert and 2 ms to convert back.
        let s = tlb("size=256K,areas=1,dynamic=off,convert=2000000/0,convert-mode=inject");
        let t = Instant::now();
        let held: Vec<_> = (0..128)
            .map(|_| s.alloc(SRC, 0, 2048, MapAttrs::default()).unwrap())
            .collect();
        assert!(
            t.elapsed() < Duration::from_millis(2),
            "pool slots are free"
        );
        let t = Instant::now();
        let m = s.alloc(SRC, 0, 100, MapAttrs::default()).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(2));
        let t = Instant::now();
        s.free(SRC, m.addr).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(2));
        let st = s.stats();
        // Initial pool + transient + back: 3 calls of 2 ms modeled, 2 really injected here (the
        // initial pool's too, on the constructing thread).
        assert_eq!(st.conversions.modeled_ns, 6_000_000);
        assert!(st.conversions.injected_ns >= 6_000_000);
        for m in held {
            s.free(SRC, m.addr).unwrap();
        }
        // Account mode: modeled, not spent.
        let s = tlb("size=256K,convert=2000000/0,convert-mode=account");
        let st = s.stats();
        assert_eq!(st.conversions.modeled_ns, 2_000_000);
        assert_eq!(st.conversions.injected_ns, 0);
    }

    #[test]
    fn list_and_tree_agree() {
        for kind in ["list", "tree"] {
            let s = tlb(&format!(
                "initial=off,slot=64,segment=1,dynamic=off,lookup={kind}"
            ));
            for _ in 0..100 {
                s.grow(4096).unwrap();
            }
            let starts = s.pool_starts();
            assert_eq!(starts.len(), 100);
            for (i, &a) in starts.iter().enumerate() {
                let id = s.find_pool(a + 63).unwrap();
                let again = s.find_pool(a).unwrap();
                assert_eq!(id, again, "pool {i}");
            }
            assert_eq!(s.find_pool(0), None);
            let st = s.stats();
            if kind == "tree" {
                assert!(st.lookup_steps <= st.lookups * 8);
            } else {
                assert!(st.lookup_steps > st.lookups * 8);
            }
        }
    }

    #[test]
    fn concurrent_map_unmap_while_growing_and_shrinking() {
        let s = tlb("size=256K,areas=4,threshold=60,chunk=1M,shrink=5ms,transient=on");
        std::thread::scope(|sc| {
            for q in 0..4u16 {
                let s = &s;
                sc.spawn(move || {
                    let src = DmaSource {
                        device: 0,
                        queue: q,
                    };
                    let mut live = Vec::new();
                    for i in 0..3000u64 {
                        let len = 1 + ((i * 7919 + q as u64 * 31) % 8192) as usize;
                        let m = s.alloc(src, i * 4096, len, MapAttrs::default()).unwrap();
                        // Stamp the slot, check it later: no overlap across threads.
                        stamp(&m, q as u8 + 1);
                        live.push(m);
                        if live.len() > 40 || i % 3 == 0 {
                            let m = live.swap_remove(0);
                            assert!(stamped(&m, q as u8 + 1));
                            s.free(src, m.addr).unwrap();
                        }
                    }
                    for m in live {
                        s.free(src, m.addr).unwrap();
                    }
                });
            }
        });
        let st = s.stats();
        assert_eq!(st.maps, 12000);
        assert_eq!(st.unmaps, 12000);
        assert!(
            st.extensions + st.transient_created > 0,
            "pools never grew: {st:?}"
        );
        assert_eq!(st.slots_used, 0);
        assert!(all_free(&s));
    }

    /// Mappings made on two threads are unmapped on two others while the worker adds and
    /// removes pools and transient pools come and go: the unmapping threads' cached pool sets
    /// are often behind the mapping threads', and every unmap must still find its pool.
    #[test]
    fn unmapping_on_other_threads_while_pools_change() {
        let s = tlb("size=256K,areas=2,threshold=50,chunk=1M,shrink=2ms,transient=on");
        std::thread::scope(|sc| {
            for q in 0..2u16 {
                let (tx, rx) = std::sync::mpsc::sync_channel::<(Mapping, u8)>(64);
                let s = &s;
                sc.spawn(move || {
                    let src = DmaSource {
                        device: 0,
                        queue: q,
                    };
                    // Batches of 50 (about 225 KiB per thread): more than the initial pool
                    // holds, so pools are added whatever the threads' speeds.
                    let mut batch = Vec::new();
                    for i in 0..4000u64 {
                        let len = 1 + ((i * 6151 + q as u64 * 17) % 9000) as usize;
                        let m = s.alloc(src, i * 4096, len, MapAttrs::default()).unwrap();
                        let tag = (i % 251) as u8;
                        stamp(&m, tag);
                        batch.push((m, tag));
                        if batch.len() == 50 {
                            batch.drain(..).for_each(|x| tx.send(x).unwrap());
                        }
                    }
                });
                sc.spawn(move || {
                    let src = DmaSource {
                        device: 1,
                        queue: q,
                    };
                    for (m, tag) in rx {
                        // Still mapped: only this thread frees it.
                        assert!(stamped(&m, tag));
                        assert_eq!(s.free(src, m.addr).unwrap().len, m.len);
                    }
                });
            }
        });
        let st = s.stats();
        assert_eq!((st.maps, st.unmaps, st.slots_used), (8000, 8000, 0));
        assert_eq!(st.failures, crate::Failures::default());
        assert!(st.pools_created > 1, "no pool was added: {st:?}");
        assert!(all_free(&s));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map {
            orig: u64,
            len: usize,
            min_align: u32,
            alloc_align: u32,
            queue: u16,
        },
        Unmap(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..1 << 30, 1usize..70_000, 0u32..4, 0u32..3, 0u16..4).prop_map(
                |(orig, len, ma, aa, queue)| Op::Map {
                    orig,
                    len,
                    min_align: [0, 0x7ff, 0xfff, 0x3][ma as usize],
                    alloc_align: [0, 0xfff, 0x1fff][aa as usize],
                    queue,
                }
            ),
            2 => any::<prop::sample::Index>().prop_map(|i| Op::Unmap(i.index(1 << 20))),
        ]
    }

    /// 48 by default (fast); `BOUNCE_PROPTEST_CASES=2000` for a longer hunt.
    fn cases() -> u32 {
        std::env::var("BOUNCE_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]
        /// Against a reference model (a list of live byte ranges): no overlap, alignment rules,
        /// data round trips, all free at the end, statistics add up.
        #[test]
        fn model(ops in prop::collection::vec(op(), 1..120)) {
        for reuse in ["next", "lifo"] {
            let s = tlb(&format!("size=512K,areas=2,dynamic=off,transient=on,cap=2M,reuse={reuse}"));
            let mut live: Vec<(Mapping, u8, DmaSource)> = Vec::new();
            let (mut maps, mut unmaps, mut fails) = (0u64, 0u64, 0u64);
            for (n, o) in ops.iter().cloned().enumerate() {
                match o {
                    Op::Map { orig, len, min_align, alloc_align, queue } => {
                        let attrs = MapAttrs {
                            min_align_mask: min_align as u64,
                            alloc_align_mask: alloc_align as u64,
                        };
                        let src = DmaSource { device: 1, queue };
                        match s.alloc(src, orig, len, attrs) {
                            Ok(m) => {
                                maps += 1;
                                let mask = min_align as u64;
                                prop_assert_eq!(m.addr & mask, orig & mask);
                                let start = m.addr - crate::pool::align_offset(orig, attrs, 2047) as u64;
                                prop_assert_eq!(start & (alloc_align as u64 | 2047), 0);
                                if min_align == 0 && alloc_align == 0 && len >= 4096 {
                                    prop_assert_eq!(m.addr & 4095, 0);
                                }
                                for (o, _, _) in &live {
                                    prop_assert!(m.addr + m.len as u64 <= o.addr
                                        || o.addr + o.len as u64 <= m.addr, "overlap");
                                }
                                let tag = n as u8;
                                stamp(&m, tag);
                                live.push((m, tag, src));
                            }
                            Err(DmaError::TooLarge { .. }) => {
                                prop_assert!(len + crate::pool::align_offset(orig, attrs, 2047) > 256 << 10);
                                fails += 1;
                            }
                            Err(DmaError::CapReached { .. }) | Err(DmaError::NoSpace { .. }) => fails += 1,
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Unmap(i) if !live.is_empty() => {
                        let (m, tag, src) = live.swap_remove(i % live.len());
                        prop_assert!(stamped(&m, tag), "data corrupted");
                        let f = s.free(src, m.addr).unwrap();
                        prop_assert_eq!(f.len, m.len);
                        unmaps += 1;
                        prop_assert_eq!(s.free(src, m.addr).is_err(), true);
                        fails += 1;
                    }
                    Op::Unmap(_) => {}
                }
                let st = s.stats();
                let used: u64 = st.pools.iter().map(|p| p.slots_used).sum();
                prop_assert_eq!(st.slots_used, used);
                prop_assert_eq!(st.maps - st.unmaps, live.len() as u64);
            }
            for (m, _, src) in live.drain(..) {
                s.free(src, m.addr).unwrap();
                unmaps += 1;
            }
            let st = s.stats();
            prop_assert_eq!(st.maps, maps);
            prop_assert_eq!(st.unmaps, unmaps);
            let f = &st.failures;
            prop_assert_eq!(f.too_large + f.cap_reached + f.no_space + f.not_mapped
                + f.unknown_address, fails);
            prop_assert_eq!(st.slots_used, 0);
            prop_assert_eq!(st.transient_live, 0);
            prop_assert!(all_free(&s));
        }
        }
    }
}
