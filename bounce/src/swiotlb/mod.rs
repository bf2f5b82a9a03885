//! The set of pools and its growth policy (Linux 6.6+ dynamic swiotlb, `CONFIG_SWIOTLB_DYNAMIC`):
//! an initial pool converted once at start; a background worker adds chunks (`growth.rs`:
//! Linux's `swiotlb_dyn_alloc` when every pool is full, or the proposal's growth past a
//! threshold); when no pool has room the I/O path allocates a *transient* pool of exactly the
//! request's size (`swiotlb_find_slots`), freed on unmap; optionally, idle chunks are released
//! (not in Linux); all under a cap on shared memory.
//!
//! This module holds the pools' shared state and the public handle; the parts of the policy are
//! its submodules: `fastpath` (the allocation and release every map and unmap runs), `transient`
//! (when the initial pool is full), `poolset` (adding and removing pools: cap, bounce addresses,
//! conversions), `growth` (the background worker and shrink).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::config::{ConfigError, Exhaustion, SwiotlbConfig};
use crate::error::DmaError;
use crate::lookup::Published;
use crate::pool::{AreaCounts, MapAttrs, Pool, PoolKind};
use crate::stats::{add, Global, Payer, Shard, StatsSnapshot};
use crate::types::DmaSource;
pub use atomic::AtomicPoolStats;
use atomic::AtomicPools;
use exhaustion::Blocking;
use growth::Signal;

mod atomic;
mod exhaustion;
mod fastpath;
mod growth;
mod poolset;
mod transient;

const SHARDS: usize = 16;

/// Where the bounce address space starts: the addresses a device is given for bounce slots
/// (Linux: the physical addresses of the swiotlb pools). A model-owned space rather than host
/// pointers, so statistics and logs hold no host addresses and a run's bounce addresses repeat
/// across runs; above any guest-physical address microvm creates, so the two never look alike.
pub const BOUNCE_BASE: u64 = 0x1000_0000_0000;
/// Pools start on this alignment (2 MiB, as a huge page) with at least this much unused space
/// before the next, so an address just past a pool belongs to no pool.
const POOL_ALIGN: u64 = 2 << 20;

/// Runs first on the pool worker thread (see [`Swiotlb::start_worker`]).
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

pub(crate) struct Shared {
    cfg: SwiotlbConfig,
    shift: u32,
    seg: usize,
    pools: Published,
    /// The initial pool, first in every allocation order and never retired: allocations try it
    /// without loading the published set (the set is loaded when it is full, and on every
    /// unmap's lookup).
    initial: OnceLock<Arc<Pool>>,
    /// Whether a map tries the initial pool first, without loading the set: always with
    /// `order=oldest`; with `order=linux` while it is the only pool (Linux would try a newer
    /// pool first). Written when the set is published.
    initial_first: AtomicBool,
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
    /// The growth threshold in percent (`SwiotlbConfig::threshold`), and whether the map path
    /// compares the global used counter with it.
    threshold: u8,
    count_kick: bool,
    /// Hot-path counters of pools that are gone.
    retired_counts: Mutex<AreaCounts>,
    /// dma-pool.c's atomic pools, when memory is encrypted and transient pools come from them.
    atomic: Option<AtomicPools>,
    /// Wakes the worker.
    sig: Arc<Signal>,
    /// `exhaustion` is `throttle` or `wait`: maps that may block take `alloc_blocking`.
    blocking_policy: bool,
    /// An unmap has work beyond the release: a throttled mapping is live or maps wait for space.
    slow_unmap: AtomicBool,
    /// The throttle semaphore, waiters and wakers (`exhaustion.rs`).
    blocking: Blocking,
}

/// The bounce pools of one VM (Linux: `struct io_tlb_mem`).
pub struct Swiotlb {
    sh: Arc<Shared>,
    /// `None` until [`Swiotlb::start_worker`], and for a model that needs no worker.
    worker: Mutex<Option<JoinHandle<()>>>,
    worker_started: AtomicBool,
}

impl Swiotlb {
    /// Builds the pools (converting the initial one and, memory encrypted, the atomic pools) and
    /// starts the worker when the model needs one ([`Swiotlb::prepare`], then
    /// [`Swiotlb::start_worker`] with no hook).
    pub fn new(cfg: SwiotlbConfig) -> Result<Arc<Swiotlb>, ConfigError> {
        let s = Swiotlb::prepare(cfg)?;
        s.start_worker(None)?;
        Ok(s)
    }

