//! Pool configuration, with Linux's defaults, and the `key=value,...` parser used by the VMM's
//! command line and by `bounce-replay`.
//!
//! Sources for the defaults (Linux 6.6+, `kernel/dma/swiotlb.c`, `include/linux/swiotlb.h`):
//! - `IO_TLB_SHIFT 11` -> 2 KiB slots; `IO_TLB_SEGSIZE 128` slots per segment;
//! - `IO_TLB_DEFAULT_SIZE (64UL<<20)` -> 64 MiB default pool; `IO_TLB_MIN_SLABS` -> 1 MiB minimum;
//! - `swiotlb_dyn_alloc` adds pools of `default_nslabs` (the initial pool's size) capped at
//!   `PAGE_SIZE << MAX_PAGE_ORDER` (4 MiB with 4 KiB pages), halving on allocation failure down
//!   to `IO_TLB_MIN_SLABS` (1 MiB);
//! - areas default to one per possible CPU rounded up to a power of two
//!   (`swiotlb_adjust_nareas`), each at least one segment (`limit_nareas`);
//! - Linux schedules growth only when every pool is full (`swiotlb_find_slots`), i.e. a
//!   threshold of 100% (`growth=linux`), and never frees dynamic pools (shrink off).
//!   `growth=proposed` (background extension past a threshold below 100%, chunks that double
//!   or equal the initial pool) is Christoph Hellwig's proposal, not merged.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::convert::{ConvertCost, ConvertMode, CONVERT_SYNTAX};

/// The largest block the page allocator hands out, `PAGE_SIZE << MAX_PAGE_ORDER` (4 MiB with
/// 4 KiB pages, x86-64 and arm64 defaults): the largest dynamic pool (`swiotlb_dyn_alloc`) and
/// atomic pool expansion (`atomic_pool_expand`).
pub const MAX_ORDER_BYTES: u64 = 4 << 20;

/// Which structure finds the pool that owns a bounce address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LookupKind {
    /// Linux's RCU list (`swiotlb_find_pool`): newest pool first, linear walk.
    List,
    /// Pools ordered by start address, binary search (O(log n)); RCU-published like the list.
    #[default]
    Tree,
}

/// Where an area's next search starts after a free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlotReuse {
    /// Linux: next fit; the search index only moves forward (`area->index = index + nslots`),
    /// so consecutive mappings walk the whole pool (cold cache lines for every copy).
    #[default]
    Next,
    /// Freeing the most recently allocated run of an area moves the search index back to it,
    /// so a map/unmap loop reuses cache-hot slots. Not in Linux.
    Lifo,
}

/// The order in which an allocation tries the pools and their areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PoolOrder {
    /// Linux 6.12 `swiotlb_find_slots`: for each area offset from the mapping CPU's area
    /// (`swiotlb_search_area`), every pool, newest first (the RCU list `add_mem_pool` adds to
    /// at the head): a new chunk takes the load at once.
    #[default]
    Linux,
    /// Every area of a pool before the next pool, oldest first: the initial pool fills first,
    /// so dynamic chunks go idle and `shrink` can release them. Not Linux.
    Oldest,
}

/// When and by how much the worker grows the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Growth {
    /// Linux 6.6+ (`swiotlb_find_slots` -> `schedule_work(&mem->dyn_alloc)`): woken only when no
    /// pool has room; adds `chunk` (default the initial pool's size capped at 4 MiB), halving
    /// on failure down to `min_chunk` (`swiotlb_dyn_alloc`, `swiotlb_alloc_pool`).
    #[default]
    Linux,
    /// Hellwig's proposal (not merged): woken once use passes `threshold` (default 70 %), in
    /// the background, before the pools are full; adds `chunk` (default `double`: as much as
    /// the pools hold, so they double), again while use stays past the threshold.
    Proposed,
}

/// The size of one extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Chunk {
    /// `growth=linux`: Linux's (`default_nslabs`, the initial pool's size, capped at
    /// `PAGE_SIZE << MAX_PAGE_ORDER`); `growth=proposed`: `double`.
    #[default]
    Auto,
    /// As much as all (non-transient) pools hold now: each extension doubles the pools.
    Double,
    /// The initial pool's size.
    Initial,
    /// This many bytes.
    Size(u64),
}

