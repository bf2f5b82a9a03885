//! How a deferred map is told to retry: a [`DmaWaker`] the device registers for its source
//! (`Dma::set_waker`). Any `Fn()` is one; [`EventNotifier`] is an eventfd, for an event loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Called (on the thread that made space: an unmapping device thread, or the pool worker) when
/// a map that answered `DmaError::WouldBlock` may now succeed. Must not call back into the
/// DMA API; it should only make the device's event loop run the retry.
pub trait DmaWaker: Send + Sync {
    fn wake(&self);
}

impl<F: Fn() + Send + Sync> DmaWaker for F {
    fn wake(&self) {
        self()
    }
}

/// A non-blocking eventfd: `wake` adds one, the event loop polls `as_raw_fd` and `drain`s it.
pub struct EventNotifier {
    fd: OwnedFd,
}

impl EventNotifier {
    pub fn new() -> io::Result<EventNotifier> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(EventNotifier {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Reads and resets the count: how many wakes since the last drain (0 if none).
    pub fn drain(&self) -> u64 {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into `n`, which is 8 bytes and lives across the call.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        if r == 8 {
            n
        } else {
            0
        }
    }
}

impl DmaWaker for EventNotifier {
    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of `one`, which lives across the call. A full counter
        // (EAGAIN) means a wake is pending anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl AsRawFd for EventNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_wakes() {
        let e = EventNotifier::new().unwrap();
        assert_eq!(e.drain(), 0);
        e.wake();
        e.wake();
        assert_eq!(e.drain(), 2);
        assert_eq!(e.drain(), 0);
    }
}
