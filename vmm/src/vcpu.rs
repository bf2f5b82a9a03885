//! vCPU threads: run KVM_RUN and route exits to the buses until the VM ends, and the kick
//! that gets a vCPU out of KVM_RUN when the VM ends elsewhere.
//!
//! A vCPU may sit in KVM_RUN indefinitely: halted, waiting for a SIPI that never comes, or
//! running a guest loop that never exits to the VMM. To end it, the main thread sends it
//! [`kick_signal`]; the handler sets the thread's `kvm_run.immediate_exit`, so KVM_RUN returns
//! EINTR whether the signal lands inside it or just before it (Firecracker and Cloud
//! Hypervisor do the same), and the loop sees the VM has ended.

use std::cell::Cell;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::exit::{ExitReason, VmExit};
use devices::bus::Bus;

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while its vCPU runs.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn on_kick(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Async-signal-safe: a thread-local read (const-initialised, no lazy set-up) and one store.
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points into this thread's kvm_run mapping, set by `Vcpu::run` and cleared
        // before the mapping goes away; only this thread and KVM touch that byte.
        unsafe { p.write_volatile(1) };
    }
}

/// Installs the kick handler (once, process-wide, before the vCPU threads start).
pub fn install_kick_handler() -> io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Publishes this thread's `immediate_exit` to [`on_kick`] while it lives.
struct KickTarget;

impl KickTarget {
    fn new(fd: &mut VcpuFd) -> KickTarget {
        let run = fd.get_kvm_run();
        IMMEDIATE_EXIT.with(|p| p.set(ptr::addr_of_mut!(run.immediate_exit)));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|p| p.set(ptr::null_mut()));
    }
}

/// One vCPU's exits to the VMM by kind (monotonic; written only by its own thread, with a plain
/// load and store, no locked instruction; read by the metrics writer).
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub hlt: AtomicU64,
    /// KVM_RUN interrupted by a signal (a kick) or `immediate_exit`.
    pub intr: AtomicU64,
    pub shutdown: AtomicU64,
    pub system_event: AtomicU64,
    /// Internal errors, failed entries, and any other exit microvm does not handle.
    pub other: AtomicU64,
}

/// [`ExitCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExitSnapshot {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub intr: u64,
    pub shutdown: u64,
    pub system_event: u64,
    pub other: u64,
}

impl ExitCounters {
    pub fn snapshot(&self) -> ExitSnapshot {
        ExitSnapshot {
            io_in: self.io_in.load(Relaxed),
            io_out: self.io_out.load(Relaxed),
            mmio_read: self.mmio_read.load(Relaxed),
            mmio_write: self.mmio_write.load(Relaxed),
            hlt: self.hlt.load(Relaxed),
            intr: self.intr.load(Relaxed),
            shutdown: self.shutdown.load(Relaxed),
            system_event: self.system_event.load(Relaxed),
            other: self.other.load(Relaxed),
        }
    }
}

impl ExitSnapshot {
    pub fn add(&mut self, o: &ExitSnapshot) {
        self.io_in += o.io_in;
        self.io_out += o.io_out;
        self.mmio_read += o.mmio_read;
        self.mmio_write += o.mmio_write;
        self.hlt += o.hlt;
        self.intr += o.intr;
        self.shutdown += o.shutdown;
        self.system_event += o.system_event;
        self.other += o.other;
    }
}

