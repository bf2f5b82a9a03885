//! virtio-mmio transport, version 2 ("modern", virtio 1.2 §4.2).
//!
//! # Contract with the VMM
//!
//! * Build: `MmioTransport::new(Box::new(device), dma, irqfd, MmioOptions { .. })`, then wrap it
//!   as `Arc<Mutex<MmioTransport>>`: the same object serves the MMIO bus (vCPU threads) and the
//!   event loop.
//! * MMIO: it occupies [`MMIO_SIZE`] bytes at a base the VMM chooses; the bus calls
//!   [`BusDevice::read`]/[`BusDevice::write`] with `offset = gpa - base`. Registers are 32-bit
//!   (other widths below 0x100 are ignored, reads as 0); config space (0x100..) takes any width.
//! * Notifications: for each `(i, fd)` in [`MmioTransport::queue_evts`], register `fd` as a KVM
//!   ioeventfd at `base + 0x50` (QueueNotify), 4 bytes, datamatch `i as u32`. Without ioeventfds
//!   a QueueNotify write through [`BusDevice::write`] signals the same eventfd.
//! * Interrupts: `irqfd` (given to `new`) must be registered with `KVM_IRQFD` for the device's
//!   GSI. The transport writes it for used buffers (InterruptStatus bit 0) and configuration
//!   changes, including DEVICE_NEEDS_RESET (bit 1). Level-triggered semantics are approximated
//!   like Firecracker: the guest reads InterruptStatus and ACKs.
//! * Event loop: add the `Arc<Mutex<MmioTransport>>` to the VMM's `event_manager::EventManager`
//!   (`add_subscriber`). `init` registers the queue eventfds, an internal control eventfd
//!   (signalled on activation and reset) and, while the device wants them, its backend fds
//!   (virtio-net: one tap queue per queue pair in use; virtio-blk: its completion eventfd). All
//!   queue processing runs there, never on a vCPU thread.
//! * Guest discovery: kernel command line `virtio_mmio.device=4K@0x<base>:<irq>` per device (see
//!   [`cmdline_fragment`]); device type, features and config space are read over MMIO.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;

use bounce::{Dma, DmaQueue, DmaSource, QueueCounters};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    feature, ActivateError, Interrupt, QueueState, VirtioDevice, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// Size of a device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify (where the VMM registers the ioeventfds).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x554d_4551; // "QEMU", as Firecracker/Cloud Hypervisor report

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Event data tokens: queue eventfds use their index.
pub(crate) const TOKEN_CONTROL: u32 = u32::MAX - 1;
/// Backend fds: `TOKEN_BACKEND + i` for the device's backend `i` (below [`TOKEN_LIMITER`]).
const TOKEN_BACKEND: u32 = 0x4000_0000;
/// Rate limiter timers: `TOKEN_LIMITER + i` for the device's limiter `i`.
pub(crate) const TOKEN_LIMITER: u32 = 0x8000_0000;

/// The guest kernel parameter announcing a device at `base` with interrupt `irq`.
pub fn cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Transport options chosen by the VMM.
#[derive(Debug, Clone, Copy, Default)]
pub struct MmioOptions {
    /// Offer `VIRTIO_F_ACCESS_PLATFORM` (the guest then uses its DMA API, e.g. swiotlb).
    pub access_platform: bool,
    /// The device's number, used as `DmaSource::device` (selects the bounce pool area).
    pub device_index: u16,
}

/// The driver's view of one queue before activation.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// A virtio device behind a virtio-mmio v2 register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    dma: Dma,
    opts: MmioOptions,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    /// Per queue index, across activations (monotonic: a reset does not clear them).
    counters: Vec<Arc<QueueCounters>>,
    control_evt: EventFd,
    max_sizes: Vec<u16>,
    queues: Vec<QueueRegs>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
    /// What is registered with the event loop for each backend fd of the device.
    registered_backends: Vec<Option<(RawFd, EventSet)>>,
}

