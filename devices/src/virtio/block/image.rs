//! The raw image behind a virtio-blk device: its lock, positional reads and writes straight
//! between the file and DMA buffers (no seek, no host copy), `fdatasync`, hole punching and
//! zeroing.
//!
//! In tests, [`Faults`] makes the next `fdatasync`s or writes fail as a dying disk would.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;

use vm_memory::VolatileSlice;
use vmm_sys_util::write_zeroes::{PunchHole, WriteZeroesAt};

/// A disk image file.
pub(super) struct Image {
    file: File,
    #[cfg(test)]
    pub(super) faults: Faults,
}

impl Image {
    pub fn new(file: File) -> Image {
        Image {
            file,
            #[cfg(test)]
            faults: Faults::default(),
        }
    }

    /// Locks the whole image with an open file description (OFD) lock, as QEMU and Cloud
    /// Hypervisor do: exclusive (a write lock) for a read-write disk, shared (a read lock) for a
    /// read-only one, so a second VMM cannot write an image another one uses, nor use one
    /// another one writes. The lock belongs to this open of the file (not to the process, unlike
    /// a POSIX lock: two opens conflict even in one process) and goes with its last fd. It is
    /// advisory: it stops VMMs that take it, not other writers. Taken at set-up, before any
    /// seccomp filter.
    pub fn lock(&self, readonly: bool) -> Result<(), super::BlockError> {
        let kind = if readonly {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        };
        let whole_file = libc::flock {
            l_type: kind as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0, // to the end, however long the file grows
            l_pid: 0, // must be 0 for OFD locks
        };
        // SAFETY: F_OFD_SETLK reads one `struct flock` through the pointer, valid for the call;
        // the fd is owned by `file`.
        let r = unsafe {
            libc::fcntl(
                self.file.as_raw_fd(),
                libc::F_OFD_SETLK,
                &whole_file as *const libc::flock,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => Err(super::BlockError::Locked),
            _ => Err(super::BlockError::Lock(e)),
        }
    }

    /// The file's length in bytes (seeking rather than metadata: a block device's metadata
    /// length is 0).
    pub fn len(&self) -> io::Result<u64> {
        (&self.file).seek(SeekFrom::End(0))
    }

    /// Reads exactly `slice.len()` bytes at `offset` into `slice` (pread(2)).
    pub fn read_at(&self, slice: &VolatileSlice, offset: u64) -> io::Result<()> {
        let guard = slice.ptr_guard_mut();
        let base = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        positional_loop(
            slice.len(),
            offset,
            io::ErrorKind::UnexpectedEof,
            |done, off| {
                // SAFETY: `base` points to `slice.len()` bytes valid for writes for the lifetime
                // of `slice` (a VolatileSlice invariant, held by `guard`); the kernel writes at
                // most `len - done` bytes starting `done` bytes in. The fd is owned by `file`.
                unsafe { libc::pread64(fd, base.add(done).cast(), slice.len() - done, off) }
            },
        )
    }

    /// Writes all of `slice` at `offset` (pwrite(2)).
    pub fn write_at(&self, slice: &VolatileSlice, offset: u64) -> io::Result<()> {
        #[cfg(test)]
        self.faults.write()?;
        let guard = slice.ptr_guard();
        let base = guard.as_ptr();
        let fd = self.file.as_raw_fd();
        positional_loop(
            slice.len(),
            offset,
            io::ErrorKind::WriteZero,
            |done, off| {
                // SAFETY: `base` points to `slice.len()` readable bytes for the lifetime of
                // `slice` (held by `guard`); the kernel reads at most `len - done` bytes starting
                // `done` bytes in. The fd is owned by `file`.
                unsafe { libc::pwrite64(fd, base.add(done).cast(), slice.len() - done, off) }
            },
        )
    }

    /// fdatasync(2): what was written is on stable storage, or an error.
    pub fn sync_data(&self) -> io::Result<()> {
        #[cfg(test)]
        self.faults.syncs.set(self.faults.syncs.get() + 1);
        #[cfg(test)]
        self.faults.sync()?;
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` (fallocate PUNCH_HOLE | KEEP_SIZE): they read as 0.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(test)]
        self.faults.write()?;
        // `vmm-sys-util`'s helpers take `&mut File`; a dup of the fd serves.
        let mut f = self.file.try_clone()?;
        f.punch_hole(offset, len)
    }

    /// Writes `len` zero bytes at `offset` (fallocate ZERO_RANGE, or plain writes).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(test)]
        self.faults.write()?;
        let mut f = self.file.try_clone()?;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        f.write_all_zeroes_at(offset, len)
    }
}

impl AsRawFd for Image {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.file.as_raw_fd()
    }
}

fn to_off(offset: u64) -> io::Result<libc::off64_t> {
    libc::off64_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Repeats a positional read or write (`op(done, file_offset)`, a syscall's return value)
/// until `len` bytes are transferred: short transfers continue, EINTR retries, a transfer of
/// 0 bytes is `at_zero`.
fn positional_loop(
    len: usize,
    offset: u64,
    at_zero: io::ErrorKind,
    mut op: impl FnMut(usize, libc::off64_t) -> isize,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let off = to_off(offset + done as u64)?;
        match op(done, off) {
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::Error::from(at_zero)),
            r => done += r as usize,
        }
    }
    Ok(())
}

/// Failures to inject: the next `sync` fdatasyncs and the next `write` writes (pwrite, punch
/// hole, write zeroes) fail with EIO without reaching the file.
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    pub sync: std::cell::Cell<u32>,
    pub write: std::cell::Cell<u32>,
    /// `sync_data` calls (the synchronous ones; io_uring's FSYNCs are not counted).
    pub syncs: std::cell::Cell<u32>,
}

#[cfg(test)]
impl Faults {
    fn take(count: &std::cell::Cell<u32>) -> io::Result<()> {
        match count.get() {
            0 => Ok(()),
            n => {
                count.set(n - 1);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
    }

    fn sync(&self) -> io::Result<()> {
        Self::take(&self.sync)
    }

    fn write(&self) -> io::Result<()> {
        Self::take(&self.write)
    }

    /// The fault a write (`true`) or an fdatasync (`false`) the io_uring engine is about to
    /// submit gets instead (the kernel is not asked).
    pub fn injected(&self, write: bool) -> io::Result<()> {
        if write {
            self.write()
        } else {
            self.sync()
        }
    }
}