/// One writer (the vCPU's thread): no read-modify-write needed.
fn inc(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

pub struct Vcpu {
    pub id: u8,
    pub exits: Arc<ExitCounters>,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<VmExit>,
    pub mem: GuestMemoryMmap,
}

impl Vcpu {
    pub fn run(mut self) {
        let _kick = KickTarget::new(&mut self.fd);
        loop {
            if self.exit.ended() {
                return;
            }
            let reason = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    inc(&self.exits.io_in);
                    self.pio.read(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    inc(&self.exits.io_out);
                    if !self.pio.write(u64::from(port), data) {
                        log::trace!("unhandled write to port {port:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    inc(&self.exits.mmio_read);
                    if !self.mmio.read(addr, data) {
                        log::debug!("unhandled MMIO read at {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    inc(&self.exits.mmio_write);
                    if !self.mmio.write(addr, data) {
                        log::debug!("unhandled MMIO write at {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::Shutdown) => {
                    inc(&self.exits.shutdown);
                    log::warn!(
                        "vCPU {}: guest triple fault (KVM_EXIT_SHUTDOWN): it crashed, or rebooted \
                         with reboot=t; {}",
                        self.id,
                        self.state()
                    );
                    ExitReason::TripleFault
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    inc(&self.exits.system_event);
                    match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                            log::info!("vCPU {}: KVM shutdown event: guest powered off", self.id);
                            ExitReason::PowerOff
                        }
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                            log::info!("vCPU {}: KVM reset event: guest rebooted", self.id);
                            ExitReason::Reboot
                        }
                        other => self.fatal(&format!("KVM system event {other}")),
                    }
                }
                Ok(VcpuExit::Hlt) => {
                    inc(&self.exits.hlt);
                    log::info!("vCPU {} halted", self.id);
                    ExitReason::PowerOff
                }
                // A kick (or another signal): the loop's check decides whether to go on.
                Ok(VcpuExit::Intr) => {
                    inc(&self.exits.intr);
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Ok(VcpuExit::InternalError) => {
                    inc(&self.exits.other);
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let what = if sub == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        "KVM internal error: instruction emulation failed".to_string()
                    } else {
                        format!("KVM internal error (suberror {sub})")
                    };
                    self.fatal(&what)
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    inc(&self.exits.other);
                    self.fatal(&format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ))
                }
                Ok(other) => {
                    inc(&self.exits.other);
                    let what = format!("unhandled KVM exit {other:?}");
                    self.fatal(&what)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    inc(&self.exits.intr);
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => ExitReason::Error(format!("vCPU {}: KVM_RUN failed: {e}", self.id)),
            };
            self.exit.trigger(reason);
            return;
        }
    }

    /// The vCPU's state where a triple fault left it, for the exit's log line. On AMD, KVM
    /// INITs the vCPU on a shutdown intercept (the VMCB is undefined after one), so what is
    /// left there is the reset state, said as such; Intel keeps the faulting state.
    fn state(&self) -> String {
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "its registers could not be read".into();
        };
        if regs.rip == 0xfff0 && sregs.cs.base == 0xffff_0000 {
            return "its registers are the reset state (KVM on AMD INITs a vCPU at shutdown), \
                    so where it faulted is lost: the guest's last console lines tell"
                .into();
        }
        format!(
            "state: RIP {:#x} ({}) RSP {:#x} RFLAGS {:#x} CR0 {:#x} CR2 {:#x} CR3 {:#x} \
             CR4 {:#x} EFER {:#x} CS {:#x} IDT {:#x}/{:#x}",
            regs.rip,
            self.code_at(regs.rip),
            regs.rsp,
            regs.rflags,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            sregs.cs.selector,
            sregs.idt.base,
            sregs.idt.limit
        )
    }

    /// The 16 instruction bytes at guest virtual address `rip`, in hex, or "unreadable".
    fn code_at(&self, rip: u64) -> String {
        self.fd
            .translate_gva(rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut b = [0u8; 16];
                self.mem
                    .read_slice(&mut b, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| b)
            })
            .map(|b| {
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "unreadable".into())
    }

    /// An exit the VMM cannot handle: the reason, RIP and the instruction bytes there.
    fn fatal(&self, what: &str) -> ExitReason {
        let Ok(regs) = self.fd.get_regs() else {
            return ExitReason::Error(format!("vCPU {}: {what}", self.id));
        };
        let bytes = self.code_at(regs.rip);
        ExitReason::Error(format!(
            "vCPU {}: {what} at RIP {:#x} (instruction bytes: {bytes})",
            self.id, regs.rip
        ))
    }
}
