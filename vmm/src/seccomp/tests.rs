use super::*;

const KINDS: [ThreadKind; 4] = [
    ThreadKind::Main,
    ThreadKind::Vcpu,
    ThreadKind::Worker,
    ThreadKind::Device,
];

#[test]
fn every_filter_compiles_for_x86_64_in_every_mode() {
    for kind in KINDS {
        for mode in [SeccompMode::Trap, SeccompMode::Kill, SeccompMode::Log] {
            let p = program(kind, mode, &many_fds())
                .unwrap()
                .expect("a program");
            assert!(
                !p.is_empty() && p.len() < 4096,
                "{kind:?} {mode}: {}",
                p.len()
            );
        }
        assert!(program(kind, SeccompMode::Off, &many_fds())
            .unwrap()
            .is_none());
    }
}

/// As many fds as a large VM writes: 8 devices with 8 queues each, taps, files.
fn many_fds() -> WriteFds {
    WriteFds {
        write: (1..160).collect(),
        writev: (100..108).collect(),
    }
}

#[test]
fn threads_get_only_what_they_need() {
    let fds = many_fds();
    let main = rules(ThreadKind::Main, &fds).unwrap();
    let vcpu = rules(ThreadKind::Vcpu, &fds).unwrap();
    let worker = rules(ThreadKind::Worker, &fds).unwrap();
    let device = rules(ThreadKind::Device, &fds).unwrap();
    for r in [&main, &vcpu, &worker, &device] {
        for nr in [
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_getppid,
        ] {
            assert!(!r.contains_key(&nr), "{} allowed", syscall_name(nr));
        }
    }
    // Disk I/O on the blk device threads only; io_uring submissions too (rings are set up
    // before any filter).
    for nr in [
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_io_uring_enter,
    ] {
        assert!(device.contains_key(&nr), "{}", syscall_name(nr));
        for r in [&main, &vcpu, &worker] {
            assert!(!r.contains_key(&nr), "{} allowed", syscall_name(nr));
        }
    }
    // virtio-net's writev and readv on the tap are the main thread's alone, as is send (the
    // metrics socket).
    for nr in [libc::SYS_writev, libc::SYS_readv, libc::SYS_sendto] {
        assert!(main.contains_key(&nr));
        for r in [&vcpu, &worker, &device] {
            assert!(!r.contains_key(&nr), "{} allowed", syscall_name(nr));
        }
    }
    assert!(!device.contains_key(&libc::SYS_ioctl));
    for r in [&main, &vcpu, &worker, &device] {
        assert!(!r.contains_key(&libc::SYS_io_uring_setup));
        assert!(!r.contains_key(&libc::SYS_io_uring_register));
    }
    assert!(!worker.contains_key(&libc::SYS_ioctl));
    assert!(!worker.contains_key(&libc::SYS_read));
}

#[test]
fn ioctl_numbers() {
    assert_eq!(KVM_RUN(), 0xae80);
    assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
    assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
    assert_eq!(KVM_TRANSLATE(), 0xc018_ae85);
    assert_eq!(devices::virtio::TUNSETOFFLOAD, 0x4004_54d0);
    assert_eq!(devices::virtio::TUNSETQUEUE, 0x4004_54d9);
}

/// TUNSETQUEUE on a bad fd (EBADF: past the filter), then a forbidden call.
fn tunsetqueue_then_getppid() {
    let req = [0u8; 40];
    // SAFETY: the request reads a 40-byte `struct ifreq`, which `req` is; fd -1 fails with
    // EBADF before anything is read.
    unsafe { libc::ioctl(-1, devices::virtio::TUNSETQUEUE, req.as_ptr()) };
    passed();
    // SAFETY: no arguments, no side effects.
    unsafe { libc::getppid() };
}

