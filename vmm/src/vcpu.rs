//! vCPU threads: run KVM_RUN and route exits to the buses until the VM ends.

use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::exit::{ExitReason, VmExit};
use devices::bus::Bus;

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<VmExit>,
    pub mem: GuestMemoryMmap,
}

impl Vcpu {
    pub fn run(mut self) {
        loop {
            if self.exit.ended() {
                return;
            }
            let reason = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !self.pio.write(u64::from(port), data) {
                        log::trace!("unhandled write to port {port:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        log::debug!("unhandled MMIO read at {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        log::debug!("unhandled MMIO write at {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::Shutdown) => {
                    log::info!("vCPU {}: triple fault, treating it as a reset", self.id);
                    ExitReason::Reboot
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                    other => self.fatal(&format!("KVM system event {other}")),
                },
                Ok(VcpuExit::Hlt) => {
                    log::info!("vCPU {} halted", self.id);
                    ExitReason::PowerOff
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(VcpuExit::InternalError) => {
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
                Ok(VcpuExit::FailEntry(reason, cpu)) => self.fatal(&format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                )),
                Ok(other) => {
                    let what = format!("unhandled KVM exit {other:?}");
                    self.fatal(&what)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => ExitReason::Error(format!("vCPU {}: KVM_RUN failed: {e}", self.id)),
            };
            self.exit.trigger(reason);
            return;
        }
    }

    /// An exit the VMM cannot handle: the reason, RIP and the instruction bytes there.
    fn fatal(&self, what: &str) -> ExitReason {
        let Ok(regs) = self.fd.get_regs() else {
            return ExitReason::Error(format!("vCPU {}: {what}", self.id));
        };
        let bytes = self
            .fd
            .translate_gva(regs.rip)
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
            .unwrap_or_else(|| "unreadable".into());
        ExitReason::Error(format!(
            "vCPU {}: {what} at RIP {:#x} (instruction bytes: {bytes})",
            self.id, regs.rip
        ))
    }
}
