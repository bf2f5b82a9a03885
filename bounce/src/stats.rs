//! Statistics: atomic counters, sharded by area/queue on the hot path so that concurrent
//! queues do not bounce cache lines, summed into one serializable [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::convert::ConvertDirection as Direction;

/// Hot-path counters of one shard (one per area index / queue).
#[derive(Default)]
pub(crate) struct Shard {
    pub syncs_for_cpu: AtomicU64,
    pub syncs_for_device: AtomicU64,
    pub bytes_to_pool: AtomicU64,
    pub bytes_to_guest: AtomicU64,
    /// Lookups outside the unmap path, or that found no pool (unmap lookups are counted under the
    /// area lock).
    pub lookups: AtomicU64,
    pub lookup_steps: AtomicU64,
    pub lock_wait_ns: AtomicU64,
    pub lock_contended: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Failures by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub zero_length: u64,
    pub guest_range: u64,
    pub too_large: u64,
    pub no_space: u64,
    pub cap_reached: u64,
    /// Maps whose transient pool found no room in the atomic pools.
    pub atomic_pool_exhausted: u64,
    pub unknown_address: u64,
    pub not_mapped: u64,
    pub not_mapping_start: u64,
    pub double_sync: u64,
}

#[derive(Default)]
pub(crate) struct FailureCounters {
    pub zero_length: AtomicU64,
    pub guest_range: AtomicU64,
    pub too_large: AtomicU64,
    pub no_space: AtomicU64,
    pub cap_reached: AtomicU64,
    pub atomic_pool_exhausted: AtomicU64,
    pub unknown_address: AtomicU64,
    pub not_mapped: AtomicU64,
    pub not_mapping_start: AtomicU64,
    pub double_sync: AtomicU64,
}

impl FailureCounters {
    pub fn count(&self, e: &crate::DmaError) {
        use crate::DmaError::*;
        let c = match e {
            ZeroLength { .. } => &self.zero_length,
            OutOfGuestMemory { .. } | NotContiguous { .. } => &self.guest_range,
            TooLarge { .. } => &self.too_large,
            NoSpace { .. } => &self.no_space,
            CapReached { .. } => &self.cap_reached,
            AtomicPoolExhausted { .. } => &self.atomic_pool_exhausted,
            UnknownAddress { .. } => &self.unknown_address,
            NotMapped { .. } => &self.not_mapped,
            NotMappingStart { .. } => &self.not_mapping_start,
            DoubleSync { .. } => &self.double_sync,
            OutOfBuffer { .. } | ReadOnlyBuffer | WouldBlock { .. } => return,
        };
        add(c, 1);
    }

    fn snapshot(&self) -> Failures {
        Failures {
            zero_length: self.zero_length.load(Relaxed),
            guest_range: self.guest_range.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            no_space: self.no_space.load(Relaxed),
            cap_reached: self.cap_reached.load(Relaxed),
            atomic_pool_exhausted: self.atomic_pool_exhausted.load(Relaxed),
            unknown_address: self.unknown_address.load(Relaxed),
            not_mapped: self.not_mapped.load(Relaxed),
            not_mapping_start: self.not_mapping_start.load(Relaxed),
            double_sync: self.double_sync.load(Relaxed),
        }
    }
}

/// Who pays for a conversion: the thread whose time it takes, and so whose delay an `inject`
/// run adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payer {
    /// A device thread mapping or unmapping (transient pools): in the guest, the vCPU whose
    /// driver called `dma_map_*`/`dma_unmap_*`, i.e. the I/O path.
    IoPath,
    /// The growth worker (Linux: the `swiotlb_dyn_alloc` work item; with shrink, releases too).
    Background,
    /// Pool creation before the guest runs I/O (Linux: the boot-time pool).
    Startup,
}

/// Conversions one payer made in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCount {
    /// Guest requests (hypercalls: TDVMCALL<MapGPA>, a GHCB Page State Change request, a pKVM
    /// share/unshare call).
    pub calls: u64,
    /// Exits to the VMM the calls cause (e.g. `KVM_HC_MAP_GPA_RANGE` exits to user space).
    pub exits: u64,
    pub pages: u64,
    /// Modeled time (account and inject modes).
    pub ns: u64,
    /// Of which really spent delaying the payer's thread (inject mode).
    pub injected_ns: u64,
}

impl ConversionCount {
    fn add(&mut self, o: &ConversionCount) {
        self.calls += o.calls;
        self.exits += o.exits;
        self.pages += o.pages;
        self.ns += o.ns;
        self.injected_ns += o.injected_ns;
    }
}

/// One payer's conversions, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionsBy {
    pub to_shared: ConversionCount,
    pub to_private: ConversionCount,
}