/// What a map does when no pool has room (see `swiotlb/exhaustion.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Exhaustion {
    /// Fail (`DmaError::NoSpace`): no transient pool, no waiting.
    Fail,
    /// Linux: a transient pool of exactly the request's size (`swiotlb_find_slots`).
    #[default]
    Transient,
    /// Michael Kelley's 2024 "swiotlb throttling" RFC (not merged): maps that may block
    /// (`MapAttrs::may_block`, DMA_ATTR_MAY_BLOCK) past the high mark, or past the low mark
    /// while a throttled mapping is live, are serialised by one semaphore released on unmap;
    /// otherwise as `transient`.
    Throttle,
    /// Robin Murphy's proposal (not merged): a map that may block and finds no room waits (up
    /// to `wait_timeout`) for space, then grows the pools synchronously; others as `transient`.
    Wait,
}

/// Where a transient pool's memory comes from when memory is encrypted (`convert` other than
/// `none`); unencrypted guests allocate it fresh, with nothing to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AtomicPool {
    /// Linux: dma-pool.c's atomic pools, sized by `dma_atomic_pool_init`'s default (128 KiB per
    /// GiB of `guest_ram`, at least 128 KiB, at most 4 MiB).
    #[default]
    Auto,
    /// Atomic pools of this many bytes each (Linux's `coherent_pool=` boot parameter).
    Size(u64),
    /// No atomic pools: a transient pool is allocated and converted on the I/O path, and
    /// converted back on unmap. Not Linux (whose transient pools come from the atomic pools, or
    /// fail without `CONFIG_DMA_COHERENT_POOL`); what converting per mapping would cost.
    Off,
}

/// Everything that shapes the pools. Serde names match the `key=value` keys where they differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwiotlbConfig {
    /// Bytes of the initial pool (rounded up to whole segments x areas). Linux: 64 MiB.
    pub size: u64,
    /// Create (and convert, in one batch) the initial pool at start.
    pub initial: bool,
    /// Slot size in bytes (power of two). Linux: `IO_TLB_SIZE` = 2 KiB.
    pub slot: u32,
    /// Slots per segment (power of two); the longest mapping. Linux: `IO_TLB_SEGSIZE` = 128.
    pub segment: u32,
    /// Requested areas (locks) per pool, rounded up to a power of two; 0 = one per CPU (Linux).
    pub areas: u32,
    /// Background extension by a worker thread.
    pub dynamic: bool,
    /// When and by how much the worker grows the pools.
    pub growth: Growth,
    /// Use (percent of the pools' slots) at which the worker is woken; `None`: the growth
    /// policy's (Linux: 100, when full; proposed: 70).
    pub threshold: Option<u8>,
    /// Bytes the worker adds per extension (halved on failure down to `min_chunk`).
    pub chunk: Chunk,
    /// Smallest extension. Linux: `IO_TLB_MIN_SLABS` = 1 MiB.
    pub min_chunk: u64,
    /// What a map does when no pool has room.
    pub exhaustion: Exhaustion,
    /// `exhaustion=throttle`: the high and low marks, percent of the pools' slots (Kelley's
    /// RFC: 70 and 65).
    pub throttle_high: u8,
    pub throttle_low: u8,
    /// `exhaustion=wait`: how long a map waits for space before it grows the pools itself.
    #[serde(with = "duration_ms")]
    pub wait_timeout: Duration,
    /// Encrypted memory: the atomic pools transient pools are carved from.
    pub atomic_pool: AtomicPool,
    /// Atomic pools, one per memory zone the guest has (dma-pool.c: DMA, DMA32, kernel);
    /// 0 = from `guest_ram` as an x86-64 guest: DMA and DMA32, and the kernel (normal) zone when
    /// RAM reaches above 4 GiB (past 3 GiB of RAM, below a 32-bit MMIO gap at 3 GiB).
    pub atomic_zones: u8,
    /// Guest RAM in bytes, for Linux's default sizes; 0 = unknown (the formulas' minimums).
    pub guest_ram: u64,
    /// Idle time after which a dynamic chunk is converted back and released; `None` = never
    /// (Linux).
    #[serde(with = "opt_duration_ms")]
    pub shrink: Option<Duration>,
    /// Cap on total shared (converted) memory, in bytes. 1 GiB: the upper clamp Linux applies to
    /// CoCo guests' default pool (`swiotlb_adjust_size`, 6% of RAM clamped to 64 MiB..1 GiB).
    pub cap: u64,
    pub lookup: LookupKind,
    /// Slot reuse policy (Linux: next fit).
    pub reuse: SlotReuse,
    /// Order of the pools and areas an allocation tries (Linux: each area offset across all
    /// pools, newest first).
    pub order: PoolOrder,
    /// Private<->shared conversion cost model.
    pub convert: ConvertCost,
    #[serde(rename = "convert_mode")]
    pub convert_mode: ConvertMode,
    /// Page size for conversions and page alignment (4 KiB).
    pub page: u32,
    /// A global used-slots counter, written by every map and unmap: it makes the total
    /// high-water mark exact and is what a `threshold` below 100 compares against (Linux keeps
    /// it with `CONFIG_DEBUG_FS`: `mem->total_used`, `used_hiwater`). Off: no line that every
    /// queue writes; the total mark becomes the sum of the live pools' marks (an upper bound).
    pub total_used: bool,
}

