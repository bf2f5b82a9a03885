//! What a map does when the pools are short of room (`exhaustion=`), and how a device defers a
//! map that must wait.
//!
//! - `fail`: `DmaError::NoSpace` (the worker is still woken to grow).
//! - `transient` (default, Linux 6.6+ `swiotlb_find_slots`): a transient pool of exactly the
//!   request's size, freed on unmap.
//! - `throttle` (Michael Kelley's 2024 "swiotlb throttling" RFC, not merged): a map that may
//!   block (`MapAttrs::may_block`, the RFC's `DMA_ATTR_MAY_BLOCK`; drivers opt in) when use is
//!   past `throttle-high` (70 %), or past `throttle-low` (65 %) while the semaphore is held,
//!   must take the one semaphore (initialised to 1); its unmap releases it. Use is the global
//!   counter (`total-used=on`, the RFC's `total_used`) or the areas' sum (Linux's `mem_used`
//!   without `CONFIG_DEBUG_FS`), unlocked: a moment stale, as in the RFC. The marks are
//!   percentages of the current pools (the RFC sets them once, from the size at boot). Maps
//!   that do not opt in are never throttled; past the semaphore, exhaustion is `transient`.
//! - `wait` (Robin Murphy's proposal in the RFC's review, not merged): a map that may block and
//!   finds no pool with room waits for space up to `wait-timeout`, then grows the pools
//!   synchronously (a chunk as the growth policy sizes it, converted on the I/O path, within
//!   the cap: else `CapReached`); maps that do not opt in are `transient`.
//!
//! **Waiting without blocking.** The model never blocks the caller. A map that would wait
//! returns `Err(DmaError::WouldBlock { cause, .. })` having registered the wait; the waker the
//! caller registered for its source (`Dma::set_waker(src, Some(waker))`: any `Fn()`, or an
//! [`crate::EventNotifier`] whose eventfd an event loop polls) is called when a retry may
//! succeed: `Throttled`, when the semaphore is handed to this source (the first waiter, FIFO,
//! as a kernel semaphore wakes its waiters); `NoSpace`, after the next unmap or pool growth,
//! and by the worker when the timeout has passed (the retry then grows the pools). A device:
//!
//! 1. at queue activation registers one waker per (device, queue) source and adds it to its
//!    event loop; maps with `may_block` only where it can defer the request (as a driver
//!    passes `DMA_ATTR_MAY_BLOCK` only where it may sleep);
//! 2. on `WouldBlock`, unmaps what it already mapped for the request, keeps the request (the
//!    virtio chain, unanswered) at the head of a deferred list, and stops taking requests
//!    from that queue (order is kept; nothing is failed);
//! 3. when the waker fires, retries the deferred requests first, in order; a retry that gets
//!    `WouldBlock` again is registered again (the wait's start, for the timeout, is kept);
//! 4. unmaps never block. A source handed the semaphore must retry (it holds it until then).
//!
//! Statistics: `StatsSnapshot::blocking` (`BlockingStats`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::fastpath::hint;
use super::{Mapping, Shared};
use crate::config::Exhaustion;
use crate::error::{BlockCause, DmaError};
use crate::notify::DmaWaker;
use crate::pool::Request;
use crate::stats::{BlockingStats, Payer, Shard};
use crate::types::DmaSource;

/// A map waiting for space (`exhaustion=wait`).
struct SpaceWaiter {
    src: DmaSource,
    /// Its first `WouldBlock` since it last mapped: the timeout counts from here.
    since: Instant,
    /// Woken since its last `WouldBlock` (so that every unmap does not wake it again).
    woken: bool,
}

#[derive(Default)]
struct State {
    wakers: HashMap<DmaSource, Arc<dyn DmaWaker>>,
    /// The throttle semaphore is taken (by a live throttled mapping, or handed to a waiter).
    sem_held: bool,
    /// Sources waiting for the semaphore, in arrival order.
    sem_queue: VecDeque<DmaSource>,
    /// The source the released semaphore was handed to; it takes it on its retry.
    handoff: Option<DmaSource>,
    /// Bounce addresses of live throttled mappings (the RFC's per-slot `throttled` flag).
    throttled: HashSet<u64>,
    space: Vec<SpaceWaiter>,
    stats: BlockingStats,
}