/// virtio-net multiqueue attaches and detaches tap queues at VQ_PAIRS_SET (event loop) and at
/// a reset (vCPU thread, an MMIO exit): there only.
#[test]
fn tunsetqueue_on_the_event_loop_and_vcpus_only() {
    for kind in KINDS {
        let (status, err) = in_child(kind, SeccompMode::Trap, tunsetqueue_then_getppid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        if matches!(kind, ThreadKind::Main | ThreadKind::Vcpu) {
            assert!(err.starts_with(PASSED), "{kind:?}: {err:?}");
            assert!(err.contains("(getppid)"), "{kind:?}: {err:?}");
        } else {
            assert!(!err.starts_with(PASSED), "{kind:?}: {err:?}");
            assert!(err.contains("(ioctl)"), "{kind:?}: {err:?}");
        }
    }
}

#[test]
fn names() {
    assert_eq!(syscall_name(libc::SYS_read), "read");
    assert_eq!(syscall_name(libc::SYS_socket), "socket");
    assert_eq!(syscall_name(libc::SYS_getppid), "getppid");
    assert_eq!(syscall_name(libc::SYS_getrandom), "getrandom");
    assert_eq!(syscall_name(libc::SYS_statx), "statx");
    assert_eq!(syscall_name(libc::SYS_rseq), "rseq");
    assert_eq!(
        syscall_name(libc::SYS_pidfd_send_signal),
        "pidfd_send_signal"
    );
    assert_eq!(syscall_name(libc::SYS_clone3), "clone3");
    assert_eq!(syscall_name(libc::SYS_futex_waitv), "futex_waitv");
    assert_eq!(syscall_name(400), "unknown");
    assert_eq!(syscall_name(-1), "unknown");
    assert_eq!(NAMES_0.split_ascii_whitespace().count(), 335);
}

#[test]
fn report_line() {
    let mut label = [0u8; LABEL_LEN];
    label[..5].copy_from_slice(b"vcpu1");
    let l = report(41, &label);
    assert_eq!(
        std::str::from_utf8(&l.buf[..l.len]).unwrap(),
        "microvm: seccomp: thread vcpu1 made a forbidden system call 41 (socket); \
         exiting with status 148\n"
    );
    let l = report(-7, &[0; LABEL_LEN]);
    let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
    assert!(
        s.contains("thread ? made a forbidden system call -7 (unknown)"),
        "{s}"
    );
}

/// How a forked child that installed `kind`'s filter and called getppid ended, and what
/// it wrote to stderr.
fn violate_in_child(kind: ThreadKind, mode: SeccompMode) -> (libc::c_int, String) {
    fn getppid() {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::getppid() };
    }
    in_child(kind, mode, getppid)
}

/// How a forked child that installed `kind`'s filter and then ran `calls` ended, and what
/// it wrote to stderr. `calls` may only make raw system calls (the child of a
/// multi-threaded process must not allocate or lock).
fn in_child(kind: ThreadKind, mode: SeccompMode, calls: fn()) -> (libc::c_int, String) {
    in_child_with(&Filters::new(mode, None).unwrap(), kind, calls)
}

/// [`in_child`] with `filters` (and what was registered with it), compiled now, in the parent,
/// as a thread entering its filter would: the child keeps the parent's fds.
fn in_child_with(filters: &Filters, kind: ThreadKind, calls: fn()) -> (libc::c_int, String) {
    let mode = filters.mode;
    // Everything that allocates happens before fork: the child of a multi-threaded test
    // process may only make async-signal-safe calls.
    let prog = filters.program_now(kind).unwrap().unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only calls dup2, install_sigsys_handler (sigaction), a TLS store,
    // apply_filter (prctl, seccomp), `calls` (raw system calls) and _exit: no allocation, no
    // locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: as above; the child never returns into the test harness.
        unsafe {
            libc::dup2(fds[1], 2);
            if mode == SeccompMode::Trap && install_sigsys_handler().is_err() {
                libc::_exit(90);
            }
            set_thread_label("test-thread");
            if seccompiler::apply_filter(&prog).is_err() {
                libc::_exit(91);
            }
            calls();
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end, so the read below sees EOF.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reads into a stack buffer of the given size.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: our read end.
    unsafe { libc::close(fds[0]) };
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn a_forbidden_call_is_reported_and_exits_148() {
    for kind in KINDS {
        let (status, err) = violate_in_child(kind, SeccompMode::Trap);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        assert_eq!(
            err,
            format!(
                "microvm: seccomp: thread test-thread made a forbidden system call {} \
                 (getppid); exiting with status 148\n",
                libc::SYS_getppid
            ),
            "{kind:?}"
        );
    }
}

#[test]
fn kill_mode_kills_and_log_mode_lets_the_call_through() {
    for kind in KINDS {
        let (status, err) = violate_in_child(kind, SeccompMode::Kill);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        let (status, err) = violate_in_child(kind, SeccompMode::Log);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
    }
}

/// A fresh anonymous page (in the child: raw mmap), or exit 93.
fn page() -> *mut libc::c_void {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(93) };
    }
    p
}