/// Private<->shared conversions: totals, and by payer and direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversions {
    pub to_shared_calls: u64,
    pub to_shared_exits: u64,
    pub to_shared_pages: u64,
    pub to_private_calls: u64,
    pub to_private_exits: u64,
    pub to_private_pages: u64,
    /// Modeled time of all conversions (account and inject modes).
    pub modeled_ns: u64,
    /// Of which really spent delaying threads (inject mode).
    pub injected_ns: u64,
    /// Paid on the I/O path (transient pools, made and released by device threads).
    pub io_path: ConversionsBy,
    /// Paid by the growth worker (extensions; with `shrink`, releases).
    pub background: ConversionsBy,
    /// Paid at start-up (the initial pool).
    pub startup: ConversionsBy,
}

#[derive(Default)]
pub(crate) struct CountCounters {
    calls: AtomicU64,
    exits: AtomicU64,
    pages: AtomicU64,
    ns: AtomicU64,
    injected_ns: AtomicU64,
}

impl CountCounters {
    fn snapshot(&self) -> ConversionCount {
        ConversionCount {
            calls: self.calls.load(Relaxed),
            exits: self.exits.load(Relaxed),
            pages: self.pages.load(Relaxed),
            ns: self.ns.load(Relaxed),
            injected_ns: self.injected_ns.load(Relaxed),
        }
    }
}

/// Conversion counters by payer (`Payer as usize`) and direction (`Direction as usize`).
#[derive(Default)]
pub(crate) struct ConversionCounters {
    by: [[CountCounters; 2]; 3],
}

impl ConversionCounters {
    /// Counts one conversion of `pages` pages that made `calls` calls and `exits` exits and
    /// cost `ns` modeled nanoseconds.
    pub fn count(&self, payer: Payer, dir: Direction, calls: u64, exits: u64, pages: u64, ns: u64) {
        let c = &self.by[payer as usize][dir as usize];
        add(&c.calls, calls);
        add(&c.exits, exits);
        add(&c.pages, pages);
        add(&c.ns, ns);
    }

    /// Counts time really spent delaying the payer's thread.
    pub fn injected(&self, payer: Payer, dir: Direction, ns: u64) {
        add(&self.by[payer as usize][dir as usize].injected_ns, ns);
    }

    fn snapshot(&self) -> Conversions {
        let by = |p: Payer| ConversionsBy {
            to_shared: self.by[p as usize][Direction::ToShared as usize].snapshot(),
            to_private: self.by[p as usize][Direction::ToPrivate as usize].snapshot(),
        };
        let mut c = Conversions {
            io_path: by(Payer::IoPath),
            background: by(Payer::Background),
            startup: by(Payer::Startup),
            ..Default::default()
        };
        let (mut shared, mut private) = (ConversionCount::default(), ConversionCount::default());
        for b in [c.io_path, c.background, c.startup] {
            shared.add(&b.to_shared);
            private.add(&b.to_private);
        }
        c.to_shared_calls = shared.calls;
        c.to_shared_exits = shared.exits;
        c.to_shared_pages = shared.pages;
        c.to_private_calls = private.calls;
        c.to_private_exits = private.exits;
        c.to_private_pages = private.pages;
        c.modeled_ns = shared.ns + private.ns;
        c.injected_ns = shared.injected_ns + private.injected_ns;
        c
    }
}

/// Rare-event and global counters.
#[derive(Default)]
pub(crate) struct Global {
    pub failures: FailureCounters,
    pub conv: ConversionCounters,
    pub pools_created: AtomicU64,
    pub transient_created: AtomicU64,
    pub extensions: AtomicU64,
    pub extension_failures: AtomicU64,
    pub shrinks: AtomicU64,
    pub worker_wakeups: AtomicU64,
    pub threshold_checks: AtomicU64,
    /// Slots in use in all pools (Linux: `mem->total_used`) and its high-water mark.
    pub used: CachePadded<AtomicU64>,
    pub used_hiwater: AtomicU64,
    pub shared_bytes_hiwater: AtomicU64,
}

impl Global {
    pub fn inc_used(&self, n: u64) -> u64 {
        let now = self.used.fetch_add(n, Relaxed) + n;
        if now > self.used_hiwater.load(Relaxed) {
            self.used_hiwater.fetch_max(now, Relaxed);
        }
        now
    }
}

/// The exhaustion policies' waits (`exhaustion=throttle|wait`; see `swiotlb::exhaustion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingStats {
    /// Throttle decisions (Kelley's `high_throttle_count`, `low_throttle_count`): maps that may
    /// block seen past the high mark, or past the low mark with the semaphore held.
    pub throttled_high: u64,
    pub throttled_low: u64,
    /// `WouldBlock` answers: the semaphore was held; no pool had room (`wait`).
    pub throttle_blocked: u64,
    pub space_blocked: u64,
    /// Wakers called.
    pub wakeups: u64,
    /// `wait`: retries past the timeout, which grew the pools on the I/O path, and those the
    /// cap refused.
    pub wait_timeouts: u64,
    pub sync_growths: u64,
    pub sync_growth_failures: u64,
    /// Sources waiting now (for the semaphore or for space).
    pub waiting: u64,
}

