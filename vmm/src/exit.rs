//! How the VM ends: any thread records the first reason and wakes the event loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042, triple fault, KVM system event).
    Reboot,
    /// The guest powered off through ACPI.
    PowerOff,
    /// Something the VMM cannot go on from, with a one-line reason.
    Error(String),
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
