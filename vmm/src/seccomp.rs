//! Seccomp filters: one per kind of thread, installed by each thread on itself before it
//! handles anything the guest controls.
//!
//! - main thread (event loop), installed after set-up, before the event loop: epoll; read on
//!   the fds it already holds (eventfds, stdin, taps, the signalfd, the metrics timerfd);
//!   re-reading /proc/self/smaps and /proc/self/statm (seek, read) through fds opened at
//!   set-up; `accept4` (non-blocking) on the `--metrics-socket` listener and `send` on its
//!   connections; `writev` on the taps; `timerfd_settime`
//!   (relative, flags 0) for virtio-net's rate limiters; `ioctl` `TUNSETQUEUE` (virtio-net
//!   multiqueue's VQ_PAIRS_SET); terminal `ioctl`s at exit; `tgkill` of
//!   its own threads with the vCPU kick signal.
//! - `blkN` (one thread per virtio-blk device, with its own event loop), installed before its
//!   loop starts: epoll; read (eventfds); pread/pwrite/fdatasync/fallocate on the image;
//!   `fcntl(F_DUPFD_CLOEXEC)`; `timerfd_settime` (relative) for its rate limiter;
//!   `io_uring_enter` for the io_uring engine (rings are set up, and their eventfds
//!   registered, before any filter: no thread may `io_uring_setup` or `io_uring_register`).
//! - `vcpuN`, installed first thing on the thread: `ioctl` `KVM_RUN`, `KVM_GET_REGS`,
//!   `KVM_GET_SREGS`, `KVM_TRANSLATE`, `TUNSETOFFLOAD` and `TUNSETQUEUE` (virtio-net feature
//!   negotiation and reset run on MMIO exits).
//! - `swiotlb-worker`, installed first thing on the thread (through `bounce`'s start hook):
//!   nothing more, it only allocates, maps pools, sleeps and waits.
//!
//! Every thread also gets a common set: memory (never executable; `madvise` and `mremap` only
//! as glibc's malloc and thread exit use them), locks, clocks, sleeps, `write` to the fds its
//! kind writes ([`fds`]: eventfds, stderr, and per kind stdout, taps, the metrics file and the
//! DMA trace), `getrandom`, and what panics, signals and thread exit need. The filters are
//! compiled when a thread enters its own, since the fds it may write exist only then.
//!
//! No thread may open files, create sockets or threads, or exec: everything is opened during
//! set-up. A forbidden call traps into [`SIGSYS`](install_sigsys_handler), which writes one line
//! naming the call and the thread and exits with [`VIOLATION_EXIT_CODE`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

mod fds;
pub use fds::WriteFds;

/// Exit status after a forbidden system call (Firecracker's).
pub const VIOLATION_EXIT_CODE: i32 = 148;

/// What a forbidden system call does (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// SIGSYS: one line on stderr naming the call and the thread, exit status 148.
    #[default]
    Trap,
    /// The kernel kills the process at once (SIGSYS, no message).
    Kill,
    /// Allowed, and logged by the kernel (audit log / dmesg): for finding missing calls.
    Log,
    /// No filters.
    Off,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Trap => "trap",
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The kinds of thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ThreadKind {
    Main,
    Vcpu,
    Worker,
    /// A virtio-blk device thread.
    Device,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, BackendError),
    #[error("cannot install the seccomp filter on thread {0}: {1}")]
    Apply(String, seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error(
        "cannot list the open fds (/proc/self/fd) that the {0:?} thread may write: {1}; \
         mount /proc, or run without filters (--seccomp=off)"
    )]
    Fds(ThreadKind, std::io::Error),
}

// KVM vCPU ioctls (<linux/kvm.h>); kvm-ioctls keeps its numbers private.
vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_SREGS,
    kvm_bindings::KVMIO,
    0x83,
    kvm_bindings::kvm_sregs
);
vmm_sys_util::ioctl_iowr_nr!(
    KVM_TRANSLATE,
    kvm_bindings::KVMIO,
    0x85,
    kvm_bindings::kvm_translation
);

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Adds `nr`, allowed when any of `rules` matches (always, when `rules` is empty). Each call
/// is listed once: a second entry would silently change the first's meaning.
fn add(rules: &mut Rules, nr: i64, list: Vec<SeccompRule>) {
    let old = rules.insert(nr, list);
    assert!(old.is_none(), "syscall {nr} listed twice");
}

fn always(rules: &mut Rules, nrs: &[i64]) {
    for &nr in nrs {
        add(rules, nr, Vec::new());
    }
}