/// One pool's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    pub id: u64,
    /// `initial`, `dynamic` or `transient`.
    pub kind: String,
    /// Bounce (shared) address of the first slot.
    pub start: u64,
    pub bytes: u64,
    pub slots: u64,
    pub areas: u64,
    pub slots_used: u64,
    /// Sum of the areas' high-water marks: exact for a one-area pool (transient pools,
    /// `areas=1`), otherwise an upper bound of the pool's own mark (the areas may have peaked at
    /// different times). An exact per-pool mark would need a per-pool counter written by every
    /// area on every map and unmap, shared between the queues that the areas keep apart; the
    /// total [`StatsSnapshot::slots_used_hiwater`] is exact (with `total_used` on).
    pub slots_used_hiwater: u64,
    pub maps: u64,
    pub unmaps: u64,
    /// Unmap lookups that ended in this pool, and the steps they took.
    pub lookups: u64,
    pub lookup_steps: u64,
    /// Lock waits in this pool's areas (only contended acquisitions are timed).
    pub lock_wait_ns: u64,
}

/// Everything, at one moment. `serde_json::to_string_pretty(&snap)` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub slot_bytes: u64,
    pub slots_total: u64,
    pub slots_used: u64,
    /// High-water mark of `slots_used` since the start or the last
    /// [`crate::Swiotlb::reset_hiwater`]: exact with `total_used` on (one global counter, as
    /// Linux's `total_used` and `used_hiwater`); with it off, the sum of the live pools' marks
    /// (an upper bound).
    pub slots_used_hiwater: u64,
    /// Shared (converted) memory: the pools, and the atomic pools (whose transient pools are
    /// not counted twice).
    pub shared_bytes: u64,
    pub shared_bytes_hiwater: u64,
    pub pools_live: u64,
    pub pools_created: u64,
    pub transient_live: u64,
    pub transient_created: u64,
    pub maps: u64,
    pub unmaps: u64,
    pub syncs_for_cpu: u64,
    pub syncs_for_device: u64,
    /// Guest -> pool (map, sync_for_device).
    pub bytes_to_pool: u64,
    /// Pool -> guest (unmap, sync_for_cpu).
    pub bytes_to_guest: u64,
    pub failures: Failures,
    pub conversions: Conversions,
    /// dma-pool.c's atomic pools, where an encrypted guest's transient pools come from.
    pub atomic_pool: crate::AtomicPoolStats,
    /// Maps deferred by the exhaustion policy.
    pub blocking: BlockingStats,
    pub extensions: u64,
    pub extension_failures: u64,
    pub shrinks: u64,
    pub worker_wakeups: u64,
    /// Times the worker summed the pools' use against the growth threshold (`growth=proposed`).
    pub threshold_checks: u64,
    pub lookups: u64,
    pub lookup_steps: u64,
    pub lock_wait_ns: u64,
    pub lock_contended: u64,
    pub pools: Vec<PoolStats>,
}

impl StatsSnapshot {
    pub(crate) fn fill(&mut self, shards: &[CachePadded<Shard>], g: &Global) {
        for s in shards {
            self.syncs_for_cpu += s.syncs_for_cpu.load(Relaxed);
            self.syncs_for_device += s.syncs_for_device.load(Relaxed);
            self.bytes_to_pool += s.bytes_to_pool.load(Relaxed);
            self.bytes_to_guest += s.bytes_to_guest.load(Relaxed);
            self.lookups += s.lookups.load(Relaxed);
            self.lookup_steps += s.lookup_steps.load(Relaxed);
            self.lock_wait_ns += s.lock_wait_ns.load(Relaxed);
            self.lock_contended += s.lock_contended.load(Relaxed);
        }
        self.failures = g.failures.snapshot();
        self.conversions = g.conv.snapshot();
        self.pools_created = g.pools_created.load(Relaxed);
        self.transient_created = g.transient_created.load(Relaxed);
        self.extensions = g.extensions.load(Relaxed);
        self.extension_failures = g.extension_failures.load(Relaxed);
        self.shrinks = g.shrinks.load(Relaxed);
        self.worker_wakeups = g.worker_wakeups.load(Relaxed);
        self.threshold_checks = g.threshold_checks.load(Relaxed);
        self.slots_used_hiwater = g.used_hiwater.load(Relaxed);
        self.shared_bytes_hiwater = g.shared_bytes_hiwater.load(Relaxed);
    }

    /// Pretty JSON (what the VMM prints at exit and `bounce-replay` prints).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
