//! Virtio devices on the MMIO bus: one [`Dma`] handle for all of them (direct, or bounced through
//! the restricted-DMA pools), a virtio-mmio window, an ioeventfd per queue and an irqfd each.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bounce::{Dma, Swiotlb, TraceRecorder};
use devices::bus::Bus;
use devices::virtio::block::{BlockError, Engine, UringOptions};
use devices::virtio::mmio::{MMIO_SIZE, NOTIFY_OFFSET};
use devices::virtio::net::Tap;
use devices::virtio::{
    Block, BlockConfig, MmioOptions, MmioTransport, Net, NetConfig, Rng, VirtioDevice,
};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{DiskEngine, NetConfig as NetSpec, UringWrites, VmConfig};
use crate::metrics::{DeviceCounters, DmaReport};
use crate::seccomp::{Filters, ThreadKind};

/// virtio-mmio windows start here, inside the 32-bit MMIO gap.
const MMIO_BASE: u64 = 0xd000_0000;
/// ISA IRQs free on a PC: Linux numbers them as IOAPIC pins, so a `virtio_mmio.device=...:IRQ`
/// parameter reaches the right pin. (0-2 timer/keyboard/cascade, 3-4 serial, 8 RTC, 9 SCI.)
const IRQS: [u32; 9] = [5, 6, 7, 10, 11, 12, 13, 14, 15];
const QUEUE_SIZE: u16 = 256;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The guest-memory handle every device uses: bounced when `--restricted-dma` is on. The
/// pools' worker is not started yet (`Swiotlb::start_worker`, once the devices exist). A DMA
/// trace file is registered with `filters` for the threads that map and unmap.
pub fn create_dma(cfg: &VmConfig, mem: &GuestMemoryMmap, filters: &Filters) -> Result<DmaReport> {
    let dma = match &cfg.restricted_dma {
        None => Dma::direct(mem.clone()),
        Some(pool_cfg) => {
            let swiotlb = Swiotlb::prepare(pool_cfg.clone())
                .map_err(|e| anyhow!("cannot set up the restricted-DMA pools: {e}"))?;
            log::info!(
                "restricted DMA: {} KiB initial pool, bounce model {:?}",
                pool_cfg.size >> 10,
                pool_cfg
            );
            Dma::bounced(mem.clone(), swiotlb)
        }
    };
    let trace = match &cfg.dma_trace {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create DMA trace file {}", path.display()))?;
            filters.allow_write(
                &[ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device],
                file.as_raw_fd(),
            );
            let rec = Arc::new(TraceRecorder::new(Box::new(BufWriter::new(file))));
            dma.set_trace(Some(rec.clone()));
            Some(rec)
        }
        None => None,
    };
    Ok(DmaReport { dma, trace })
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("MAC address {s:?} must be six hex bytes like 02:00:00:00:00:01");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow!("MAC address {s:?} must be six hex bytes"))?;
    }
    Ok(mac)
}

/// A locally administered MAC derived from the device index, when none is given.
fn default_mac(index: usize) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x00, 0x00, (index as u8).wrapping_add(1)]
}

/// microvm attaches to a tap the host has set up; it never creates one (TUNSETIFF would, with
/// CAP_NET_ADMIN), because a tap it created would be down and unaddressed, and the guest's
/// network would silently go nowhere.
fn ensure_tap_exists(name: &str, queues: u16) -> Result<()> {
    let exists = std::ffi::CString::new(name)
        // SAFETY: if_nametoindex reads the NUL-terminated string, which outlives the call.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false);
    if !exists {
        let mq = if queues > 1 { " multi_queue" } else { "" };
        bail!(
            "tap interface {name:?} does not exist: create and configure it first, e.g. \
             `ip tuntap add {name} mode tap{mq} && ip link set {name} up` (microvm never creates \
             one)"
        );
    }
    Ok(())
}