/// Argument `arg` (32 bits, as ioctl requests, prots, signals and fcntl commands are) equals
/// `value`.
fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// Allowed only on the fds in `fds` (argument 0); not at all when `fds` is empty.
fn on_fds(rules: &mut Rules, nr: i64, fds: &[RawFd]) -> Result<(), BackendError> {
    if fds.is_empty() {
        return Ok(());
    }
    let values: Vec<u64> = fds.iter().map(|&fd| fd as u32 as u64).collect();
    one_of(rules, nr, 0, &values)
}

/// Allowed only when argument `arg` is one of `values` (ioctl requests are `c_ulong`: u64 on
/// x86_64, the only target of these filters).
fn one_of(rules: &mut Rules, nr: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
    let list = values
        .iter()
        .map(|&v| arg_eq(arg, v))
        .collect::<Result<_, _>>()?;
    add(rules, nr, list);
    Ok(())
}

/// What every thread does: allocate, lock, sleep, read the clock, log, signal, end.
fn common(rules: &mut Rules, fds: &WriteFds) -> Result<(), BackendError> {
    always(
        rules,
        &[
            // malloc (brk for the main arena, which other threads can fall back to; mmap and
            // munmap for large blocks and per-thread arenas; mremap and madvise below), bounce
            // pools (mmap/munmap), thread exit (munmap of the signal stack).
            libc::SYS_brk,
            libc::SYS_munmap,
            // std and parking_lot locks, condvars and channels; parking_lot's spin-wait and the
            // bounce pools' area spinlock yield.
            libc::SYS_futex,
            libc::SYS_sched_yield,
            // Instant/SystemTime (the vDSO falls back to the syscall when the clocksource has no
            // vDSO support, as in some nested VMs); thread::sleep (glibc's nanosleep is
            // clock_nanosleep; conversion latency injection, the worker's waits).
            libc::SYS_clock_gettime,
            libc::SYS_gettimeofday,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            // A sleep or timed wait resumed after SIGSTOP/SIGCONT (a debugger, ^Z).
            libc::SYS_restart_syscall,
            // std's HashMap seeds its hasher per thread, on first use.
            libc::SYS_getrandom,
            // Returning from std's SIGSEGV/SIGBUS guard-page handler (it restores SIG_DFL and
            // returns to re-fault).
            libc::SYS_rt_sigreturn,
            // abort() (panic = "abort", std's fatal errors) blocks signals and raises SIGABRT
            // with tgkill(getpid(), tid).
            libc::SYS_rt_sigprocmask,
            libc::SYS_getpid,
            libc::SYS_gettid,
            // Thread exit (std removes its signal stack) and process exit.
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    // Logs, eventfd and irqfd signals, and per kind the console, taps, metrics and trace.
    on_fds(rules, libc::SYS_write, &fds.write)?;
    // Never executable memory.
    let no_exec = || {
        SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])
    };
    add(rules, libc::SYS_mmap, vec![no_exec()?]);
    add(rules, libc::SYS_mprotect, vec![no_exec()?]);
    // madvise only with the advice glibc gives (std and the crates here call none themselves):
    // MADV_DONTNEED when free() shrinks a thread arena's heap (shrink_heap) or malloc_trim
    // runs, and when a thread exits (the unused part of its stack, advise_stack_range);
    // MADV_HUGEPAGE from malloc under the glibc.malloc.hugetlb=1 tunable. Not the advice that
    // acts beyond this process's view of its pages (MADV_HWPOISON and MADV_SOFT_OFFLINE as
    // root, MADV_MERGEABLE, MADV_REMOVE on shared guest memory, MADV_PAGEOUT, ...).
    one_of(
        rules,
        libc::SYS_madvise,
        2,
        &[libc::MADV_DONTNEED as u64, libc::MADV_HUGEPAGE as u64],
    )?;
    // mremap only as glibc's realloc of an mmapped block does (MREMAP_MAYMOVE), or in place:
    // never onto a chosen address (MREMAP_FIXED) nor leaving the old mapping (DONTUNMAP).
    one_of(
        rules,
        libc::SYS_mremap,
        3,
        &[0, libc::MREMAP_MAYMOVE as u64],
    )?;
    one_of(
        rules,
        libc::SYS_rt_sigaction,
        0,
        // std's guard-page handler restores the default action; abort() does for SIGABRT.
        &[
            libc::SIGSEGV as u64,
            libc::SIGBUS as u64,
            libc::SIGABRT as u64,
        ],
    )?;
    Ok(())
}

