//! Which fds a thread may write to, decided when it installs its filter.
//!
//! Every thread writes eventfds: irqfds, queue and control eventfds, the devices' wake-ups
//! (an unmap on any thread may wake any device), stop and exit events. They are created at
//! set-up, by many objects (some without an accessor), so the filter does not trust a list
//! kept by hand: it names every eventfd open when the thread enters its filter, found in
//! `/proc/self/fd`. The rest is per kind of thread: stderr (logs, the SIGSYS report) for all,
//! stdout (the console) for the vCPUs and the main thread, taps for the main thread (virtio-net
//! runs on its event loop), and what set-up registered with `Filters::allow_write` (the metrics
//! file, the DMA trace). Never writable: disk images (their threads `pwrite`), KVM fds, /proc
//! files, sockets (the metrics socket answers with `send`), the pool's memory files.

use std::io;
use std::os::fd::RawFd;

use super::ThreadKind;

/// What an open fd is, as far as the filters care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FdClass {
    EventFd,
    Tap,
    Other,
}

/// Classifies an fd by its `/proc/self/fd` link.
fn class_of(link: &std::path::Path) -> FdClass {
    match link.to_str() {
        Some("anon_inode:[eventfd]") => FdClass::EventFd,
        Some("/dev/net/tun") => FdClass::Tap,
        _ => FdClass::Other,
    }
}

/// The process's open eventfds and taps (an fd that closes during the scan is skipped).
pub(super) fn open_fds() -> io::Result<Vec<(RawFd, FdClass)>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        match class_of(&link) {
            FdClass::Other => {}
            class => fds.push((fd, class)),
        }
    }
    fds.sort_unstable_by_key(|&(fd, _)| fd);
    Ok(fds)
}

/// The fds a thread may write (`write`) and, on the main thread, `writev` (its taps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFds {
    pub write: Vec<RawFd>,
    pub writev: Vec<RawFd>,
}

impl WriteFds {
    /// `kind`'s fds, given the open eventfds and taps and what set-up registered for it.
    pub(super) fn for_kind(kind: ThreadKind, open: &[(RawFd, FdClass)], extra: &[RawFd]) -> Self {
        let of = |c: FdClass| open.iter().filter(move |(_, k)| *k == c).map(|(fd, _)| *fd);
        let mut write = vec![libc::STDERR_FILENO];
        if matches!(kind, ThreadKind::Main | ThreadKind::Vcpu) {
            write.push(libc::STDOUT_FILENO);
        }
        write.extend(of(FdClass::EventFd));
        let writev: Vec<RawFd> = if kind == ThreadKind::Main {
            of(FdClass::Tap).collect()
        } else {
            Vec::new()
        };
        write.extend(&writev);
        write.extend(extra);
        write.sort_unstable();
        write.dedup();
        WriteFds { write, writev }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn eventfds_and_taps_are_found_and_nothing_else() {
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let file = std::fs::File::open("/proc/self/statm").unwrap();
        let tun = std::fs::File::open("/dev/net/tun").ok();
        let open = open_fds().unwrap();
        assert!(
            open.contains(&(evt.as_raw_fd(), FdClass::EventFd)),
            "{open:?}"
        );
        assert!(!open.iter().any(|(fd, _)| *fd == file.as_raw_fd()));
        if let Some(t) = &tun {
            assert!(open.contains(&(t.as_raw_fd(), FdClass::Tap)), "{open:?}");
        }
        // Once closed, it is gone from the next scan.
        let fd = evt.as_raw_fd();
        drop(evt);
        assert!(!open_fds().unwrap().iter().any(|(f, _)| *f == fd));
    }

    #[test]
    fn each_kind_gets_its_fds() {
        let open = [
            (5, FdClass::EventFd),
            (6, FdClass::Tap),
            (7, FdClass::EventFd),
        ];
        let main = WriteFds::for_kind(ThreadKind::Main, &open, &[9]);
        assert_eq!(main.write, vec![1, 2, 5, 6, 7, 9]);
        assert_eq!(main.writev, vec![6]);
        let vcpu = WriteFds::for_kind(ThreadKind::Vcpu, &open, &[]);
        assert_eq!(vcpu.write, vec![1, 2, 5, 7]);
        assert!(vcpu.writev.is_empty());
        for kind in [ThreadKind::Device, ThreadKind::Worker] {
            let w = WriteFds::for_kind(kind, &open, &[]);
            assert_eq!(w.write, vec![2, 5, 7], "{kind:?}");
            assert!(w.writev.is_empty());
        }
    }
}
