//! Process signals, read through a signalfd on the event loop (no work in signal handlers):
//! SIGUSR1 logs the bounce statistics; SIGTERM, SIGINT and SIGHUP stop the VM, which then ends
//! like any other way out (vCPUs kicked, statistics logged, terminal restored) with status
//! 128 + N.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::exit::{ExitReason, VmExit};
use crate::metrics::DmaReport;

const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    for s in STOP {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread and every thread it starts afterwards.
/// Call it first thing in `main`: a thread that does not block them (the pool worker, a vCPU)
/// would take the default action and end the process on the spot.
pub fn block() -> std::io::Result<()> {
    handled().thread_block().map_err(std::io::Error::from)
}

pub struct Signals {
    report: DmaReport,
    exit: Arc<VmExit>,
    fd: SignalFd,
}

impl Signals {
    /// Opens the signalfd (the signals are blocked by [`block`]).
    pub fn new(report: DmaReport, exit: Arc<VmExit>) -> std::io::Result<Self> {
        let fd = SignalFd::with_flags(&handled(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
        Ok(Signals { report, exit, fd })
    }
}

impl MutEventSubscriber for Signals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::warn!("signal handling disabled (SIGUSR1 statistics, SIGTERM stop): {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGUSR1 {
                if self.report.dma.stats().is_none() {
                    log::info!("bounce statistics: none (--restricted-dma is off)");
                }
                self.report.log();
            } else {
                let name = Signal::try_from(signo).map_or("a signal", |s| s.as_str());
                log::info!("{name} received: stopping the VM");
                self.exit.trigger(ExitReason::Signal(signo));
            }
        }
    }
}