    /// Builds the pools without starting the worker: growth, shrinking, atomic-pool refills and
    /// `exhaustion=wait` wait for [`Swiotlb::start_worker`]. A VMM prepares the pools before its
    /// devices exist and starts the worker once they do, so that the worker's seccomp filter
    /// can name the devices' wake-up eventfds.
    pub fn prepare(cfg: SwiotlbConfig) -> Result<Arc<Swiotlb>, ConfigError> {
        cfg.validate()?;
        let sh = Arc::new(Shared {
            shift: cfg.slot.trailing_zeros(),
            seg: cfg.segment as usize,
            pools: Published::new(),
            initial: OnceLock::new(),
            initial_first: AtomicBool::new(true),
            slots_total: AtomicUsize::new(0),
            writer: Mutex::new(()),
            next_id: AtomicU64::new(0),
            next_addr: AtomicU64::new(BOUNCE_BASE),
            reserved: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            g: Global::default(),
            epoch: Instant::now(),
            threshold: cfg.threshold(),
            count_kick: cfg.dynamic && cfg.total_used && cfg.threshold() < 100,
            retired_counts: Mutex::new(AreaCounts::default()),
            atomic: cfg.uses_atomic_pools().then(|| {
                AtomicPools::new(
                    cfg.atomic_zones(),
                    cfg.atomic_pool_size(),
                    cfg.page as u64,
                    crate::config::MAX_ORDER_BYTES,
                )
            }),
            sig: Arc::new(Signal::new()),
            blocking_policy: matches!(cfg.exhaustion, Exhaustion::Throttle | Exhaustion::Wait),
            slow_unmap: AtomicBool::new(false),
            blocking: Blocking::default(),
            cfg,
        });
        if sh.cfg.initial {
            let p = sh
                .add_pool(PoolKind::Initial, sh.cfg.size, Payer::Startup)
                .map_err(|e| {
                    ConfigError::Invalid(format!("cannot create the initial pool: {e}"))
                })?;
            let _ = sh.initial.set(p);
        }
        if let Some(a) = &sh.atomic {
            // `dma_atomic_pool_init` (a postcore initcall): each zone's pool, decrypted now.
            if !sh.add_atomic_blocks(&a.initial_blocks(), Payer::Startup) {
                return Err(ConfigError::Invalid(
                    "cannot create the atomic pools: past the cap".into(),
                ));
            }
        }
        Ok(Arc::new(Swiotlb {
            sh,
            worker: Mutex::new(None),
            worker_started: AtomicBool::new(false),
        }))
    }

    /// Whether this model needs the worker thread: growth, shrinking, atomic pools or
    /// `exhaustion=wait`.
    pub fn needs_worker(&self) -> bool {
        let cfg = &self.sh.cfg;
        cfg.dynamic
            || cfg.shrink.is_some()
            || self.sh.atomic.is_some()
            || cfg.exhaustion == Exhaustion::Wait
    }

    /// Starts the worker thread if the model needs one (else `start` is not run), running
    /// `start` first on it before it serves any request: a VMM installs the thread's seccomp
    /// filter there. Returns once `start` has run; its error stops the worker and is returned.
    /// A second call is refused.
    pub fn start_worker(&self, start: Option<WorkerStart>) -> Result<(), ConfigError> {
        if self.worker_started.swap(true, Relaxed) {
            return Err(ConfigError::Invalid(
                "the worker was started already".into(),
            ));
        }
        if !self.needs_worker() {
            return Ok(());
        }
        let s = self.sh.clone();
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
            Ok(Ok(())) => {
                *self.worker.lock() = Some(worker);
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(ConfigError::Invalid(format!("worker start: {e}")))
            }
            Err(_) => {
                let _ = worker.join();
                Err(ConfigError::Invalid("worker start panicked".into()))
            }
        }
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

    /// Registers the waker called when a map of `src` that answered `DmaError::WouldBlock`
    /// may be retried (`None` removes it). See the `exhaustion` policies in the crate README.
    pub fn set_waker(&self, src: DmaSource, waker: Option<Arc<dyn crate::DmaWaker>>) {
        self.sh.set_waker(src, waker);
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

    /// Adds a dynamic pool of `bytes` now, on the calling thread (what the worker does; its
    /// conversion is counted as the worker's, `Payer::Background`).
    pub fn grow(&self, bytes: u64) -> Result<(), DmaError> {
        self.sh
            .add_pool(PoolKind::Dynamic, bytes, Payer::Background)
            .map(|_| ())
    }

    /// Releases dynamic pools idle for at least `idle` now (as the worker does with `shrink`;
    /// counted as `Payer::Background`); returns how many.
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
        if let Some(a) = &self.sh.atomic {
            a.reset_hiwater();
        }
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
        s.blocking = self.sh.blocking.stats();
        if let Some(a) = &self.sh.atomic {
            s.atomic_pool = a.stats();
            s.shared_bytes += s.atomic_pool.bytes;
        }
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
        self.sh.sig.shutdown();
        let worker = self.worker.get_mut().take();
        if let Some(w) = worker {
            if w.join().is_err() {
                log::error!("swiotlb worker panicked");
            }
        }
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The pool owning bounce address `addr` and its kind, for traces: not counted as a lookup
    /// in the statistics (the map that is traced has already placed it).
    pub(crate) fn pool_of(&self, addr: u64) -> Option<(u64, crate::trace::TracePoolKind)> {
        use crate::pool::PoolKind;
        use crate::trace::TracePoolKind;
        self.pools.find(self.cfg.lookup, addr, |p, _| {
            p.map(|p| {
                let kind = match p.kind {
                    PoolKind::Initial => TracePoolKind::Initial,
                    PoolKind::Dynamic => TracePoolKind::Dynamic,
                    PoolKind::Transient => TracePoolKind::Transient,
                };
                (p.id, kind)
            })
        })
    }
}

#[cfg(test)]
mod linux_ref;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_exhaustion;
#[cfg(test)]
mod tests_growth;
#[cfg(test)]
mod tests_linux;
