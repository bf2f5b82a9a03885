//! The set of pools and its growth policy (Linux 6.6 dynamic swiotlb, `CONFIG_SWIOTLB_DYNAMIC`):
//! an initial pool converted once at start; when use crosses a threshold (Linux: when every pool
//! is full) a background worker adds a chunk (`swiotlb_dyn_alloc`); when no pool has room the
//! I/O path allocates a *transient* pool of exactly the request's size (`swiotlb_dyn_map`... in
//! `swiotlb_find_slots`), freed and converted back on unmap; optionally, idle chunks are
//! released (not in Linux); all under a cap on shared memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::config::{ConfigError, SwiotlbConfig};
use crate::convert::{delay, ConvertMode};
use crate::dma::DmaSource;
use crate::error::DmaError;
use crate::lookup::PoolSet;
use crate::pool::{MapAttrs, Pool, PoolKind};
use crate::stats::{add, Global, Shard, StatsSnapshot};

const SHARDS: usize = 16;

/// A live bounce allocation.
pub struct Mapping {
    pub(crate) pool: Arc<Pool>,
    /// The bounce address (what Linux would hand the device as its DMA address).
    pub addr: u64,
    pub len: usize,
}

impl Mapping {
    /// Host pointer to the first byte of the bounce buffer. Valid for `len` bytes while the
    /// mapping is live (the `Arc<Pool>` keeps the memory).
    pub fn host_ptr(&self) -> *mut u8 {
        self.pool.host_ptr(self.addr)
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

struct Shared {
    cfg: SwiotlbConfig,
    shift: u32,
    seg: usize,
    pools: ArcSwap<PoolSet>,
    writer: Mutex<()>,
    next_id: AtomicU64,
    /// Shared bytes, including pools being created (reserved against the cap).
    reserved: AtomicU64,
    shards: Box<[CachePadded<Shard>]>,
    g: Global,
    epoch: Instant,
    kicked: AtomicBool,
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
        cfg.validate()?;
        let sh = Arc::new(Shared {
            shift: cfg.slot.trailing_zeros(),
            seg: cfg.segment as usize,
            pools: ArcSwap::from_pointee(PoolSet::default()),
            writer: Mutex::new(()),
            next_id: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            g: Global::default(),
            epoch: Instant::now(),
            kicked: AtomicBool::new(false),
            ctl: Mutex::new(Ctl {
                pending: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
            cfg,
        });
        if sh.cfg.initial {
            sh.add_pool(PoolKind::Initial, sh.cfg.size).map_err(|e| {
                ConfigError::Invalid(format!("cannot create the initial pool: {e}"))
            })?;
        }
        let worker = if sh.cfg.dynamic || sh.cfg.shrink.is_some() {
            let s = sh.clone();
            Some(
                std::thread::Builder::new()
                    .name("swiotlb-worker".into())
                    .spawn(move || s.worker())
                    .map_err(|e| ConfigError::Invalid(format!("cannot start the worker: {e}")))?,
            )
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

    /// Longest mapping for an original address with this many `min_align_mask` offset bytes
    /// (Linux: `swiotlb_max_mapping_size`).
    pub fn max_mapping_size(&self) -> usize {
        self.sh.seg << self.sh.shift
    }

    pub(crate) fn shard(&self, src: DmaSource) -> &Shard {
        &self.sh.shards[hint(src) % SHARDS]
    }

    pub(crate) fn count_failure(&self, e: &DmaError) {
        self.sh.g.failures.count(e);
    }

    /// Allocates bounce slots for `len` bytes at original address `orig` (no copy).
    pub fn alloc(
        &self,
        src: DmaSource,
        orig: u64,
        len: usize,
        attrs: MapAttrs,
    ) -> Result<Mapping, DmaError> {
        let r = self.sh.alloc(src, orig, len, attrs);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    /// Releases the mapping at bounce address `addr` (no copy), finding its pool by address.
    pub fn free(&self, src: DmaSource, addr: u64) -> Result<Freed, DmaError> {
        let r = self.sh.free(src, addr);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    /// Original address and length of the live mapping at bounce address `addr`.
    pub fn mapping(&self, src: DmaSource, addr: u64) -> Result<Freed, DmaError> {
        let shard = self.shard(src);
        let set = self.sh.pools.load();
        let (p, steps) = set.find(self.sh.cfg.lookup, addr);
        add(&shard.lookups, 1);
        add(&shard.lookup_steps, steps);
        let p = p.ok_or(DmaError::UnknownAddress { addr })?;
        let (orig, len) = p.mapping(addr, shard)?;
        Ok(Freed { orig, len })
    }

    /// The id of the pool owning bounce address `addr` (Linux: `swiotlb_find_pool`).
    pub fn find_pool(&self, addr: u64) -> Option<u64> {
        let set = self.sh.pools.load();
        let (p, steps) = set.find(self.sh.cfg.lookup, addr);
        let shard = &self.sh.shards[0];
        add(&shard.lookups, 1);
        add(&shard.lookup_steps, steps);
        p.map(|p| p.id)
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

    /// Resets the high-water marks (Linux: writing 0 to `io_tlb_used_hiwater`).
    pub fn reset_hiwater(&self) {
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
        let set = self.sh.pools.load();
        let mut s = StatsSnapshot {
            slot_bytes: 1 << self.sh.shift,
            ..Default::default()
        };
        s.fill(&self.sh.shards, &self.sh.g);
        s.pools = set.sorted.iter().map(|p| p.stats()).collect();
        s.slots_total = set.slots_total as u64;
        s.slots_used = s.pools.iter().map(|p| p.slots_used).sum();
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
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn alloc(
        &self,
        src: DmaSource,
        orig: u64,
        len: usize,
        attrs: MapAttrs,
    ) -> Result<Mapping, DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength { addr: orig });
        }
        let slot = 1usize << self.shift;
        let offset = (orig & attrs.min_align_mask & (slot as u64 - 1)) as usize;
        let max = (self.seg << self.shift) - offset;
        if len > max {
            return Err(DmaError::TooLarge { len, max });
        }
        let h = hint(src);
        let shard = &self.shards[h % SHARDS];
        let page = self.cfg.page as usize;
        let set = self.pools.load();
        for p in &set.alloc_order {
            if let Some(a) = p.alloc(h, orig, len, attrs, page, shard) {
                let used = self.g.inc_used(a.nslots as u64);
                if self.cfg.dynamic
                    && self.cfg.threshold < 100
                    && used * 100 >= self.cfg.threshold as u64 * set.slots_total as u64
                {
                    self.kick();
                }
                add(&shard.maps, 1);
                return Ok(Mapping {
                    addr: p.slot_addr(a.index) + a.offset as u64,
                    pool: p.clone(),
                    len,
                });
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
        let bytes = ((offset + len).div_ceil(slot) + extra) * slot;
        let p = self.add_pool(PoolKind::Transient, bytes as u64)?;
        match p.alloc(0, orig, len, attrs, page, shard) {
            Some(a) => {
                self.g.inc_used(a.nslots as u64);
                add(&shard.maps, 1);
                Ok(Mapping {
                    addr: p.slot_addr(a.index) + a.offset as u64,
                    pool: p,
                    len,
                })
            }
            None => {
                self.remove_pool(&p);
                Err(DmaError::NoSpace { len })
            }
        }
    }

    fn free(&self, src: DmaSource, addr: u64) -> Result<Freed, DmaError> {
        let shard = &self.shards[hint(src) % SHARDS];
        let set = self.pools.load();
        let (p, steps) = set.find(self.cfg.lookup, addr);
        add(&shard.lookups, 1);
        add(&shard.lookup_steps, steps);
        let p = p.ok_or(DmaError::UnknownAddress { addr })?;
        let now = if p.kind == PoolKind::Dynamic && self.cfg.shrink.is_some() {
            self.now_ns()
        } else {
            0
        };
        let (nslots, orig, len) = p.free(addr, now, shard)?;
        self.g.used.fetch_sub(nslots as u64, Relaxed);
        add(&shard.unmaps, 1);
        if p.kind == PoolKind::Transient {
            let p = p.clone();
            drop(set);
            if p.try_retire() {
                self.remove_pool(&p);
            }
        }
        Ok(Freed { orig, len })
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
        let Some(p) = Pool::new(
            id,
            kind,
            nslots,
            self.shift,
            self.seg,
            nareas,
            page as usize,
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
        self.pools
            .store(Arc::new(self.pools.load().with(p.clone())));
        Ok(p)
    }

    /// Unpublishes a retired pool and converts it back to private. Its memory is released when
    /// the last reference (a reader's snapshot) goes.
    fn remove_pool(&self, p: &Arc<Pool>) {
        {
            let _w = self.writer.lock();
            self.pools.store(Arc::new(self.pools.load().without(p.id)));
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
        let set = self.pools.load_full();
        let mut n = 0;
        for p in set
            .alloc_order
            .iter()
            .filter(|p| p.kind == PoolKind::Dynamic)
        {
            let created = p.created.duration_since(self.epoch).as_nanos() as u64;
            let last = p.last_free_ns().max(created);
            if p.used() == 0 && now.saturating_sub(last) >= idle && p.try_retire() {
                self.remove_pool(p);
                add(&self.g.shrinks, 1);
                n += 1;
            }
        }
        n
    }
}
