//! Does `/dev/kvm` run guest kernel code at hardware speed?
//!
//! Runs a tiny real-mode guest (a `dec ecx; jnz` loop, then `hlt`: ring-0 code, which is what an
//! emulating `/dev/kvm` is slow at) and times it. Hardware virtualization runs it at about 1 ns
//! per instruction; an emulating `/dev/kvm` (a cloud VM without nested virtualization, such as
//! this project's CI machines) takes hundreds of ns per instruction or fails with
//! `KVM_EXIT_INTERNAL_ERROR`. Shared by `microvm` (a warning at start) and the test harness
//! (which path to boot guests on).

use std::fmt;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Above this many ns per guest instruction, `/dev/kvm` is not hardware virtualization.
pub const HARDWARE_MAX_NS_PER_INSN: f64 = 20.0;
/// From this slowdown on (guest ring-0 loop / the same loop on the host, in user mode),
/// `/dev/kvm` emulates ring-0 code instruction by instruction (measured ~1500x: 500-650 ns
/// against ~0.4 ns): Linux guests take minutes or never boot. Nested virtualization on an
/// emulated CPU (QEMU TCG with SVM) is slow in absolute terms (30-500 ns per instruction,
/// depending on the load) but about as slow as its host's own code, and a small guest boots in
/// seconds. A ratio, unlike an absolute figure, holds on a loaded machine.
pub const EMULATED_MIN_SLOWDOWN: f64 = 30.0;

const MEM_SIZE: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
/// `dec ecx` (0x66 0x49 in real mode), `jnz -4`, `hlt`.
const CODE: [u8; 5] = [0x66, 0x49, 0x75, 0xfc, 0xf4];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("cannot map the probe guest's memory: {0}")]
    Memory(std::io::Error),
    #[error("KVM_EXIT_INTERNAL_ERROR (emulation failure)")]
    EmulationFailure,
    #[error("unexpected exit {0} instead of HLT")]
    UnexpectedExit(String),
    #[error("cannot start the probe thread: {0}")]
    Thread(std::io::Error),
    #[error("the probe guest did not finish within {0:?}")]
    Timeout(Duration),
}

/// How fast `/dev/kvm` ran the probe guest, or why it could not.
#[derive(Debug)]
pub struct ProbeResult {
    /// ns per guest instruction, if the guest ran to its `hlt`.
    pub outcome: Result<f64, ProbeError>,
    /// ns per instruction of the same loop run here, in user mode.
    pub host_ns_per_insn: f64,
    /// Wall time of the whole probe (VM creation included).
    pub took: Duration,
}

impl ProbeResult {
    /// True if `/dev/kvm` runs guest kernel code at hardware speed.
    pub fn is_hardware_speed(&self) -> bool {
        matches!(self.outcome, Ok(ns) if ns < HARDWARE_MAX_NS_PER_INSN)
    }

    /// True if `/dev/kvm` failed the probe or emulates ring-0 code.
    pub fn is_emulated(&self) -> bool {
        !matches!(self.slowdown(), Some(x) if x < EMULATED_MIN_SLOWDOWN)
    }

    /// Guest ring-0 time per instruction over the host's, for the same loop.
    pub fn slowdown(&self) -> Option<f64> {
        let ns = self.ns_per_insn()?;
        Some(ns / self.host_ns_per_insn.max(0.01))
    }

    pub fn ns_per_insn(&self) -> Option<f64> {
        self.outcome.as_ref().ok().copied()
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(ns) => write!(
                f,
                "{ns:.1} ns/insn on /dev/kvm, {:.0}x slower than the host's own code",
                self.slowdown().unwrap_or(0.0)
            ),
            Err(e) => write!(f, "/dev/kvm failed: {e}"),
        }
    }
}

/// Runs the probe with `loops` iterations (two instructions each), on its own thread, bounded
/// by `timeout` even if KVM_RUN never returns.
pub fn probe(loops: u64, timeout: Duration) -> ProbeResult {
    start(loops, timeout).finish()
}

/// A probe running on its own thread, so the caller can go on with other work meanwhile.
pub struct PendingProbe {
    start: Instant,
    host_ns_per_insn: f64,
    timeout: Duration,
    rx: Result<mpsc::Receiver<Result<f64, ProbeError>>, ProbeError>,
}

/// Starts the probe (see [`probe`]); [`PendingProbe::finish`] waits for it.
pub fn start(loops: u64, timeout: Duration) -> PendingProbe {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(measure(loops));
        });
    PendingProbe {
        start: Instant::now(),
        host_ns_per_insn: host_ns_per_insn(loops),
        timeout,
        rx: spawned.map(|_| rx).map_err(ProbeError::Thread),
    }
}

impl PendingProbe {
    /// Waits for the result, up to the timeout counted from the start.
    pub fn finish(self) -> ProbeResult {
        let outcome = self.rx.and_then(|rx| {
            let left = self.timeout.saturating_sub(self.start.elapsed());
            rx.recv_timeout(left)
                .unwrap_or(Err(ProbeError::Timeout(self.timeout)))
        });
        ProbeResult {
            outcome,
            host_ns_per_insn: self.host_ns_per_insn,
            took: self.start.elapsed(),
        }
    }
}

