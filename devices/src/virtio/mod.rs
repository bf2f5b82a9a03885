//! Virtio devices and their transport.
//!
//! A device implements [`VirtioDevice`]; the transport ([`mmio::MmioTransport`]) owns it, does
//! the register protocol (feature negotiation, queue setup, status, interrupts) and hands the
//! device its queues as [`bounce::DmaQueue`]s at activation (DRIVER_OK). Devices never see guest
//! memory: the queues and the buffers they map go through `bounce::Dma`.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bounce::{DmaQueue, QueueError};
use event_manager::EventSet;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::rate_limiter::RateLimiter;

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
mod tap;

pub use block::{Block, BlockConfig, Engine, UringOptions};
pub use mmio::{MmioOptions, MmioTransport};
pub use net::{Net, NetConfig};
pub use rng::Rng;
pub use tap::{seqpacket_pair, TapError, TUNSETOFFLOAD, TUNSETQUEUE};

/// Virtio device IDs (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// Feature bit numbers the transport handles (virtio 1.2 §6).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// InterruptStatus bits (virtio 1.2 §4.2.2).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// `1 << bit` as a feature mask.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// A device's interrupt line: the InterruptStatus register plus the irqfd the VMM registered
/// with KVM (`KVM_IRQFD` on the device's GSI). Shared by the transport and the device.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        })
    }

    /// Sets InterruptStatus bit 0 ("used buffer") and raises the interrupt.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    /// Sets InterruptStatus bit 1 ("configuration change") and raises the interrupt.
    pub fn signal_config(&self) -> io::Result<()> {
        self.raise(INT_CONFIG)
    }

    fn raise(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the written bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The irqfd (for the VMM to register with KVM, or for tests to read).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Why a device could not be activated. The transport sets DEVICE_NEEDS_RESET.
#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is required but the driver did not make it ready")]
    QueueNotReady(usize),
    #[error("queue {index}: size {size} is 0, not a power of two or above the maximum {max}")]
    BadQueueSize { index: usize, size: u16, max: u16 },
    #[error("queue {index}: {source}")]
    Queue { index: usize, source: QueueError },
    #[error("device already active")]
    AlreadyActive,
    #[error("backend: {0}")]
    Backend(#[from] io::Error),
}

/// A failure while processing a queue or the backend: the device needs a reset.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("interrupt: {0}")]
    Interrupt(io::Error),
    #[error("backend: {0}")]
    Backend(io::Error),
    #[error("queue index {0} does not exist")]
    NoSuchQueue(usize),
}