/// glibc's madvise and mremap calls pass (exit 94 otherwise), then MADV_MERGEABLE (KSM)
/// must trap.
fn glibc_memory_calls_then_madvise_mergeable() {
    let p = page();
    // SAFETY: advice and remapping of the child's own fresh page.
    unsafe {
        if libc::madvise(p, 4096, libc::MADV_DONTNEED) != 0
            || libc::madvise(p, 4096, libc::MADV_HUGEPAGE) != 0 && errno() != libc::EINVAL
        {
            libc::_exit(94);
        }
        let q = libc::mremap(p, 4096, 8192, libc::MREMAP_MAYMOVE);
        if q == libc::MAP_FAILED {
            libc::_exit(94);
        }
        passed();
        libc::madvise(q, 4096, libc::MADV_MERGEABLE);
    }
}

/// mremap leaving the old mapping in place must trap.
fn mremap_dontunmap() {
    let p = page();
    passed();
    // SAFETY: remaps the child's own fresh page; the child exits right after.
    unsafe {
        libc::mremap(p, 4096, 4096, libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP);
    }
}

const PASSED: &str = "allowed calls passed\n";

/// Tells the parent that the calls before the forbidden one went through.
fn passed() {
    // SAFETY: writes a static string to stderr (the parent's pipe).
    unsafe { libc::write(2, PASSED.as_ptr().cast(), PASSED.len()) };
}

fn errno() -> libc::c_int {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

#[test]
fn memory_advice_and_remapping_only_as_glibc_uses_them() {
    for kind in KINDS {
        for (calls, name) in [
            (glibc_memory_calls_then_madvise_mergeable as fn(), "madvise"),
            (mremap_dontunmap, "mremap"),
        ] {
            let (status, err) = in_child(kind, SeccompMode::Trap, calls);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
                "{kind:?} {name}: status {status:#x}, stderr {err:?}"
            );
            assert!(err.starts_with(PASSED), "{kind:?} {name}: {err:?}");
            assert!(err.contains(&format!("({name})")), "{kind:?}: {err:?}");
        }
    }
}

/// io_uring_enter (on a bad fd: EBADF, enough to pass the filter), then io_uring_setup, which
/// no thread may make. Only a blk device thread passes the first.
fn uring_enter_then_setup() {
    // SAFETY: io_uring_enter on fd -1 touches no memory and fails with EBADF.
    unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0usize, 0) };
    passed();
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the 120-byte params struct, which lives across
    // the call; the child exits right after.
    unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
}

#[test]
fn io_uring_enter_only_on_device_threads_and_setup_nowhere() {
    for kind in KINDS {
        let (status, err) = in_child(kind, SeccompMode::Trap, uring_enter_then_setup);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        if kind == ThreadKind::Device {
            assert!(err.starts_with(PASSED), "{err:?}");
            assert!(err.contains("(io_uring_setup)"), "{err:?}");
        } else {
            assert!(!err.starts_with(PASSED), "{kind:?}: {err:?}");
            assert!(err.contains("(io_uring_enter)"), "{kind:?}: {err:?}");
        }
    }
}

/// The fds `metrics_calls` uses, opened before the fork.
static METRICS_FDS: [std::sync::atomic::AtomicI32; 4] = [
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
];

/// What `--metrics` and `--metrics-socket` do on the main thread after its filter is on: read
/// the timerfd, seek and read /proc/self/statm, write a line to the metrics file, accept4 (non-blocking,
/// nobody connecting: EAGAIN); then a forbidden call (getppid).
fn metrics_calls() {
    use std::sync::atomic::Ordering::Relaxed;
    let [timer, statm, file, listener] = [0, 1, 2, 3].map(|i| METRICS_FDS[i].load(Relaxed));
    let mut buf = [0u8; 128];
    // SAFETY: raw reads and writes on fds the parent opened, into and from stack buffers.
    unsafe {
        if libc::read(timer, buf.as_mut_ptr().cast(), 8) != 8 {
            libc::_exit(92);
        }
        if libc::lseek(statm, 0, libc::SEEK_SET) != 0
            || libc::read(statm, buf.as_mut_ptr().cast(), buf.len()) <= 0
        {
            libc::_exit(93);
        }
        if libc::write(file, b"{}\n".as_ptr().cast(), 3) != 3 {
            libc::_exit(94);
        }
        let fd = libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            crate::prometheus::ACCEPT_FLAGS,
        );
        if fd != -1 || errno() != libc::EAGAIN {
            libc::_exit(95);
        }
    }
    passed();
    // SAFETY: no arguments, no side effects; forbidden, ends the child.
    unsafe { libc::getppid() };
}