/// ns per instruction of the probe's loop (`dec; jnz`) run here, in user mode: the long run
/// minus the short one, as for the guest, and the best of three (the least disturbed).
fn host_ns_per_insn(loops: u64) -> f64 {
    fn run(n: u64) -> Duration {
        let start = Instant::now();
        // SAFETY: a countdown in one register; no memory, no stack, no other state.
        unsafe {
            std::arch::asm!("2:", "dec {0}", "jnz 2b", inout(reg) n.max(1) => _,
                options(nomem, nostack));
        }
        start.elapsed()
    }
    let short = (loops / 8).max(1);
    (0..3)
        .map(|_| {
            let ns = run(loops).saturating_sub(run(short)).as_nanos() as f64;
            ns / (2 * loops.saturating_sub(short).max(1)) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

struct GuestMem {
    ptr: *mut libc::c_void,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<Self, ProbeError> {
        // SAFETY: anonymous private mapping; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Memory(std::io::Error::last_os_error()));
        }
        Ok(GuestMem { ptr, len })
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len,
            "probe code outside its memory"
        );
        // SAFETY: in bounds (asserted above) of a mapping we own.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.ptr as *mut u8).add(offset),
                data.len(),
            )
        };
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The probe guest: one VM with one vCPU in real mode, its code in `mem`.
struct ProbeVm {
    vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
    // Dropped after the VM that maps it (fields drop in order).
    _mem: GuestMem,
}

impl ProbeVm {
    fn new(kvm: &Kvm) -> Result<ProbeVm, ProbeError> {
        let vm = kvm
            .create_vm()
            .map_err(|e| ProbeError::Kvm("KVM_CREATE_VM", e))?;
        let mut mem = GuestMem::new(MEM_SIZE)?;
        mem.write(CODE_ADDR as usize, &CODE);
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
            flags: 0,
        };
        // SAFETY: the region is backed by `mem`, which `ProbeVm` drops after the VM.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| ProbeError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| ProbeError::Kvm("KVM_CREATE_VCPU", e))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| ProbeError::Kvm("KVM_GET_SREGS", e))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| ProbeError::Kvm("KVM_SET_SREGS", e))?;
        Ok(ProbeVm {
            vcpu,
            _vm: vm,
            _mem: mem,
        })
    }

    /// One run of the loop with `loops` iterations; returns how long KVM_RUN took.
    fn run(&mut self, loops: u64) -> Result<Duration, ProbeError> {
        let mut regs = self
            .vcpu
            .get_regs()
            .map_err(|e| ProbeError::Kvm("KVM_GET_REGS", e))?;
        regs.rip = CODE_ADDR;
        regs.rflags = 2;
        regs.rcx = loops;
        self.vcpu
            .set_regs(&regs)
            .map_err(|e| ProbeError::Kvm("KVM_SET_REGS", e))?;
        let start = Instant::now();
        let exit = self.vcpu.run();
        let took = start.elapsed();
        match exit {
            Ok(VcpuExit::Hlt) => Ok(took),
            Ok(VcpuExit::InternalError) => Err(ProbeError::EmulationFailure),
            Ok(other) => Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
            Err(e) => Err(ProbeError::Kvm("KVM_RUN", e)),
        }
    }
}

/// ns per instruction: the difference between a `loops`-iteration run and one 1/8 as long,
/// after a warm-up run (page faults, the first entry), all in one VM. The difference cancels
/// the fixed cost of entering and leaving the guest, which under nested virtualization on an
/// emulated CPU is hundreds of microseconds and would swamp a short loop.
fn measure(loops: u64) -> Result<f64, ProbeError> {
    let kvm = Kvm::new().map_err(ProbeError::Open)?;
    let mut vm = ProbeVm::new(&kvm)?;
    let short = (loops / 8).max(1);
    vm.run(short)?;
    let t_short = vm.run(short)?;
    let t_long = vm.run(loops)?;
    let ns = t_long.saturating_sub(t_short).as_nanos() as f64;
    Ok(ns / (2 * loops.saturating_sub(short).max(1)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Result<f64, ProbeError>) -> ProbeResult {
        ProbeResult {
            outcome,
            host_ns_per_insn: 0.4,
            took: Duration::ZERO,
        }
    }

    #[test]
    fn hardware_nested_and_emulated_kvm_are_told_apart() {
        let hw = result(Ok(1.2));
        assert!(hw.is_hardware_speed() && !hw.is_emulated());
        // Nested on TCG: slow guest code on a host whose own code is slow too.
        let nested = ProbeResult {
            outcome: Ok(300.0),
            host_ns_per_insn: 20.0,
            took: Duration::ZERO,
        };
        assert!(!nested.is_hardware_speed() && !nested.is_emulated());
        let emulated = result(Ok(650.0));
        assert!(!emulated.is_hardware_speed() && emulated.is_emulated());
        let failed = result(Err(ProbeError::EmulationFailure));
        assert!(!failed.is_hardware_speed() && failed.is_emulated());
        assert_eq!(
            failed.to_string(),
            "/dev/kvm failed: KVM_EXIT_INTERNAL_ERROR (emulation failure)"
        );
    }

    /// On any machine with /dev/kvm the probe measures or says why not, within its bound.
    #[test]
    fn measures_or_explains() {
        if !std::path::Path::new("/dev/kvm").exists() {
            let p = probe(100, Duration::from_secs(5));
            assert!(matches!(p.outcome, Err(ProbeError::Open(_))), "{p}");
            return;
        }
        let p = probe(1_000, Duration::from_secs(20));
        match p.outcome {
            Ok(ns) => assert!(ns >= 0.0),
            Err(ref e) => assert!(!e.to_string().is_empty()),
        }
        assert!(
            p.host_ns_per_insn > 0.0 && p.host_ns_per_insn < 100.0,
            "{p}"
        );
    }
}