/// A virtio device behind a transport.
///
/// Call order (the transport guarantees it): `features`/`read_config`/`write_config` any time;
/// `ack_features` once at FEATURES_OK; `activate` once at DRIVER_OK; `process_queue` and
/// `process_backend` only while active; `reset` when the driver writes 0 to Status (after which
/// the device is as newly constructed, its queues dropped).
pub trait VirtioDevice: Send {
    /// The virtio device ID ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific feature bits offered (the transport adds VERSION_1, EVENT_IDX,
    /// INDIRECT_DESC and, if configured, ACCESS_PLATFORM).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of what was offered), at FEATURES_OK.
    fn ack_features(&mut self, _features: u64) {}
    /// Reads device config space; bytes outside it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (most devices have no writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::warn_limited!(
            "virtio type {}: ignored config write of {} bytes at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }
    /// Starts the device with its queues (one per `queue_max_sizes` entry, in order; a queue
    /// the driver did not enable is passed not ready).
    fn activate(
        &mut self,
        queues: Vec<DmaQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index`. Serves at most [`QUEUE_BUDGET`] chains; with
    /// [`QueueState::MoreWork`] the transport comes back to the queue by itself (the guest sees
    /// notifications disabled and need not notify again).
    fn process_queue(&mut self, index: usize) -> Result<QueueState, DeviceError>;
    /// The backend fd the device wants polled right now and for what (`None`: nothing, e.g. not
    /// active, or net RX back-pressure). The transport (un)registers it with the event loop.
    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        None
    }
    /// The timerfds of the device's rate limiters (see [`crate::rate_limiter`]) with the index
    /// each is known by in [`VirtioDevice::rate_limiter_event`], fixed for the device's life:
    /// the transport polls them from the start.
    fn rate_limiter_fds(&self) -> Vec<(usize, RawFd)> {
        Vec::new()
    }
    /// Rate limiter `index`'s timer fired (the device must read it: it is polled
    /// level-triggered). The transport then serves every queue again.
    fn rate_limiter_event(&mut self, _index: usize) {}
    /// The backend fd from [`VirtioDevice::backend_interest`] is ready.
    fn process_backend(&mut self, _events: EventSet) -> Result<(), DeviceError> {
        Ok(())
    }
    /// How many backend fds the device has, fixed for its life (virtio-net: one tap queue per
    /// queue pair). The transport polls backend `i` as [`VirtioDevice::backend_interest_at`]
    /// says and hands its events to [`VirtioDevice::process_backend_at`].
    fn backend_count(&self) -> usize {
        1
    }
    /// [`VirtioDevice::backend_interest`] for backend `index` (the single-backend form is
    /// index 0).
    fn backend_interest_at(&self, index: usize) -> Option<(RawFd, EventSet)> {
        if index == 0 {
            self.backend_interest()
        } else {
            None
        }
    }
    /// [`VirtioDevice::process_backend`] for backend `index`.
    fn process_backend_at(&mut self, index: usize, events: EventSet) -> Result<(), DeviceError> {
        if index == 0 {
            self.process_backend(events)
        } else {
            Ok(())
        }
    }
    /// Back to the state after construction (queues dropped, not active).
    fn reset(&mut self);
}

/// Chains served per queue notification. A driver that refills a queue as fast as the device
/// empties it would otherwise hold the single event-loop thread (every other device, the
/// console, signals and the VM's exit) for as long as it likes. 256 is a full ring at microvm's
/// queue size.
pub const QUEUE_BUDGET: usize = 256;

/// What [`VirtioDevice::process_queue`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// The ring was empty with driver notifications enabled: the next chain comes with a
    /// notification.
    Drained,
    /// The budget ran out. Chains may be left and driver notifications may still be disabled:
    /// the transport must process the queue again without waiting for the guest.
    MoreWork,
    /// A rate limiter refused the next chain, which was put back: the device serves the queue
    /// again when the limiter's timer fires (driver notifications stay disabled meanwhile).
    Throttled,
}

/// Copies `config[offset..]` into `data`, zero-filling what lies outside `config`.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Drains `queue` with `handle` (which returns the used length of a chain), returning malformed
/// chains with used length 0, for at most `budget` chains. Follows the disable/drain/enable
/// pattern so a chain added while draining is not missed, and raises the used-ring interrupt if
/// the driver wants one (also when the budget runs out, so the driver can reuse what was served).
pub(crate) fn drain_queue<F>(
    queue: &mut DmaQueue,
    interrupt: &Interrupt,
    budget: usize,
    handle: F,
) -> Result<QueueState, DeviceError>
where
    F: FnMut(&DmaQueue, &bounce::Chain) -> u32,
{
    drain_queue_limited(queue, interrupt, budget, None, handle)
}

/// The bytes a chain's request moves, for a rate limiter: its buffers' total length.
pub(crate) fn chain_bytes(chain: &bounce::Chain) -> u64 {
    chain.descs.iter().map(|d| u64::from(d.len)).sum()
}

/// The bytes a rate limiter charges for a chain.
pub(crate) type ChainCost = fn(&bounce::Chain) -> u64;

/// [`drain_queue`] with a rate limiter: each chain is charged one operation and `cost(chain)`
/// bytes before it is handled; a chain the limiter refuses goes back in the ring and the queue
/// is left [`QueueState::Throttled`] until the limiter's timer fires.
pub(crate) fn drain_queue_limited<F>(
    queue: &mut DmaQueue,
    interrupt: &Interrupt,
    budget: usize,
    mut limiter: Option<(&mut RateLimiter, ChainCost)>,
    mut handle: F,
) -> Result<QueueState, DeviceError>
where
    F: FnMut(&DmaQueue, &bounce::Chain) -> u32,
{
    let mut used = 0usize;
    let state = 'drain: loop {
        queue.disable_notification()?;
        loop {
            if used >= budget {
                break 'drain QueueState::MoreWork;
            }
            if limiter.as_ref().is_some_and(|(l, _)| l.is_blocked()) {
                break 'drain QueueState::Throttled;
            }
            match queue.pop() {
                Ok(Some(chain)) => {
                    if let Some((l, cost)) = limiter.as_mut() {
                        if !l.consume(cost(&chain)) {
                            queue.undo_pop();
                            break 'drain QueueState::Throttled;
                        }
                    }
                    let len = handle(queue, &chain);
                    queue.add_used(chain.head, len)?;
                }
                Ok(None) => break,
                Err(QueueError::MalformedChain { head }) => {
                    crate::warn_limited!(
                        "malformed descriptor chain at head {head}: returned unused"
                    );
                    queue.add_used(head, 0)?;
                }
                Err(e) => return Err(e.into()),
            }
            used += 1;
        }
        if !queue.enable_notification()? {
            break QueueState::Drained;
        }
    };
    if used > 0 && queue.needs_notification()? {
        interrupt
            .signal_used_queue()
            .map_err(DeviceError::Interrupt)?;
    }
    Ok(state)
}

#[cfg(test)]
pub(crate) mod test_utils;

#[cfg(test)]
mod tests;