/// tgkill only to threads of this process, only with `signals`.
fn tgkill(rules: &mut Rules, signals: &[i32]) -> Result<(), BackendError> {
    let pid = u64::from(std::process::id());
    let list = signals
        .iter()
        .map(|&sig| {
            SeccompRule::new(vec![
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid)?,
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, sig as u64)?,
            ])
        })
        .collect::<Result<_, _>>()?;
    add(rules, libc::SYS_tgkill, list);
    Ok(())
}

/// Every thread may also `fcntl(F_GETFD)`: debug builds of std check that an fd is open before
/// closing it (`OwnedFd::drop`), so a `cargo run` build would otherwise trap on its first close.
fn rules(kind: ThreadKind, fds: &WriteFds) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    common(&mut r, fds)?;
    // abort() raises SIGABRT on its own thread; the main thread also kicks vCPUs out of
    // KVM_RUN when the VM ends.
    let signals = match kind {
        ThreadKind::Main => vec![libc::SIGABRT, crate::vcpu::kick_signal()],
        ThreadKind::Vcpu | ThreadKind::Worker | ThreadKind::Device => vec![libc::SIGABRT],
    };
    tgkill(&mut r, &signals)?;
    match kind {
        ThreadKind::Main => {
            always(
                &mut r,
                &[
                    // The event loop (event-manager: epoll_wait; epoll_pwait where glibc maps
                    // it so), and devices changing what they poll (the tap while rx is starved).
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    // eventfds, the SIGUSR1 signalfd, stdin, the tap, /proc/self/smaps.
                    libc::SYS_read,
                    // virtio-net: RX frames scattered from the tap into their mapped buffers.
                    libc::SYS_readv,
                    // fds at exit (a disk whose thread has ended is dropped here too).
                    libc::SYS_close,
                    // Re-reading /proc/self/smaps at exit: seek to 0, std sizes the read by
                    // fstat/statx and its position.
                    libc::SYS_lseek,
                    // How much of guest RAM is resident, at exit (metrics.rs).
                    libc::SYS_mincore,
                    libc::SYS_fstat,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                ],
            );
            // virtio-net: TX frames gathered from their mapped buffers onto the tap.
            on_fds(&mut r, libc::SYS_writev, &fds.writev)?;
            rate_limiter_timers(&mut r)?;
            // --metrics-socket: a connection, non-blocking (crate::prometheus::ACCEPT_FLAGS),
            // answered with send (sendto without an address), since `write` is not allowed on
            // fds accepted after the filter; on any other fd than a socket it fails.
            one_of(&mut r, libc::SYS_sendto, 3, &[libc::MSG_NOSIGNAL as u64])?;
            one_of(
                &mut r,
                libc::SYS_accept4,
                3,
                &[crate::prometheus::ACCEPT_FLAGS as u64],
            )?;
            // Restoring the terminal at exit (isatty, tcgetattr, tcsetattr TCSANOW);
            // virtio-net attaching/detaching tap queues at VQ_PAIRS_SET (multiqueue).
            one_of(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[libc::TCGETS, libc::TCSETS, devices::virtio::TUNSETQUEUE],
            )?;
        }
        ThreadKind::Vcpu => {
            one_of(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[
                    KVM_RUN(),
                    // An exit microvm cannot handle is reported with RIP and instruction bytes.
                    KVM_GET_REGS(),
                    // A triple fault is reported with the vCPU's control registers too.
                    KVM_GET_SREGS(),
                    KVM_TRANSLATE(),
                    // virtio-net feature negotiation and reset run on MMIO exits (a reset
                    // detaches a multi-queue tap's queues beyond the first).
                    devices::virtio::TUNSETOFFLOAD,
                    devices::virtio::TUNSETQUEUE,
                ],
            )?;
            // The vCPU fd and its kvm_run mapping are dropped when the thread ends.
            always(&mut r, &[libc::SYS_close]);
        }
        ThreadKind::Worker => {}
        ThreadKind::Device => {
            always(
                &mut r,
                &[
                    // Its own event loop: queue eventfds, the engine's eventfd, the stop event.
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_read,
                    // virtio-blk on its image: reads, writes (and the write-zeroes fallback),
                    // flush, discard and write-zeroes.
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_fdatasync,
                    libc::SYS_fallocate,
                    // The io_uring engine submits (one call per batch). Only here: a reset on a
                    // vCPU thread waits for the ring's completions without it.
                    libc::SYS_io_uring_enter,
                    // Dropping the dup'ed image fd of discard/write-zeroes.
                    libc::SYS_close,
                ],
            );
            rate_limiter_timers(&mut r)?;
        }
    }
    // F_GETFD on every thread (above); a disk thread's discard and write-zeroes also
    // duplicate the image fd (File::try_clone).
    let fcntl: &[u64] = if kind == ThreadKind::Device {
        &[libc::F_DUPFD_CLOEXEC as u64, libc::F_GETFD as u64]
    } else {
        &[libc::F_GETFD as u64]
    };
    one_of(&mut r, libc::SYS_fcntl, 1, fcntl)?;
    Ok(r)
}