impl Default for SwiotlbConfig {
    fn default() -> Self {
        SwiotlbConfig {
            size: 64 << 20,
            initial: true,
            slot: 2048,
            segment: 128,
            areas: 0,
            dynamic: true,
            growth: Growth::Linux,
            threshold: None,
            chunk: Chunk::Auto,
            min_chunk: 1 << 20,
            exhaustion: Exhaustion::Transient,
            throttle_high: 70,
            throttle_low: 65,
            wait_timeout: Duration::from_millis(10),
            atomic_pool: AtomicPool::Auto,
            atomic_zones: 0,
            guest_ram: 0,
            shrink: None,
            cap: 1 << 30,
            lookup: LookupKind::Tree,
            reuse: SlotReuse::Next,
            order: PoolOrder::Linux,
            convert: ConvertCost::None,
            convert_mode: ConvertMode::Account,
            page: 4096,
            total_used: true,
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown swiotlb key `{0}`")]
    UnknownKey(String),
    #[error("bad value `{value}` for swiotlb key `{key}`: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("`{0}` is not of the form key=value")]
    NotKeyValue(String),
    #[error("invalid swiotlb configuration: {0}")]
    Invalid(String),
    #[error("swiotlb configuration JSON: {0}")]
    Json(String),
}

/// Parses `64M`, `2K`, `1G`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses `5s`, `500ms`, `2m`, `100us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    Some(match &s[split..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

impl SwiotlbConfig {
    /// The longest mapping (one segment of slots; Linux: `swiotlb_max_mapping_size`).
    pub fn max_mapping_size(&self) -> u32 {
        self.slot.saturating_mul(self.segment)
    }

    /// Applies one `key=value` pair. Keys: see the crate README.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |why| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            why,
        };
        let size = || parse_size(value).ok_or_else(|| bad("expected a size like 64M"));
        let boolean = || parse_bool(value).ok_or_else(|| bad("expected on/off"));
        let int = || value.parse::<u64>().map_err(|_| bad("expected an integer"));
        let percent = || match value.parse::<u8>() {
            Ok(p) if p <= 100 => Ok(p),
            _ => Err(bad("expected a percentage 0..=100")),
        };
        match key {
            "size" => self.size = size()?,
            "initial" => self.initial = boolean()?,
            "slot" => self.slot = u32::try_from(size()?).map_err(|_| bad("too large"))?,
            "segment" => self.segment = u32::try_from(int()?).map_err(|_| bad("too large"))?,
            "areas" => self.areas = u32::try_from(int()?).map_err(|_| bad("too large"))?,
            "dynamic" | "grow" => self.dynamic = boolean()?,
            "growth" => {
                self.growth = match value {
                    "linux" => Growth::Linux,
                    "proposed" => Growth::Proposed,
                    _ => return Err(bad("expected linux or proposed")),
                }
            }
            "threshold" if value == "auto" => self.threshold = None,
            "threshold" => {
                let t = int()?;
                if !(1..=100).contains(&t) {
                    return Err(bad("expected auto or a percentage 1..=100"));
                }
                self.threshold = Some(t as u8);
            }
            "chunk" => {
                self.chunk = match value {
                    "auto" => Chunk::Auto,
                    "double" => Chunk::Double,
                    "initial" => Chunk::Initial,
                    _ => Chunk::Size(
                        parse_size(value)
                            .ok_or_else(|| bad("expected auto, double, initial or a size"))?,
                    ),
                }
            }
            "min-chunk" | "min_chunk" => self.min_chunk = size()?,
            // The older spelling: on = transient, off = fail.
            "transient" => {
                self.exhaustion = if boolean()? {
                    Exhaustion::Transient
                } else {
                    Exhaustion::Fail
                }
            }
            "exhaustion" => {
                self.exhaustion = match value {
                    "fail" => Exhaustion::Fail,
                    "transient" => Exhaustion::Transient,
                    "throttle" => Exhaustion::Throttle,
                    "wait" => Exhaustion::Wait,
                    _ => return Err(bad("expected fail, transient, throttle or wait")),
                }
            }
            "throttle-high" | "throttle_high" => self.throttle_high = percent()?,
            "throttle-low" | "throttle_low" => self.throttle_low = percent()?,
            "wait-timeout" | "wait_timeout" => {
                self.wait_timeout =
                    parse_duration(value).ok_or_else(|| bad("expected a duration like 10ms"))?
            }
            "atomic-pool" | "atomic_pool" => {
                self.atomic_pool = match value {
                    "auto" => AtomicPool::Auto,
                    "off" => AtomicPool::Off,
                    _ => AtomicPool::Size(
                        parse_size(value).ok_or_else(|| bad("expected auto, off or a size"))?,
                    ),
                }
            }
            "atomic-zones" | "atomic_zones" => {
                self.atomic_zones = match value {
                    "auto" => 0,
                    _ => u8::try_from(int()?).map_err(|_| bad("expected auto or 1..=3"))?,
                }
            }
            "guest-ram" | "guest_ram" => self.guest_ram = size()?,
            "total-used" | "total_used" => self.total_used = boolean()?,
            "shrink" => {
                self.shrink = match value {
                    "off" | "never" | "0" => None,
                    _ => Some(parse_duration(value).ok_or_else(|| bad("expected off or 5s"))?),
                }
            }
            "cap" => self.cap = size()?,
            "lookup" => {
                self.lookup = match value {
                    "list" => LookupKind::List,
                    "tree" => LookupKind::Tree,
                    _ => return Err(bad("expected list or tree")),
                }
            }
            "reuse" => {
                self.reuse = match value {
                    "next" => SlotReuse::Next,
                    "lifo" => SlotReuse::Lifo,
                    _ => return Err(bad("expected next or lifo")),
                }
            }
            "order" => {
                self.order = match value {
                    "linux" => PoolOrder::Linux,
                    "oldest" => PoolOrder::Oldest,
                    _ => return Err(bad("expected linux or oldest")),
                }
            }
            "convert" => self.convert = value.parse().map_err(|_| bad(CONVERT_SYNTAX))?,
            "convert-mode" | "convert_mode" => {
                self.convert_mode = match value {
                    "account" => ConvertMode::Account,
                    "inject" => ConvertMode::Inject,
                    _ => return Err(bad("expected account or inject")),
                }
            }
            "page" => self.page = u32::try_from(size()?).map_err(|_| bad("too large"))?,
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Reads a JSON object (the serde form), or a `key=value,...` string.
    pub fn from_json_or_kv(s: &str) -> Result<Self, ConfigError> {
        if s.trim_start().starts_with('{') {
            let c: SwiotlbConfig =
                serde_json::from_str(s).map_err(|e| ConfigError::Json(e.to_string()))?;
            c.validate()?;
            Ok(c)
        } else {
            s.parse()
        }
    }

    /// Checks the invariants the pools rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !self.slot.is_power_of_two() || self.slot < 64 {
            return inv("slot must be a power of two >= 64");
        }
        if !self.page.is_power_of_two() || self.page < self.slot {
            return inv("page must be a power of two >= slot");
        }
        if !self.segment.is_power_of_two() || self.segment > 1 << 15 {
            return inv("segment must be a power of two <= 32768");
        }
        if (self.slot as u64) * (self.segment as u64) > 1 << 30 {
            return inv("slot x segment (the longest mapping) must be <= 1G");
        }
        if self.threshold.is_some_and(|t| !(1..=100).contains(&t)) {
            return inv("threshold must be a percentage 1..=100");
        }
        if self.growth == Growth::Linux && self.threshold() < 100 {
            return inv("a threshold below 100 is growth=proposed (Linux grows only when full)");
        }
        if self.areas > 1024 {
            return inv("areas must be <= 1024");
        }
        if self.min_chunk == 0 || self.chunk == Chunk::Size(0) {
            return inv("chunk and min-chunk must be > 0");
        }
        if self.initial && self.size == 0 {
            return inv("initial pool of size 0");
        }
        if self.initial && self.size > self.cap {
            return inv("initial pool larger than the cap");
        }
        if self.throttle_low > self.throttle_high || self.throttle_high > 100 {
            return inv("throttle marks must be 0 <= throttle-low <= throttle-high <= 100");
        }
        if self.atomic_zones > 3 {
            return inv("atomic-zones must be auto or 1..=3");
        }
        if self.atomic_pool == AtomicPool::Size(0) {
            return inv("atomic-pool of size 0 (off turns it off)");
        }
        Ok(())
    }

