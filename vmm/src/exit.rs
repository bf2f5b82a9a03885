//! How the VM ends: any thread records the first reason and wakes the event loop; the process
//! exit status says which it was (README, "Exit status").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status when the guest triple-faulted (`KVM_EXIT_SHUTDOWN`): it crashed.
pub const STATUS_TRIPLE_FAULT: u8 = 3;
/// Exit status when the guest reported a panic through pvpanic.
pub const STATUS_GUEST_PANIC: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset: the i8042 reset line, the ACPI reset register, or a KVM
    /// reset event.
    Reboot,
    /// The guest powered off through ACPI (or a KVM shutdown event).
    PowerOff,
    /// The guest triple-faulted: a crash (or `reboot=t`, which reboots that way on purpose).
    TripleFault,
    /// The guest wrote "panicked" to the pvpanic device.
    GuestPanic,
    /// microvm got SIGTERM, SIGINT or SIGHUP and stopped the VM.
    Signal(i32),
    /// Something the VMM cannot go on from, with a one-line reason.
    Error(String),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn status(&self) -> u8 {
        match self {
            ExitReason::Reboot | ExitReason::PowerOff => 0,
            ExitReason::Error(_) => 1,
            ExitReason::TripleFault => STATUS_TRIPLE_FAULT,
            ExitReason::GuestPanic => STATUS_GUEST_PANIC,
            // The shell's convention for a process ended by signal N.
            ExitReason::Signal(n) => 128u8.saturating_add(u8::try_from(*n).unwrap_or(0)),
        }
    }
}

pub struct VmExit {
    pub evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    /// Set with `reason`: a lock-free check for the vCPU threads' exit loop.
    ended: AtomicBool,
}

impl VmExit {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmExit {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            ended: AtomicBool::new(false),
        })
    }

    /// Records `reason` unless another thread already ended the VM.
    pub fn trigger(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.ended.store(true, Ordering::Release);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal VM exit: {e}");
        }
    }

    /// Whether some thread has ended the VM.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_out_has_its_status() {
        assert_eq!(ExitReason::Reboot.status(), 0);
        assert_eq!(ExitReason::PowerOff.status(), 0);
        assert_eq!(ExitReason::Error("x".into()).status(), 1);
        assert_eq!(ExitReason::TripleFault.status(), 3);
        assert_eq!(ExitReason::GuestPanic.status(), 4);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).status(), 143);
        assert_eq!(ExitReason::Signal(libc::SIGINT).status(), 130);
    }

    #[test]
    fn the_first_reason_wins() {
        let exit = VmExit::new().unwrap();
        assert!(!exit.ended());
        exit.trigger(ExitReason::GuestPanic);
        exit.trigger(ExitReason::Reboot);
        assert!(exit.ended());
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }
}