/// Rate limiters (virtio-net's on the main thread, virtio-blk's on its thread) arm their
/// timerfd, created at set-up, relative to now with flags 0: not TFD_TIMER_ABSTIME nor
/// TFD_TIMER_CANCEL_ON_SET. Its expirations are read with `read`.
fn rate_limiter_timers(r: &mut Rules) -> Result<(), BackendError> {
    one_of(r, libc::SYS_timerfd_settime, 1, &[0])
}

/// The BPF program of `kind`'s filter under `mode` (none for [`SeccompMode::Off`]), writing
/// only to `fds`.
pub fn program(
    kind: ThreadKind,
    mode: SeccompMode,
    fds: &WriteFds,
) -> Result<Option<BpfProgram>, Error> {
    let mismatch = match mode {
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let build = || {
        let filter = SeccompFilter::new(
            rules(kind, fds)?,
            mismatch,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        BpfProgram::try_from(filter)
    };
    build().map(Some).map_err(|e| Error::Build(kind, e))
}

/// The filters of one VM, shared by its threads: each compiles its own when it enters it.
#[derive(Clone)]
pub struct Filters {
    mode: SeccompMode,
    /// Fds registered at set-up (`allow_write`) for some kinds of thread.
    extra: Arc<Mutex<Vec<(ThreadKind, RawFd)>>>,
    /// Test only: the thread of this kind makes a forbidden call once its filter is on.
    selftest: Option<ThreadKind>,
}

impl Filters {
    /// Checks that every filter builds for `mode`, and installs the SIGSYS handler when
    /// trapping.
    pub fn new(mode: SeccompMode, selftest: Option<ThreadKind>) -> Result<Filters, Error> {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Worker,
            ThreadKind::Device,
        ] {
            program(kind, mode, &WriteFds::default())?;
        }
        if mode == SeccompMode::Trap {
            install_sigsys_handler().map_err(Error::Handler)?;
        }
        Ok(Filters {
            mode,
            extra: Arc::default(),
            selftest,
        })
    }

    /// Lets the threads of `kinds` that enter their filter from now on `write` to `fd` (a file
    /// opened at set-up, such as the metrics file).
    pub fn allow_write(&self, kinds: &[ThreadKind], fd: RawFd) {
        let mut extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        extra.extend(kinds.iter().map(|&k| (k, fd)));
    }

    /// The fds a thread of `kind` entering its filter now may write.
    pub fn write_fds(&self, kind: ThreadKind) -> Result<WriteFds, Error> {
        let open = fds::open_fds().map_err(|e| Error::Fds(kind, e))?;
        let extra: Vec<RawFd> = {
            let extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
            extra
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, fd)| *fd)
                .collect()
        };
        Ok(WriteFds::for_kind(kind, &open, &extra))
    }

    /// `kind`'s program for a thread entering its filter now (none without filters).
    fn program_now(&self, kind: ThreadKind) -> Result<Option<BpfProgram>, Error> {
        if self.mode == SeccompMode::Off {
            return Ok(None);
        }
        let fds = self.write_fds(kind)?;
        log::debug!("seccomp: {kind:?} thread may write fds {:?}", fds.write);
        program(kind, self.mode, &fds)
    }

    /// Installs `kind`'s filter on the calling thread, named `label` in violation reports.
    pub fn enter(&self, kind: ThreadKind, label: &str) -> Result<(), Error> {
        set_thread_label(label);
        let prog = self.program_now(kind)?;
        if let Some(prog) = &prog {
            seccompiler::apply_filter(prog).map_err(|e| Error::Apply(label.to_string(), e))?;
            log::debug!("seccomp: {} filter on thread {label}", self.mode);
        }
        if self.selftest == Some(kind) {
            // SAFETY: getppid has no arguments and no side effects; no filter allows it.
            let ppid = unsafe { libc::getppid() };
            log::warn!("seccomp self-test: thread {label} called getppid ({ppid}) and lives on");
        }
        Ok(())
    }
}

/// The calling thread's name for violation reports: fixed-size thread-local storage, so the
/// SIGSYS handler reads it without allocating or locking.
const LABEL_LEN: usize = 24;