    /// Use (percent) at which the worker grows the pools: `threshold`, or the growth policy's.
    pub fn threshold(&self) -> u8 {
        self.threshold.unwrap_or(match self.growth {
            Growth::Linux => 100,
            Growth::Proposed => 70,
        })
    }

    /// Whether the areas carry marks that wake the worker to sum their use (a threshold below
    /// 100 without the global used counter).
    pub fn area_marks(&self) -> bool {
        self.dynamic && !self.total_used && self.threshold() < 100
    }

    /// Whether transient pools come from atomic pools (memory encrypted, atomic pools on).
    pub fn uses_atomic_pools(&self) -> bool {
        self.exhaustion != Exhaustion::Fail
            && self.convert.encrypted()
            && self.atomic_pool != AtomicPool::Off
    }

    /// Bytes of each atomic pool: `coherent_pool=`, or Linux's default (`dma_atomic_pool_init`,
    /// kernel/dma/pool.c): 128 KiB per GiB of RAM, at most `MAX_ORDER_NR_PAGES` (4 MiB), at
    /// least 128 KiB. (Linux divides `totalram_pages()`, a little less than the RAM given.)
    pub fn atomic_pool_size(&self) -> u64 {
        match self.atomic_pool {
            AtomicPool::Size(b) => b,
            AtomicPool::Auto | AtomicPool::Off => {
                const SZ_128K: u64 = 128 << 10;
                let pages = (self.guest_ram / self.page as u64) / ((1 << 30) / SZ_128K);
                let pages = pages.min(MAX_ORDER_BYTES / self.page as u64);
                (pages * self.page as u64).max(SZ_128K)
            }
        }
    }