impl State {
    fn busy(&self) -> bool {
        !self.throttled.is_empty() || !self.space.is_empty()
    }

    /// The semaphore's `up`: to the first waiter if there is one (returns its waker).
    fn release(&mut self) -> Option<Arc<dyn DmaWaker>> {
        match self.sem_queue.pop_front() {
            Some(next) => {
                self.handoff = Some(next);
                self.stats.wakeups += 1;
                self.wakers.get(&next).cloned()
            }
            None => {
                self.sem_held = false;
                None
            }
        }
    }

    /// Wakes the space waiters not yet woken (and, with `expired`, only those whose timeout
    /// has passed at `now`).
    fn wake_space(&mut self, expired: Option<(Instant, Duration)>) -> Vec<Arc<dyn DmaWaker>> {
        let mut out = Vec::new();
        for w in self.space.iter_mut().filter(|w| !w.woken) {
            if expired.is_some_and(|(now, t)| now < w.since + t) {
                continue;
            }
            w.woken = true;
            self.stats.wakeups += 1;
            out.extend(self.wakers.get(&w.src).cloned());
        }
        out
    }
}

/// The exhaustion policies' shared state (one mutex: every path here is off the fast path).
#[derive(Default)]
pub(super) struct Blocking {
    st: Mutex<State>,
}

impl Blocking {
    pub fn stats(&self) -> BlockingStats {
        let st = self.st.lock();
        let mut s = st.stats.clone();
        s.waiting = (st.sem_queue.len() + st.space.len()) as u64;
        s
    }
}

fn wake_all(wakers: impl IntoIterator<Item = Arc<dyn DmaWaker>>) {
    for w in wakers {
        w.wake();
    }
}

impl Shared {
    /// Registers (or, with `None`, removes) the waker of `src`.
    pub(super) fn set_waker(&self, src: DmaSource, waker: Option<Arc<dyn DmaWaker>>) {
        let mut st = self.blocking.st.lock();
        match waker {
            Some(w) => st.wakers.insert(src, w),
            None => st.wakers.remove(&src),
        };
    }

    /// A map that may block, with `exhaustion=throttle` or `wait`.
    #[cold]
    #[inline(never)]
    pub(super) fn alloc_blocking(
        &self,
        src: DmaSource,
        req: &Request,
        shard: &Shard,
    ) -> Result<Mapping, DmaError> {
        let wait = self.cfg.exhaustion == Exhaustion::Wait;
        let throttled = !wait && self.throttle_acquire(src, req.len)?;
        let h = hint(src);
        let mut tried = false;
        let mut r = None;
        if let Some(p) = self.initial.get() {
            if self.initial_first.load(Relaxed) {
                r = p
                    .alloc(h, req, shard)
                    .map(|i| Ok(self.allocated(p, i, req)));
                tried = true;
            }
        }
        let r = r.unwrap_or_else(|| self.alloc_beyond_initial(src, req, tried, shard, wait));
        let mut st = self.blocking.st.lock();
        match &r {
            Ok(m) if throttled => {
                st.throttled.insert(m.addr);
                self.slow_unmap.store(true, Relaxed);
            }
            Ok(_) => st.space.retain(|w| w.src != src),
            Err(DmaError::WouldBlock { .. }) => {}
            Err(_) if throttled => {
                let next = st.release();
                drop(st);
                wake_all(next);
                return r;
            }
            Err(_) => st.space.retain(|w| w.src != src),
        }
        self.slow_unmap.store(st.busy(), Relaxed);
        r
    }

    /// Used and total slots of the (non-transient) pools: the global counter when kept, else
    /// the areas' counts summed without their locks (Linux `mem_used`).
    fn use_now(&self) -> (u64, u64) {
        let set = self.pools.load();
        let total: usize = set.alloc_order.iter().map(|p| p.nslots).sum();
        let used = if self.cfg.total_used {
            self.g.used.load(Relaxed)
        } else {
            set.alloc_order.iter().map(|p| p.used() as u64).sum()
        };
        (used, total as u64)
    }

