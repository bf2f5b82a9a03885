//! A tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) with a 12-byte virtio
//! net header (virtio 1.0 layout, with `num_buffers`) in front of every frame.
//!
//! A multi-queue tap (`IFF_MULTI_QUEUE`, created with `ip tuntap add NAME mode tap
//! multi_queue`) is opened once per queue ([`Tap::open_queues`]); each fd is one queue of the
//! interface, and the kernel spreads the frames it sends us over the queues attached
//! ([`Tap::set_queue_attached`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// The ioctl that sets a tap's offloads (also in microvm's vCPU seccomp filter).
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The ioctl that attaches or detaches one queue of a multi-queue tap (also in microvm's main
/// and vCPU seccomp filters: virtio-net's VQ_PAIRS_SET and reset).
pub const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// The kernel's `MAX_TAP_QUEUES`.
pub const MAX_TAP_QUEUES: usize = 256;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Size of the virtio net header the tap exchanges with us.
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why [`Tap::open_queues`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty or longer than {max} bytes", max = libc::IFNAMSIZ - 1)]
    BadName(String),
    #[error("{0} queues asked: a tap has 1 to {MAX_TAP_QUEUES}")]
    QueueCount(usize),
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(io::Error),
    /// TUNSETIFF with `IFF_MULTI_QUEUE` refused with EINVAL: the interface exists without
    /// multi-queue (or a kernel without it).
    #[error(
        "tap {name:?} does not take {queues} queues (TUNSETIFF IFF_MULTI_QUEUE: {error}): it \
         was not created multi-queue; recreate it with `ip tuntap del {name} mode tap && ip \
         tuntap add {name} mode tap multi_queue`, or use queues=1"
    )]
    NotMultiQueue {
        name: String,
        queues: usize,
        error: io::Error,
    },
    #[error("tap {name:?}: queue {index} of {queues}: TUNSETIFF: {error}")]
    SetIff {
        name: String,
        index: usize,
        queues: usize,
        error: io::Error,
    },
    #[error("tap {name:?}: TUNSETVNETHDRSZ: {error}")]
    VnetHdr { name: String, error: io::Error },
}

/// A tap (or, for tests, any packet-oriented fd that behaves like one).
#[derive(Debug)]
pub struct Tap {
    file: File,
    is_tap: bool,
}

impl Tap {
    /// Opens (or creates, with CAP_NET_ADMIN) the tap interface `name`, non-blocking, with
    /// 12-byte vnet headers. A tap created multi-queue is opened as one of its queues.
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut taps = Self::open_queues(name, 1).map_err(|e| match e {
            TapError::OpenTun(e)
            | TapError::SetIff { error: e, .. }
            | TapError::VnetHdr { error: e, .. }
            | TapError::NotMultiQueue { error: e, .. } => e,
            e => io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        Ok(taps.remove(0))
    }

    /// Opens `queues` fds on the tap interface `name`, each one queue of it. More than one
    /// needs a multi-queue tap (`IFF_MULTI_QUEUE`); for one, a single-queue tap is tried first
    /// and a multi-queue one after (the kernel refuses a mismatch with EINVAL).
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_string()));
        }
        if queues == 0 || queues > MAX_TAP_QUEUES {
            return Err(TapError::QueueCount(queues));
        }
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if queues == 1 {
            return match Self::open_one(name, flags) {
                // Perhaps a multi-queue tap: open one of its queues. If that fails too, the
                // first error is the one to report.
                Err(e @ TapError::SetIff { .. })
                    if matches!(&e, TapError::SetIff { error, .. }
                        if error.raw_os_error() == Some(libc::EINVAL)) =>
                {
                    Self::open_one(name, flags | IFF_MULTI_QUEUE)
                        .map(|t| vec![t])
                        .map_err(|_| e)
                }
                r => r.map(|t| vec![t]),
            };
        }
        let mut taps = Vec::with_capacity(queues);
        for index in 0..queues {
            match Self::open_one(name, flags | IFF_MULTI_QUEUE) {
                Ok(t) => taps.push(t),
                Err(TapError::SetIff { error, .. })
                    if index == 0 && error.raw_os_error() == Some(libc::EINVAL) =>
                {
                    return Err(TapError::NotMultiQueue {
                        name: name.to_string(),
                        queues,
                        error,
                    });
                }
                Err(TapError::SetIff { error, .. }) => {
                    return Err(TapError::SetIff {
                        name: name.to_string(),
                        index,
                        queues,
                        error,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(taps)
    }

    /// One fd on `name` with `flags` (TUNSETIFF), with 12-byte vnet headers.
    fn open_one(name: &str, flags: libc::c_short) -> Result<Tap, TapError> {
        let bytes = name.as_bytes();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` matches in size
        // (40 bytes) and layout for the fields used; `req` outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                index: 0,
                queues: 1,
                error: io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(TapError::VnetHdr {
                name: name.to_string(),
                error: io::Error::last_os_error(),
            });
        }
        Ok(Tap { file, is_tap: true })
    }

    /// TUNSETQUEUE: attaches this queue to its multi-queue tap (the kernel may steer frames
    /// to it, and it may send) or detaches it (reads and writes then fail with EBADFD, and
    /// its fd must not be polled). A no-op for a stand-in fd ([`Tap::from_file`]).
    pub fn set_queue_attached(&self, attached: bool) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: if attached {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads a `struct ifreq` (its flags), which `IfReq` matches in
        // size and layout; `req` outlives the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wraps an fd that already behaves like a configured tap: one frame (with its 12-byte vnet
    /// header) per read/write, non-blocking. Offloads are never enabled on it.
    pub fn from_file(file: File) -> Tap {
        Tap {
            file,
            is_tap: false,
        }
    }

    /// TUNSETOFFLOAD: which offloads the tap may hand us (frames the guest must finish).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.is_tap {
            return if flags == 0 {
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::Unsupported))
            };
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is accessed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one frame gathered from `iov` (`writev(2)`).
    ///
    /// # Safety
    /// Every iovec must point at memory valid for reads of its length for the whole call.
    pub unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let n = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the caller guarantees the iovecs; `iov` itself is borrowed for the call.
        let r = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Reads one frame, scattered over `iov` (`readv(2)`).
    ///
    /// # Safety
    /// Every iovec must point at memory valid for writes of its length for the whole call,
    /// which nothing else accesses meanwhile.
    pub unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let n = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the caller guarantees the iovecs; `iov` itself is borrowed for the call.
        let r = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A connected, non-blocking `SOCK_SEQPACKET` pair: one frame per read or write, as a tap
/// delivers them. One end goes to [`Tap::from_file`] where tests, benches and fuzz targets
/// need a tap without a network device.
pub fn seqpacket_pair() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh fds that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}