#[test]
fn the_main_filter_allows_what_metrics_lines_need() {
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering::Relaxed;
    let mut timer = vmm_sys_util::timerfd::TimerFd::new().unwrap();
    timer
        .reset(std::time::Duration::from_millis(1), None)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let path = std::env::temp_dir().join(format!("seccomp-metrics-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let statm = std::fs::File::open("/proc/self/statm").unwrap();
    METRICS_FDS[0].store(std::os::fd::AsRawFd::as_raw_fd(&timer), Relaxed);
    METRICS_FDS[1].store(statm.into_raw_fd(), Relaxed);
    METRICS_FDS[2].store(file.into_raw_fd(), Relaxed);
    let sock = path.with_extension("sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    METRICS_FDS[3].store(listener.into_raw_fd(), Relaxed);
    let filters = Filters::new(SeccompMode::Trap, None).unwrap();
    filters.allow_write(&[ThreadKind::Main], METRICS_FDS[2].load(Relaxed));
    let (status, err) = in_child_with(&filters, ThreadKind::Main, metrics_calls);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
        "status {status:#x}, stderr {err:?}"
    );
    assert!(err.starts_with(PASSED), "{err:?}");
    assert!(err.contains("(getppid)"), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&sock).unwrap();
}

/// A timerfd made before the filter (as rate limiters make theirs at set-up).
static TIMERFD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn timerfd_relative_then_absolute() {
    let fd = TIMERFD.load(std::sync::atomic::Ordering::SeqCst);
    let mut spec: libc::itimerspec = zeroed_itimerspec();
    spec.it_value.tv_nsec = 1_000_000;
    // SAFETY: a valid itimerspec; no old value asked.
    let r = unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a stack buffer (EAGAIN: not expired yet).
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
    if r == 0 {
        passed();
    }
    // SAFETY: as above, with TFD_TIMER_ABSTIME, which no filter allows.
    unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
}

fn zeroed_itimerspec() -> libc::itimerspec {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    libc::itimerspec {
        it_interval: zero,
        it_value: zero,
    }
}

#[test]
fn timerfd_settime_only_relative_and_only_on_the_event_loop() {
    // SAFETY: no pointers; checked below.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
    assert!(fd >= 0);
    TIMERFD.store(fd, std::sync::atomic::Ordering::SeqCst);
    let (status, err) = in_child(
        ThreadKind::Main,
        SeccompMode::Trap,
        timerfd_relative_then_absolute,
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
        "status {status:#x}, stderr {err:?}"
    );
    assert!(err.starts_with(PASSED), "{err:?}");
    assert!(err.contains("(timerfd_settime)"), "{err:?}");
    // blk threads arm their limiter's timer too (checked by the same rule: flags 0).
    for kind in [ThreadKind::Vcpu, ThreadKind::Worker] {
        let (status, err) = in_child(kind, SeccompMode::Trap, timerfd_relative_then_absolute);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        assert!(!err.starts_with(PASSED), "{kind:?}: {err:?}");
        assert!(err.contains("(timerfd_settime)"), "{kind:?}: {err:?}");
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}

/// Fds the parent opens for the write tests: [eventfd, regular file, tap (or -1)].
static WRITE_FDS: [std::sync::atomic::AtomicI32; 3] = [
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
];

fn write_fd(i: usize) -> libc::c_int {
    WRITE_FDS[i].load(std::sync::atomic::Ordering::SeqCst)
}

/// An iovec over one live static byte.
fn one_byte() -> libc::iovec {
    static B: [u8; 1] = [0];
    libc::iovec {
        iov_base: B.as_ptr().cast_mut().cast(),
        iov_len: 1,
    }
}

/// Zero-byte writes to stdout and stderr (the filter decides before the call does anything),
/// a wake of the eventfd, then a write to the regular file: only a registered file may be.
fn write_eventfd_then_file() {
    let one = 1u64;
    // SAFETY: raw writes from live stack values; zero bytes write nothing.
    unsafe {
        libc::write(2, std::ptr::null(), 0);
        if libc::write(write_fd(0), (&one as *const u64).cast(), 8) != 8 {
            libc::_exit(96);
        }
    }
    passed();
    // SAFETY: as above.
    unsafe {
        libc::write(1, std::ptr::null(), 0);
        libc::write(write_fd(1), b"x".as_ptr().cast(), 1);
    }
    // SAFETY: no arguments, no side effects.
    unsafe { libc::getppid() };
}

/// Opens the eventfd, a regular file and (if this host has /dev/net/tun) a tun fd for the
/// children; returns the file's path and the fds to close.
/// Held by each test that sets [`WRITE_FDS`] until its children are done: the tests of one
/// `cargo test` process run in parallel threads and would otherwise swap each other's fds
/// (seen: one test's child writing into the other's file).
static WRITE_FDS_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_write_fds(name: &str) -> (std::path::PathBuf, Vec<std::os::fd::OwnedFd>) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::sync::atomic::Ordering::SeqCst;
    let evt = vmm_sys_util::eventfd::EventFd::new(0)
        .unwrap()
        .into_raw_fd();
    // SAFETY: the eventfd's fd, released by `into_raw_fd`, owned by nobody else.
    let evt = unsafe { OwnedFd::from_raw_fd(evt) };
    let path = std::env::temp_dir().join(format!("seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Appending: the children share the parent's file offset.
    let file: OwnedFd = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap()
        .into();
    let tun: Option<OwnedFd> = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .ok()
        .map(Into::into);
    WRITE_FDS[0].store(evt.as_raw_fd(), SeqCst);
    WRITE_FDS[1].store(file.as_raw_fd(), SeqCst);
    WRITE_FDS[2].store(tun.as_ref().map_or(-1, |t| t.as_raw_fd()), SeqCst);
    (
        path,
        [Some(evt), Some(file), tun].into_iter().flatten().collect(),
    )
}

#[test]
fn write_only_to_eventfds_the_console_and_registered_files() {
    let _user = WRITE_FDS_USER.lock().unwrap_or_else(|e| e.into_inner());
    let (path, _fds) = open_write_fds("write");
    for kind in KINDS {
        let (status, err) = in_child(kind, SeccompMode::Trap, write_eventfd_then_file);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        // Trapped at stdout (device threads, the worker) or at the file (the others).
        assert!(err.starts_with(PASSED), "{kind:?}: {err:?}");
        assert!(err.contains("(write)"), "{kind:?}: {err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"", "{kind:?}");
        // Registered for this kind, the file is writable; the next call is the forbidden one.
        let filters = Filters::new(SeccompMode::Trap, None).unwrap();
        filters.allow_write(&[kind], write_fd(1));
        let (status, err) = in_child_with(&filters, kind, write_eventfd_then_file);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        // stdout is the console's: the vCPUs' (the UART) and the main thread's.
        let stdout_ok = matches!(kind, ThreadKind::Main | ThreadKind::Vcpu);
        let expect = if stdout_ok { "(getppid)" } else { "(write)" };
        assert!(err.contains(expect), "{kind:?}: {err:?}");
        let written: &[u8] = if stdout_ok { b"x" } else { b"" };
        assert_eq!(std::fs::read(&path).unwrap(), written, "{kind:?}");
        std::fs::write(&path, b"").unwrap();
    }
    std::fs::remove_file(&path).unwrap();
}

/// readv of one byte on a bad fd (EBADF: past the filter), then writev on the tun fd, then
/// writev on the regular file.
fn readv_then_writev() {
    let iov = one_byte();
    // SAFETY: one iovec over a live static byte; fd -1 fails with EBADF.
    unsafe { libc::readv(-1, &iov, 1) };
    // SAFETY: as above; an unattached tun fd refuses the frame (EBADFD).
    unsafe { libc::writev(write_fd(2), &iov, 1) };
    passed();
    // SAFETY: as above; a regular file of ours.
    unsafe { libc::writev(write_fd(1), &iov, 1) };
}

#[test]
fn writev_only_to_taps_and_readv_only_on_the_event_loop() {
    let _user = WRITE_FDS_USER.lock().unwrap_or_else(|e| e.into_inner());
    let (path, _fds) = open_write_fds("writev");
    assert!(
        write_fd(2) >= 0,
        "/dev/net/tun cannot be opened here: the tap case is not tested"
    );
    for kind in KINDS {
        let (status, err) = in_child(kind, SeccompMode::Trap, readv_then_writev);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == VIOLATION_EXIT_CODE,
            "{kind:?}: status {status:#x}, stderr {err:?}"
        );
        if kind == ThreadKind::Main {
            assert!(err.starts_with(PASSED), "{err:?}");
            assert!(err.contains("(writev)"), "{err:?}");
        } else {
            assert!(!err.starts_with(PASSED), "{kind:?}: {err:?}");
            assert!(err.contains("(readv)"), "{kind:?}: {err:?}");
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    std::fs::remove_file(&path).unwrap();
}