impl MmioTransport {
    /// Wraps `device`. `dma` is the handle the device's queues use; `irqfd` is the eventfd the
    /// VMM registers with `KVM_IRQFD`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        dma: Dma,
        irqfd: EventFd,
        opts: MmioOptions,
    ) -> io::Result<Self> {
        let max_sizes = device.queue_max_sizes().to_vec();
        let backends = device.backend_count();
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            dma,
            opts,
            interrupt: Interrupt::new(irqfd),
            queue_evts,
            counters: max_sizes.iter().map(|_| Arc::default()).collect(),
            control_evt: EventFd::new(EFD_NONBLOCK)?,
            queues: vec![QueueRegs::default(); max_sizes.len()],
            max_sizes,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
            registered_backends: vec![None; backends],
        })
    }

    /// One eventfd per queue, in queue order: register each as an ioeventfd at
    /// `base + NOTIFY_OFFSET` with datamatch = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Each queue's counters, in queue order (for metrics; they live as long as any holder).
    pub fn queue_counters(&self) -> &[Arc<QueueCounters>] {
        &self.counters
    }

    /// The interrupt (InterruptStatus + irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK) and has not failed or been reset.
    pub fn is_active(&self) -> bool {
        self.active && self.status & STATUS_DEVICE_NEEDS_RESET == 0
    }

    /// All features offered: the device's plus the transport's.
    pub fn device_features(&self) -> u64 {
        let mut f = self.device.features()
            | feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_EVENT_IDX)
            | feature(VIRTIO_F_RING_INDIRECT_DESC);
        if self.opts.access_platform {
            f |= feature(VIRTIO_F_ACCESS_PLATFORM);
        } else {
            f &= !feature(VIRTIO_F_ACCESS_PLATFORM);
        }
        f
    }

    /// The features the driver acknowledged.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueRegs::default());
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.active = false;
        self.interrupt.clear();
        self.poke_event_loop();
    }

    /// Has the event loop re-evaluate the backend fd and (after activation) drain all queues.
    fn poke_event_loop(&self) {
        if let Err(e) = self.control_evt.write(1) {
            crate::error_limited!("virtio-mmio: control eventfd write: {e}");
        }
    }

    /// A device failure: DEVICE_NEEDS_RESET and a config interrupt, never a panic.
    fn device_failed(&mut self, what: &dyn std::fmt::Display) {
        crate::error_limited!(
            "virtio-mmio type {}: {what}; setting DEVICE_NEEDS_RESET",
            self.device.device_type()
        );
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config() {
            crate::error_limited!("virtio-mmio: config interrupt: {e}");
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status & !STATUS_DEVICE_NEEDS_RESET;
        let mut new = value & !STATUS_DEVICE_NEEDS_RESET;
        if old & !new != 0 {
            crate::warn_limited!(
                "virtio-mmio: driver cleared status bits ({old:#x} -> {new:#x}); ignored"
            );
            return;
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device_features();
            let unknown = self.driver_features & !offered;
            if unknown != 0 || self.driver_features & feature(VIRTIO_F_VERSION_1) == 0 {
                crate::warn_limited!(
                    "virtio-mmio: FEATURES_OK refused (driver {:#x}, offered {offered:#x})",
                    self.driver_features
                );
                new &= !STATUS_FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            crate::warn_limited!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored");
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if added & new & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                self.device_failed(&format!("activation failed: {e}"));
            }
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::AlreadyActive);
        }
        let event_idx = self.driver_features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, (regs, &max)) in self.queues.iter().zip(&self.max_sizes).enumerate() {
            let src = DmaSource {
                device: self.opts.device_index,
                queue: u16::try_from(index).unwrap_or(u16::MAX),
            };
            let mut q = DmaQueue::new(max, self.dma.clone(), src)
                .map_err(|source| ActivateError::Queue { index, source })?;
            if let Some(c) = self.counters.get(index) {
                q.set_counters(c.clone());
            }
            if regs.ready {
                let size = regs.size;
                if size == 0 || !size.is_power_of_two() || size > max {
                    return Err(ActivateError::BadQueueSize { index, size, max });
                }
                let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
                let qm = q.queue_mut();
                qm.set_size(size);
                let (lo, hi) = split(regs.desc);
                qm.set_desc_table_address(lo, hi);
                let (lo, hi) = split(regs.driver);
                qm.set_avail_ring_address(lo, hi);
                let (lo, hi) = split(regs.device);
                qm.set_used_ring_address(lo, hi);
                qm.set_event_idx(event_idx);
                qm.set_ready(true);
                // The setters ignore misaligned addresses; refuse rather than use stale ones.
                if qm.size() != size
                    || qm.desc_table() != regs.desc
                    || qm.avail_ring() != regs.driver
                    || qm.used_ring() != regs.device
                {
                    return Err(ActivateError::Queue {
                        index,
                        source: bounce::QueueError::InvalidRings,
                    });
                }
                q.validate()
                    .map_err(|source| ActivateError::Queue { index, source })?;
            }
            queues.push(q);
        }
        self.device.activate(queues, self.interrupt.clone())?;
        self.active = true;
        self.poke_event_loop();
        Ok(())
    }

    /// Applies `f` to the selected queue's registers unless they are frozen.
    fn write_queue_reg(&mut self, name: &str, f: impl FnOnce(&mut QueueRegs)) {
        if self.status & STATUS_DRIVER_OK != 0 {
            crate::warn_limited!("virtio-mmio: {name} write after DRIVER_OK ignored");
            return;
        }
        let sel = self.queue_sel;
        let Some(regs) = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            crate::warn_limited!("virtio-mmio: {name} write for nonexistent queue {sel} ignored");
            return;
        };
        if regs.ready && name != "QueueReady" {
            crate::warn_limited!("virtio-mmio: {name} write to ready queue {sel} ignored");
            return;
        }
        f(regs);
    }

    fn selected_queue(&self) -> Option<&QueueRegs> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|i| self.max_sizes.get(i))
                .map_or(0, |&m| u32::from(m)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length and base read as all ones (§4.2.2).
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                crate::warn_limited!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    crate::warn_limited!(
                        "virtio-mmio: DriverFeatures write after FEATURES_OK ignored"
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => self.driver_features = lo(self.driver_features),
                    1 => self.driver_features = hi(self.driver_features),
                    s => crate::warn_limited!(
                        "virtio-mmio: DriverFeatures write with selector {s} ignored"
                    ),
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => self.write_queue_reg("QueueNum", |q| {
                // Out-of-range sizes become 0, which activation rejects.
                q.size = u16::try_from(v).unwrap_or(0)
            }),
            REG_QUEUE_READY => self.write_queue_reg("QueueReady", |q| q.ready = v == 1),
            REG_QUEUE_DESC_LOW => self.write_queue_reg("QueueDescLow", |q| q.desc = lo(q.desc)),
            REG_QUEUE_DESC_HIGH => self.write_queue_reg("QueueDescHigh", |q| q.desc = hi(q.desc)),
            REG_QUEUE_DRIVER_LOW => {
                self.write_queue_reg("QueueDriverLow", |q| q.driver = lo(q.driver))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.write_queue_reg("QueueDriverHigh", |q| q.driver = hi(q.driver))
            }
            REG_QUEUE_DEVICE_LOW => {
                self.write_queue_reg("QueueDeviceLow", |q| q.device = lo(q.device))
            }
            REG_QUEUE_DEVICE_HIGH => {
                self.write_queue_reg("QueueDeviceHigh", |q| q.device = hi(q.device))
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; this is the fallback path.
                match usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i)) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            crate::error_limited!("virtio-mmio: queue eventfd write: {e}");
                        }
                    }
                    None => crate::warn_limited!("virtio-mmio: notify for nonexistent queue {v}"),
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            REG_SHM_SEL => {}
            _ => {
                crate::warn_limited!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}")
            }
        }
    }

    /// (Un)registers the device's backend fds to match what it currently wants.
    fn sync_backend(&mut self, ops: &mut EventOps) {
        for i in 0..self.registered_backends.len() {
            let want = if self.is_active() {
                self.device.backend_interest_at(i)
            } else {
                None
            };
            let registered = &mut self.registered_backends[i];
            if want == *registered {
                continue;
            }
            if let Some((fd, _)) = registered.take() {
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    crate::error_limited!("virtio-mmio: removing backend fd {fd}: {e:?}");
                }
            }
            if let Some((fd, set)) = want {
                let token = TOKEN_BACKEND.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
                match ops.add(Events::with_data_raw(fd, token, set)) {
                    Ok(()) => *registered = Some((fd, set)),
                    Err(e) => crate::error_limited!("virtio-mmio: adding backend fd {fd}: {e:?}"),
                }
            }
        }
    }

    fn process_queue(&mut self, index: usize) {
        if !self.is_active() {
            return;
        }
        match self.device.process_queue(index) {
            // Throttled: the device's rate limiter timer brings the event loop back.
            Ok(QueueState::Drained | QueueState::Throttled) => {}
            // The budget ran out: signal the queue's eventfd ourselves, so the (level-triggered)
            // event loop comes back to it after serving every other ready fd.
            Ok(QueueState::MoreWork) => match self.queue_evts.get(index).map(|e| e.write(1)) {
                Some(Ok(())) => {}
                Some(Err(e)) => crate::error_limited!("virtio-mmio: queue eventfd write: {e}"),
                None => crate::error_limited!("virtio-mmio: more work on unknown queue {index}"),
            },
            Err(e) => self.device_failed(&e),
        }
    }

    pub(crate) fn process_event(&mut self, token: u32, set: EventSet) {
        match token {
            TOKEN_CONTROL => {
                // Drain the counter; EAGAIN just means nothing was pending.
                let _ = self.control_evt.read();
                // Pick up notifications that arrived before activation.
                for i in 0..self.queue_evts.len() {
                    self.process_queue(i);
                }
            }
            i if i >= TOKEN_LIMITER => {
                // Always let the device read its timer, active or not: it is level-triggered.
                self.device.rate_limiter_event((i - TOKEN_LIMITER) as usize);
                for q in 0..self.queue_evts.len() {
                    self.process_queue(q);
                }
            }
            i if i >= TOKEN_BACKEND => {
                if self.is_active() {
                    let index = (i - TOKEN_BACKEND) as usize;
                    if let Err(e) = self.device.process_backend_at(index, set) {
                        self.device_failed(&e);
                    }
                }
            }
            i => {
                let Some(evt) = usize::try_from(i).ok().and_then(|i| self.queue_evts.get(i)) else {
                    crate::warn_limited!("virtio-mmio: event for unknown token {i}");
                    return;
                };
                let _ = evt.read();
                if let Some(c) = self.counters.get(i as usize) {
                    QueueCounters::add(&c.notifications, 1);
                }
                self.process_queue(i as usize);
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        match <&mut [u8; 4]>::try_from(data) {
            Ok(out) if offset & 3 == 0 => *out = self.read_reg(offset).to_le_bytes(),
            _ => crate::warn_limited!("virtio-mmio: bad register read at {offset:#x}"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => self.write_reg(offset, u32::from_le_bytes(bytes)),
            _ => crate::warn_limited!("virtio-mmio: bad register write at {offset:#x}"),
        }
    }
}

impl MutEventSubscriber for MmioTransport {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let token = u32::try_from(i).unwrap_or(u32::MAX);
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                log::error!("virtio-mmio: registering queue {i} eventfd: {e:?}");
            }
        }
        for (i, fd) in self.device.rate_limiter_fds() {
            let token = TOKEN_LIMITER.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("virtio-mmio: registering rate limiter timer {i}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.control_evt,
            TOKEN_CONTROL,
            EventSet::IN,
        )) {
            log::error!("virtio-mmio: registering control eventfd: {e:?}");
        }
        self.sync_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.process_event(events.data(), events.event_set());
        self.sync_backend(ops);
    }
}

#[cfg(test)]
mod tests;