fn net_device(spec: &NetSpec, index: usize) -> Result<Net> {
    let mac = match &spec.mac {
        Some(m) => parse_mac(m)?,
        None => default_mac(index),
    };
    ensure_tap_exists(&spec.tap, spec.queues)?;
    let queues = usize::from(spec.queues);
    let taps = Tap::open_queues(&spec.tap, queues).map_err(|e| match e {
        // Says what to do already.
        e @ devices::virtio::TapError::NotMultiQueue { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!(
            "cannot open tap device {:?} (create it first, e.g. `ip tuntap add {} mode tap{}`)",
            spec.tap,
            spec.tap,
            if queues > 1 { " multi_queue" } else { "" }
        )),
    })?;
    if queues > 1 {
        log::info!("virtio-net on tap {:?}: {queues} queue pairs", spec.tap);
    }
    Net::with_taps(
        taps,
        NetConfig {
            mac,
            queue_size: QUEUE_SIZE,
            rate_limit: spec.rate_limit,
        },
    )
    .with_context(|| format!("cannot set up virtio-net on tap {:?}", spec.tap))
}

/// The engine for a disk: as asked, or io_uring where this kernel has it (probed once, at
/// set-up: the probe's `io_uring_setup`/`io_uring_register` are not allowed once the seccomp
/// filters are in place).
fn disk_engine(
    asked: Option<DiskEngine>,
    probed: &mut Option<Result<(), String>>,
    path: &std::path::Path,
) -> Result<Engine> {
    let probe = probed
        .get_or_insert_with(|| devices::virtio::block::probe_uring().map_err(|e| e.to_string()));
    match (asked, probe) {
        (Some(DiskEngine::Sync), _) => Ok(Engine::Sync),
        (Some(DiskEngine::Uring), Ok(())) | (None, Ok(())) => Ok(Engine::Uring),
        (Some(DiskEngine::Uring), Err(e)) => Err(anyhow!(
            "disk {}: engine=uring, but io_uring is not available on this host: {e}",
            path.display()
        )),
        (None, Err(e)) => {
            log::warn!(
                "io_uring is not available on this host ({e}); disk {} uses the sync engine \
                 (one request at a time)",
                path.display()
            );
            Ok(Engine::Sync)
        }
    }
}

fn build_devices(cfg: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>> {
    let mut devs: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut probed = None;
    for (i, disk) in cfg.disks.iter().enumerate() {
        let engine = disk_engine(disk.engine, &mut probed, &disk.path)?;
        if disk.sqpoll_idle_ms == Some(0) {
            bail!(
                "disk {}: sqpoll_idle_ms must be at least 1 (0 would be the kernel's 1 s)",
                disk.path.display()
            );
        }
        if disk.sqpoll_idle_ms.is_some() && engine != Engine::Uring {
            bail!(
                "disk {}: sqpoll needs the io_uring engine (engine=uring)",
                disk.path.display()
            );
        }
        if disk.writes == Some(UringWrites::Ring) && engine != Engine::Uring {
            bail!(
                "disk {}: writes=ring needs the io_uring engine (engine=uring)",
                disk.path.display()
            );
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.readonly)
            .open(&disk.path)
            .with_context(|| format!("cannot open disk image {}", disk.path.display()))?;
        let block = Block::new(
            file,
            BlockConfig {
                readonly: disk.readonly,
                serial: format!("microvm-disk{i}"),
                num_queues: u16::from(cfg.cpus).min(8),
                queue_size: QUEUE_SIZE,
                size_max: cfg
                    .restricted_dma
                    .as_ref()
                    .map_or(u32::MAX, |p| p.max_mapping_size()),
                rate_limit: disk.rate_limit,
                engine,
                uring: UringOptions {
                    sqpoll_idle_ms: disk.sqpoll_idle_ms,
                    inline_writes: disk.writes != Some(UringWrites::Ring),
                    // IOSQE_ASYNC and a registered file: bench variants only (docs/results).
                    ..UringOptions::default()
                },
            },
        )
        .map_err(|e| match e {
            BlockError::Locked => anyhow!(
                "disk image {} is in use by another process (locked)",
                disk.path.display()
            ),
            e => anyhow!("cannot set up disk {}: {e}", disk.path.display()),
        })?;
        let writes = match (engine, disk.writes) {
            (Engine::Uring, Some(UringWrites::Ring)) => ", writes through the ring",
            (Engine::Uring, _) => ", writes inline",
            _ => "",
        };
        match disk.sqpoll_idle_ms {
            Some(ms) => log::info!(
                "disk {}: {engine} engine{writes}, SQPOLL (a kernel thread polls the ring, idle \
                 {ms} ms)",
                disk.path.display()
            ),
            None => log::info!("disk {}: {engine} engine{writes}", disk.path.display()),
        }
        devs.push(Box::new(block));
    }
    for (i, net) in cfg.nets.iter().enumerate() {
        devs.push(Box::new(net_device(net, i)?));
    }
    if cfg.rng {
        devs.push(Box::new(Rng::new()));
    }
    Ok(devs)
}

/// A device that gets its own thread and event loop (virtio-blk: its I/O must not hold up the
/// other devices, the console and signals on the main event loop, nor be held up by them).
pub struct Threaded {
    /// The thread's name, as in seccomp reports (`blk0`, ...).
    pub name: String,
    pub transport: Arc<Mutex<MmioTransport>>,
}

fn kind_name(device_type: u32) -> &'static str {
    match device_type {
        devices::virtio::TYPE_BLOCK => "block",
        devices::virtio::TYPE_NET => "net",
        devices::virtio::TYPE_RNG => "rng",
        _ => "other",
    }
}