    /// Atomic pools: `atomic_zones`, or 2 (DMA, DMA32) up to 3 GiB of RAM and 3 (and kernel)
    /// beyond.
    pub fn atomic_zones(&self) -> usize {
        match self.atomic_zones {
            0 if self.guest_ram > 3 << 30 => 3,
            0 => 2,
            n => n as usize,
        }
    }

    /// Areas per pool: requested (or CPUs) rounded up to a power of two, then reduced so that
    /// each area holds at least one whole segment of a pool of `nslots` (Linux: `limit_nareas`).
    pub fn areas_for(&self, nslots: usize) -> usize {
        let req = if self.areas == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.areas as usize
        };
        let mut n = req.next_power_of_two();
        let seg = self.segment as usize;
        while n > 1 && nslots < n * seg {
            n /= 2;
        }
        n
    }
}

impl FromStr for SwiotlbConfig {
    type Err = ConfigError;

    /// `size=64M,slot=2K,segment=128,areas=4,growth=proposed,threshold=70,chunk=4M,transient=on,shrink=5s,
    /// cap=1G,lookup=tree,convert=snp,convert-mode=inject`; an empty string gives the defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = SwiotlbConfig::default();
        for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(kv.to_string()))?;
            c.set(k.trim(), v.trim())?;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c: SwiotlbConfig = "size=64M,slot=2K,segment=128,areas=4,growth=proposed,\
             threshold=70,chunk=4M,\
             transient=on,shrink=5s,cap=1G,lookup=tree,convert=snp,convert-mode=inject"
            .parse()
            .unwrap();
        assert_eq!(c.size, 64 << 20);
        assert_eq!(c.slot, 2048);
        assert_eq!(c.areas, 4);
        assert_eq!(
            (c.growth, c.threshold(), c.chunk),
            (Growth::Proposed, 70, Chunk::Size(4 << 20))
        );
        let d = SwiotlbConfig::default();
        assert_eq!(
            (d.growth, d.threshold(), d.chunk),
            (Growth::Linux, 100, Chunk::Auto)
        );
        let p: SwiotlbConfig = "growth=proposed,chunk=initial,total-used=off"
            .parse()
            .unwrap();
        assert_eq!(
            (p.threshold(), p.chunk, p.area_marks()),
            (70, Chunk::Initial, true)
        );
        assert_eq!(c.shrink, Some(Duration::from_secs(5)));
        assert_eq!(c.cap, 1 << 30);
        assert_eq!(c.convert, ConvertCost::Snp);
        assert_eq!(c.convert_mode, ConvertMode::Inject);
        let custom: SwiotlbConfig =
            "convert=custom:to-shared=100/0/20/0/0:to-private=100/0/20/0/0,lookup=list"
                .parse()
                .unwrap();
        let d = crate::DirCost {
            call_ns: 100,
            exit_ns: 0,
            page_ns: 20,
            pages_per_call: 0,
            pages_per_exit: 0,
        };
        assert_eq!(
            custom.convert,
            ConvertCost::Custom {
                to_shared: d,
                to_private: d
            }
        );
        assert_eq!(custom.lookup, LookupKind::List);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            "bogus=1".parse::<SwiotlbConfig>(),
            Err(ConfigError::UnknownKey(_))
        ));
        assert!(matches!(
            "size".parse::<SwiotlbConfig>(),
            Err(ConfigError::NotKeyValue(_))
        ));
        assert!(matches!(
            "slot=3000".parse::<SwiotlbConfig>(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            "threshold=0".parse::<SwiotlbConfig>(),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            "threshold=70".parse::<SwiotlbConfig>(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            "growth=proposed,chunk=0".parse::<SwiotlbConfig>(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            "size=2G".parse::<SwiotlbConfig>(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            "slot=1M,page=1M,segment=2048".parse::<SwiotlbConfig>(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            SwiotlbConfig::from_json_or_kv(r#"{"threshold": 0}"#),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            "convert=100/20".parse::<SwiotlbConfig>(),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            SwiotlbConfig::from_json_or_kv(r#"{"bogus": 0}"#),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn json_round_trip() {
        for kv in [
            "shrink=250ms,convert=tdx",
            "convert=custom:to-shared=1/2/3/4/5:to-private=6/7/8/9/10",
        ] {
            let c: SwiotlbConfig = kv.parse().unwrap();
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(SwiotlbConfig::from_json_or_kv(&j).unwrap(), c);
        }
        // JSON needs every figure too.
        let partial = r#"{"convert": {"custom": {"to_shared": {"call_ns": 1},
            "to_private": {"call_ns": 1}}}}"#;
        assert!(matches!(
            SwiotlbConfig::from_json_or_kv(partial),
            Err(ConfigError::Json(_))
        ));
    }
}
