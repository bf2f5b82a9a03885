//! Does `/dev/kvm` run guest kernel code at hardware speed?
//!
//! Runs a tiny real-mode guest (a `dec ecx; jnz` loop, then `hlt`) and times it.
//! Hardware virtualization runs it at ~1 ns per instruction; an emulating `/dev/kvm`
//! (as on the project's development machines) takes hundreds of ns per instruction or
//! fails with `KVM_EXIT_INTERNAL_ERROR`.

use std::fmt;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Above this many ns per guest instruction, `/dev/kvm` counts as unusable for Linux guests.
pub const DIRECT_MAX_NS_PER_INSN: f64 = 20.0;

/// Loop iterations of the measured run (two instructions each).
const LOOPS: u64 = 100_000;
const MEM_SIZE: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
/// `dec ecx` (0x66 0x49 in real mode), `jnz -4`, `hlt`.
const CODE: [u8; 5] = [0x66, 0x49, 0x75, 0xfc, 0xf4];

/// Result of the probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Measured ns per guest instruction, if the guest ran to its `hlt`.
    pub ns_per_insn: Option<f64>,
    /// Why the guest did not run to its `hlt`, if it did not.
    pub failure: Option<String>,
}

impl ProbeResult {
    /// True if `/dev/kvm` runs guest kernel code at hardware speed.
    pub fn is_hardware_speed(&self) -> bool {
        self.failure.is_none()
            && self
                .ns_per_insn
                .is_some_and(|ns| ns < DIRECT_MAX_NS_PER_INSN)
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.failure, self.ns_per_insn) {
            (Some(why), _) => write!(f, "/dev/kvm failed: {why}"),
            (None, Some(ns)) => write!(f, "{ns:.1} ns/insn on /dev/kvm"),
            (None, None) => write!(f, "no measurement"),
        }
    }
}

/// Run the probe (bounded to 20 s even if KVM_RUN never returns).
pub fn probe() -> ProbeResult {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(measure());
        });
    if let Err(e) = spawned {
        return ProbeResult {
            ns_per_insn: None,
            failure: Some(format!("cannot start the probe thread: {e}")),
        };
    }
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(ns)) => ProbeResult {
            ns_per_insn: Some(ns),
            failure: None,
        },
        Ok(Err(e)) => ProbeResult {
            ns_per_insn: None,
            failure: Some(format!("{e:#}")),
        },
        Err(_) => ProbeResult {
            ns_per_insn: None,
            failure: Some("the probe guest did not finish within 20 s".into()),
        },
    }
}

struct GuestMem {
    ptr: *mut libc::c_void,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<Self> {
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
            bail!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(GuestMem { ptr, len })
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        if offset + data.len() > self.len {
            bail!("write past the end of guest memory");
        }
        // SAFETY: in bounds (checked above) of a mapping we own.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.ptr as *mut u8).add(offset),
                data.len(),
            )
        };
        Ok(())
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// One run of the loop with `loops` iterations; returns its duration.
fn run_once(kvm: &Kvm, loops: u64) -> Result<Duration> {
    let vm = kvm.create_vm().context("KVM_CREATE_VM failed")?;
    let mut mem = GuestMem::new(MEM_SIZE)?;
    mem.write(CODE_ADDR as usize, &CODE)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region is backed by `mem`, which outlives `vm` (dropped after it below).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION failed")?;
    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU failed")?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS failed")?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS failed")?;
    let mut regs = vcpu.get_regs().context("KVM_GET_REGS failed")?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    regs.rcx = loops;
    vcpu.set_regs(&regs).context("KVM_SET_REGS failed")?;

    let start = Instant::now();
    let exit = vcpu.run();
    let took = start.elapsed();
    let result = match exit {
        Ok(VcpuExit::Hlt) => Ok(took),
        Ok(VcpuExit::InternalError) => bail!("KVM_EXIT_INTERNAL_ERROR (emulation failure)"),
        Ok(other) => bail!("unexpected exit {other:?} instead of HLT"),
        Err(e) => bail!("KVM_RUN failed: {e}"),
    };
    drop(vcpu);
    drop(vm);
    drop(mem);
    result
}

fn measure() -> Result<f64> {
    let kvm = Kvm::new().context("cannot open /dev/kvm")?;
    // Warm-up: page faults, first entry.
    run_once(&kvm, 1_000)?;
    let took = run_once(&kvm, LOOPS)?;
    Ok(took.as_nanos() as f64 / (2 * LOOPS) as f64)
}
