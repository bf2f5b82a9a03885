//! A tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) with a 12-byte virtio
//! net header (virtio 1.0 layout, with `num_buffers`) in front of every frame.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// The ioctl that sets a tap's offloads (also in microvm's vCPU seccomp filter).
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

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

/// A tap (or, for tests, any packet-oriented fd that behaves like one).
#[derive(Debug)]
pub struct Tap {
    file: File,
    is_tap: bool,
}

impl Tap {
    /// Opens (or creates, with CAP_NET_ADMIN) the tap interface `name`, non-blocking, with
    /// 12-byte vnet headers.
    pub fn open(name: &str) -> io::Result<Tap> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` matches in size
        // (40 bytes) and layout for the fields used; `req` outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap { file, is_tap: true })
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