thread_local! {
    static LABEL: Cell<[u8; LABEL_LEN]> = const { Cell::new([0; LABEL_LEN]) };
}

fn set_thread_label(label: &str) {
    let mut buf = [0u8; LABEL_LEN];
    let n = label.len().min(LABEL_LEN);
    buf[..n].copy_from_slice(&label.as_bytes()[..n]);
    LABEL.with(|l| l.set(buf));
}

/// `siginfo_t` of a seccomp SIGSYS on x86_64 (the `_sigsys` member of the union at offset 16);
/// the libc crate does not expose it.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// A fixed buffer for composing the report without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Composes the report line for system call `nr` on thread `label` (NUL-padded).
fn report(nr: i64, label: &[u8]) -> Line {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"microvm: seccomp: thread ");
    let label_len = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    line.push(if label_len == 0 {
        b"?"
    } else {
        &label[..label_len]
    });
    line.push(b" made a forbidden system call ");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_num(nr.unsigned_abs());
    line.push(b" (");
    line.push(syscall_name(nr).as_bytes());
    line.push(b"); exiting with status ");
    line.push_num(VIOLATION_EXIT_CODE as u64);
    line.push(b"\n");
    line
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Async-signal-safe only: a thread-local read, stack buffers, write(2), _exit(2).
    // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO); for SIGSYS it has the _sigsys
    // layout of `SigsysInfo`, which fits in siginfo_t's 128 bytes.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let line = if info.code == SYS_SECCOMP {
        report(i64::from(info.syscall), &LABEL.with(|l| l.get()))
    } else {
        let mut l = Line {
            buf: [0; 192],
            len: 0,
        };
        l.push(b"microvm: SIGSYS not raised by seccomp; exiting with status 148\n");
        l
    };
    // SAFETY: writes an initialized stack buffer to stderr, then ends the process; both are
    // async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

/// Installs the process-wide SIGSYS handler that reports a trapped call and exits with
/// [`VIOLATION_EXIT_CODE`].
pub fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); we set a handler with the
    // SA_SIGINFO signature and check the return value.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// x86_64 system call names, numbers 0..=334 (from <asm/unistd_64.h>).
const NAMES_0: &str = "\
    read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction \
    rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select \
    sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep \
    getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg \
    recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt \
    clone fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd \
    msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir \
    fchdir rename mkdir rmdir creat link unlink symlink readlink chmod fchmod chown fchown \
    lchown umask gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog getgid \
    setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid setregid \
    getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid \
    getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend \
    sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority \
    setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler \
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock \
    mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex \
    setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot sethostname \
    setdomainname iopl ioperm create_module init_module delete_module get_kernel_syms \
    query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid \
    readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr \
    llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex \
    sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents \
    io_submit io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old \
    epoll_wait_old remap_file_pages getdents64 set_tid_address restart_syscall semtimedop \
    fadvise64 timer_create timer_settime timer_gettime timer_getoverrun timer_delete \
    clock_settime clock_gettime clock_getres clock_nanosleep exit_group epoll_wait \
    epoll_ctl tgkill utimes vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink \
    mq_timedsend mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key \
    request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch \
    inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat newfstatat \
    unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll unshare \
    set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages \
    utimensat epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime \
    timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 \
    preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark \
    prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg setns \
    getcpu process_vm_readv process_vm_writev kcmp finit_module sched_setattr sched_getattr \
    renameat2 seccomp getrandom memfd_create kexec_file_load bpf execveat userfaultfd \
    membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free \
    statx io_pgetevents rseq";

/// x86_64 system call names from number 424 on.
const NAMES_424: &str = "\
    pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree move_mount \
    fsopen fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd \
    faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset \
    landlock_add_rule landlock_restrict_self memfd_secret process_mrelease futex_waitv \
    set_mempolicy_home_node cachestat fchmodat2 map_shadow_stack futex_wake futex_wait \
    futex_requeue statmount listmount lsm_get_self_attr lsm_set_self_attr lsm_list_modules \
    mseal";

/// The name of x86_64 system call `nr`, or "unknown" (no allocation: safe in a signal handler).
pub fn syscall_name(nr: i64) -> &'static str {
    let (names, index) = if (0..335).contains(&nr) {
        (NAMES_0, nr)
    } else if nr >= 424 {
        (NAMES_424, nr - 424)
    } else {
        return "unknown";
    };
    usize::try_from(index)
        .ok()
        .and_then(|i| names.split_ascii_whitespace().nth(i))
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests;
