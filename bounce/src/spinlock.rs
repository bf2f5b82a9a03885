//! The area lock: a spinlock, as Linux's `area->lock` (`spin_lock_irqsave`). Acquiring is one
//! compare-and-swap, releasing a plain release store (no read-modify-write, as Linux's queued
//! spinlock unlock). A waiter spins briefly, then yields the CPU, since a user-space holder can
//! be preempted (the kernel's holder, with interrupts off, cannot).
//!
//! With the `loom` feature the atomics and the cell come from `loom`, whose model below checks
//! that guards exclude each other and that what one holder wrote is what the next one reads:
//! `cargo test -p bounce --features loom --lib spinlock` (only for that: outside a loom model
//! the lock would panic).

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

#[cfg(feature = "loom")]
use loom::{cell::UnsafeCell, hint::spin_loop, sync::atomic::AtomicBool, thread::yield_now};
#[cfg(not(feature = "loom"))]
use std::{cell::UnsafeCell, hint::spin_loop, sync::atomic::AtomicBool, thread::yield_now};

/// Busy-wait rounds before a waiter yields (loom: yield at once, so its model stays finite).
const SPINS: u32 = if cfg!(feature = "loom") { 0 } else { 100 };

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is only reached through a guard, and at most one guard exists at a time
// (`locked`, acquired with Acquire and released with Release ordering).
unsafe impl<T: Send> Sync for SpinLock<T> {}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// loom tracks the access for as long as the guard lives.
    #[cfg(feature = "loom")]
    access: loom::cell::MutPtr<T>,
}

impl<T> SpinLock<T> {
    pub(crate) fn new(data: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Acquire, Relaxed)
            .ok()
            .map(|_| SpinGuard {
                lock: self,
                #[cfg(feature = "loom")]
                access: self.data.get_mut(),
            })
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            let mut spins = 0;
            while self.locked.load(Relaxed) {
                // Always false under loom (SPINS = 0), by design.
                #[allow(clippy::absurd_extreme_comparisons)]
                if spins < SPINS {
                    spins += 1;
                    spin_loop();
                } else {
                    yield_now();
                }
            }
        }
    }
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        #[cfg(not(feature = "loom"))]
        unsafe {
            &*self.lock.data.get()
        }
        // SAFETY: as above; loom checks it.
        #[cfg(feature = "loom")]
        unsafe {
            self.access.deref()
        }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only reference.
        #[cfg(not(feature = "loom"))]
        unsafe {
            &mut *self.lock.data.get()
        }
        // SAFETY: as above; loom checks it.
        #[cfg(feature = "loom")]
        unsafe {
            self.access.deref()
        }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Release);
    }
}

#[cfg(all(test, feature = "loom"))]
mod tests {
    use super::*;
    use loom::sync::Arc;

    /// Two holders add under the lock, one through `lock` and one through `try_lock` until it
    /// succeeds: no lost update and no overlapping guards, in every interleaving loom explores.
    #[test]
    fn guards_exclude_and_publish() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let l = Arc::new(SpinLock::new((0u32, 0u32)));
            let t = {
                let l = l.clone();
                loom::thread::spawn(move || {
                    let mut g = l.lock();
                    g.0 += 1;
                    g.1 += 1;
                })
            };
            loop {
                if let Some(mut g) = l.try_lock() {
                    g.0 += 1;
                    g.1 += 1;
                    break;
                }
                yield_now();
            }
            t.join().unwrap();
            assert_eq!(*l.lock(), (2, 2));
        });
    }
}