/// Creates the devices, puts them on `mmio` and on `events` (or, for virtio-blk, in `threaded`
/// for a thread of their own), and announces them on `cmdline`. Returns each device's queue
/// counters (for `--metrics`).
pub fn attach(
    cfg: &VmConfig,
    vm: &VmFd,
    dma: &Dma,
    mmio: &mut Bus,
    events: &mut EventManager<Subscriber>,
    threaded: &mut Vec<Threaded>,
    cmdline: &mut Cmdline,
) -> Result<Vec<DeviceCounters>> {
    let devs = build_devices(cfg)?;
    let mut counters = Vec::new();
    if devs.len() > IRQS.len() {
        bail!(
            "{} virtio devices requested; microvm supports at most {}",
            devs.len(),
            IRQS.len()
        );
    }
    for (index, dev) in devs.into_iter().enumerate() {
        let base = MMIO_BASE + index as u64 * MMIO_SIZE;
        let irq = IRQS[index];
        let irqfd = EventFd::new(0).context("cannot create a device irqfd")?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|e| anyhow!("cannot register the irqfd for IRQ {irq}: {e}"))?;
        let transport = MmioTransport::new(
            dev,
            dma.clone(),
            irqfd,
            MmioOptions {
                access_platform: cfg.guest_swiotlb,
                device_index: index as u16,
            },
        )
        .context("cannot create a virtio-mmio transport")?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), q as u32)
                .map_err(|e| anyhow!("cannot register the ioeventfd of queue {q}: {e}"))?;
        }
        let is_blk = transport.device_type() == devices::virtio::TYPE_BLOCK;
        counters.push(DeviceCounters {
            index,
            kind: kind_name(transport.device_type()),
            queues: transport.queue_counters().to_vec(),
        });
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, MMIO_SIZE, transport.clone())?;
        if is_blk {
            threaded.push(Threaded {
                name: format!("blk{}", threaded.len()),
                transport,
            });
        } else {
            events.add_subscriber(transport);
        }
        cmdline
            .add_virtio_mmio_device(MMIO_SIZE, vm_memory::GuestAddress(base), irq, None)
            .map_err(|e| anyhow!("kernel command line too long for the virtio devices: {e}"))?;
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
        assert_eq!(default_mac(0), [2, 0, 0, 0, 0, 1]);
    }
}