    /// Kelley's throttle: whether this map must hold the semaphore (`Ok(true)`: it does now),
    /// or `WouldBlock` (queued for it).
    fn throttle_acquire(&self, src: DmaSource, len: usize) -> Result<bool, DmaError> {
        let (used, total) = self.use_now();
        let high = total * self.cfg.throttle_high as u64 / 100;
        let low = total * self.cfg.throttle_low as u64 / 100;
        let mut st = self.blocking.st.lock();
        if st.handoff == Some(src) {
            st.handoff = None; // Handed over on release: this map holds it now.
            return Ok(true);
        }
        if used > high {
            st.stats.throttled_high += 1;
        } else if used > low && st.sem_held {
            st.stats.throttled_low += 1;
        } else {
            return Ok(false);
        }
        if !st.sem_held {
            st.sem_held = true;
            return Ok(true);
        }
        if !st.sem_queue.contains(&src) {
            st.sem_queue.push_back(src);
        }
        st.stats.throttle_blocked += 1;
        Err(DmaError::WouldBlock {
            len,
            cause: BlockCause::Throttled,
        })
    }

    /// After a release, when `slow_unmap`: releases the semaphore if the mapping was
    /// throttled, and wakes the maps waiting for space.
    #[cold]
    #[inline(never)]
    pub(super) fn after_unmap(&self, addr: u64) {
        let mut st = self.blocking.st.lock();
        let mut wake = Vec::new();
        if st.throttled.remove(&addr) {
            wake.extend(st.release());
        }
        wake.extend(st.wake_space(None));
        self.slow_unmap.store(st.busy(), Relaxed);
        drop(st);
        wake_all(wake);
    }

    /// A pool was added: space for whoever waits.
    pub(super) fn pool_added(&self) {
        if self.cfg.exhaustion == Exhaustion::Wait {
            let wake = self.blocking.st.lock().wake_space(None);
            wake_all(wake);
        }
    }

    /// The worker: wakes the space waiters whose timeout has passed; returns how long until
    /// the next one's does.
    pub(super) fn wake_expired(&self) -> Option<Duration> {
        if self.cfg.exhaustion != Exhaustion::Wait {
            return None;
        }
        let now = Instant::now();
        let t = self.cfg.wait_timeout;
        let mut st = self.blocking.st.lock();
        let wake = st.wake_space(Some((now, t)));
        let next = st
            .space
            .iter()
            .filter(|w| !w.woken)
            .map(|w| (w.since + t).saturating_duration_since(now))
            .min();
        drop(st);
        wake_all(wake);
        next
    }

    /// Murphy's wait: every pool is full. Within the timeout: `WouldBlock` (registered);
    /// past it: grow the pools now, on this thread, and map from them.
    pub(super) fn wait_for_space(
        &self,
        src: DmaSource,
        req: &Request,
        shard: &Shard,
    ) -> Result<Mapping, DmaError> {
        let now = Instant::now();
        {
            let mut st = self.blocking.st.lock();
            let i = match st.space.iter().position(|w| w.src == src) {
                Some(i) => i,
                None => {
                    st.space.push(SpaceWaiter {
                        src,
                        since: now,
                        woken: false,
                    });
                    st.space.len() - 1
                }
            };
            if now.duration_since(st.space[i].since) < self.cfg.wait_timeout {
                st.space[i].woken = false;
                st.stats.space_blocked += 1;
                self.slow_unmap.store(true, Relaxed);
                drop(st);
                // The worker wakes waiters at their deadlines: let it see this one.
                let _c = self.sig.ctl.lock();
                self.sig.cv.notify_one();
                return Err(DmaError::WouldBlock {
                    len: req.len,
                    cause: BlockCause::NoSpace,
                });
            }
            st.space.swap_remove(i);
            st.stats.wait_timeouts += 1;
        }
        match self.add_chunk(Payer::IoPath) {
            Ok(_) => {
                self.blocking.st.lock().stats.sync_growths += 1;
                self.search(hint(src), req, false, shard)
                    .ok_or(DmaError::NoSpace { len: req.len })
            }
            Err(e) => {
                self.blocking.st.lock().stats.sync_growth_failures += 1;
                Err(match e {
                    DmaError::CapReached { cap, .. } => DmaError::CapReached { len: req.len, cap },
                    e => e,
                })
            }
        }
    }
}
