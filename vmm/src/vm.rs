//! Assembles a VM from its configuration: KVM, memory, boot, devices, vCPU threads, and the
//! event loop that runs until the guest reboots or powers off.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::config::VmConfig;
use crate::exit::{ExitReason, VmExit};
use crate::layout::*;
use crate::legacy::{AcpiPm, AcpiReset, BootTimer, PvPanic, I8042};
use crate::metrics::{MetricsWriter, Smaps, Sources};
use crate::prometheus::MetricsSocket;
use crate::seccomp::{Filters, SeccompMode, ThreadKind};
use crate::serial::{Console, InputDrained, IrqTrigger, SerialPort, StdinInput};
use crate::signals::Signals;
use crate::vcpu::{self, Vcpu};
use crate::{acpi, boot, cpu, memory, mptable, virtio};
use devices::bus::Bus;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wakes the event loop when a thread ends the VM.
struct ExitWatcher {
    exit: Arc<VmExit>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.exit.evt, EventSet::IN)) {
            log::error!("cannot watch the VM exit event: {e:?}");
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.evt.read();
    }
}

fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|e| {
        anyhow!("cannot open /dev/kvm: {e} (is KVM enabled, and may this user open /dev/kvm?)")
    })?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::SetTssAddr, "TSS address"),
        (Cap::Pit2, "in-kernel PIT"),
    ] {
        if !kvm.check_extension(cap) {
            bail!("KVM lacks a capability microvm needs: {name}");
        }
    }
    Ok(kvm)
}

/// Iterations of the start-up probe loop: a few thousand instructions, microseconds with
/// hardware virtualization, a few ms where `/dev/kvm` emulates ring-0 code.
const PROBE_LOOPS: u64 = 4_000;

/// Warns (and goes on) when `/dev/kvm` runs guest kernel code far slower than hardware
/// virtualization: there a Linux guest takes minutes to print anything, or never boots, and
/// silence would look like a hang.
fn report_kvm_speed(probe: kvm_probe::PendingProbe) {
    let p = probe.finish();
    log::debug!(
        "KVM probe: {p} (took {} us, beside the set-up)",
        p.took.as_micros()
    );
    if p.is_hardware_speed() {
        return;
    }
    if !p.is_emulated() {
        log::info!(
            "KVM runs guest kernel code at {p} (hardware virtualization: ~1 ns, ~1x; nested \
             virtualization?): guests boot, more slowly"
        );
    } else {
        log::warn!(
            "this host's KVM runs guest kernel code far slower than hardware virtualization \
             ({p}; hardware virtualization: ~1 ns, ~1x): a Linux guest may take minutes to print anything, or never \
             boot. Is this a VM without nested virtualization? Boot through the nested test \
             machine instead: `cargo run -p microvm-tests --bin guest-run -- ARGS` (README, \
             \"When something goes wrong\"; --no-kvm-probe skips this check)"
        );
    }
}

fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd> {
    let vm = kvm
        .create_vm()
        .map_err(|e| anyhow!("KVM refused to create a VM: {e}"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|e| anyhow!("KVM_SET_TSS_ADDR failed: {e}"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| anyhow!("KVM_SET_IDENTITY_MAP_ADDR failed: {e}"))?;
    vm.create_irq_chip()
        .map_err(|e| anyhow!("KVM_CREATE_IRQCHIP failed: {e}"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| anyhow!("KVM_CREATE_PIT2 failed: {e}"))?;
    disable_pit_reinjection(&vm)?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM (the process
        // exits with the VM), and it does not overlap another slot.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| anyhow!("KVM refused guest memory region {slot}: {e}"))?;
    }
    Ok(vm)
}

// Declared `_IO` in <linux/kvm.h> although it takes a `struct kvm_reinject_control *`.
vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// Drops PIT ticks the guest missed instead of replaying them. Replaying lets a slow (nested or
/// overcommitted) host fall ever further behind a periodic PIT until it livelocks in the
/// reinjection thread; Linux keeps time with kvm-clock, not by counting PIT ticks.
fn disable_pit_reinjection(vm: &VmFd) -> Result<()> {
    let ctl = kvm_bindings::kvm_reinject_control::default();
    // SAFETY: KVM_REINJECT_CONTROL reads a `kvm_reinject_control` that outlives the call; the
    // return value is checked.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_REINJECT_CONTROL(), &ctl) };
    if ret < 0 {
        bail!(
            "KVM_REINJECT_CONTROL failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn kernel_cmdline(cfg: &VmConfig) -> Result<Cmdline> {
    Cmdline::try_from(&cfg.cmdline, CMDLINE_MAX)
        .map_err(|e| anyhow!("invalid kernel command line {:?}: {e}", cfg.cmdline))
}

/// Runs the VM to its end; `Ok` with why it ended.
pub fn run(cfg: &VmConfig, start: Instant) -> Result<ExitReason> {
    let filters = Filters::new(cfg.seccomp, cfg.seccomp_selftest)?;
    if cfg.seccomp != SeccompMode::Trap {
        log::warn!("seccomp filters: {} (not the default, trap)", cfg.seccomp);
    }
    let kvm = open_kvm()?;
    // Beside the set-up (its own VM, on its own thread), reported before the guest starts.
    let probe = cfg
        .kvm_probe
        .then(|| kvm_probe::start(PROBE_LOOPS, Duration::from_secs(2)));
    let mem = memory::create(cfg.memory_mib)?;
    let vm = create_vm(&kvm, &mem)?;
    let exit = Arc::new(VmExit::new().context("cannot create the exit event")?);

    let mut events: EventManager<Subscriber> =
        EventManager::new().context("cannot create the event loop")?;
    let mut mmio = Bus::default();
    let mut cmdline = kernel_cmdline(cfg)?;
    let report = virtio::create_dma(cfg, &mem, &filters)?;
    let mut threaded = Vec::new();
    let device_counters = virtio::attach(
        cfg,
        &vm,
        &report.dma,
        &mut mmio,
        &mut events,
        &mut threaded,
        &mut cmdline,
    )?;
    if cfg.guest_swiotlb {
        cmdline
            .insert_str("swiotlb=force")
            .map_err(|e| anyhow!("kernel command line too long: {e}"))?;
    }
    // The pools' worker starts once the devices (and their wake-up eventfds, which it writes)
    // exist, before the guest runs.
    if let Some(swiotlb) = report.dma.swiotlb() {
        let worker_filters = filters.clone();
        swiotlb
            .start_worker(Some(Box::new(move || {
                worker_filters
                    .enter(ThreadKind::Worker, "swiotlb-worker")
                    .map_err(|e| e.to_string())
            })))
            .map_err(|e| anyhow!("cannot start the restricted-DMA pool worker: {e}"))?;
    }
    let signals = Signals::new(report.clone(), exit.clone())
        .context("cannot set up the signal handlers (SIGUSR1, SIGTERM, SIGINT, SIGHUP)")?;
    events.add_subscriber(Arc::new(Mutex::new(signals)));

    let rsdp_addr = acpi::create_tables(&mem, cfg.cpus)?;
    mptable::write(&mem, cfg.cpus)?;
    let entry = boot::setup(
        &mem,
        &boot::BootSetup {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cmdline,
            rsdp_addr,
        },
    )?;

    // Legacy devices on the port I/O bus.
    let serial_irq = EventFd::new(0).context("cannot create the serial irqfd")?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|e| anyhow!("cannot register the serial irqfd: {e}"))?;
    let (drained, drained_watch) =
        InputDrained::new().context("cannot create the console input event")?;
    let serial = Arc::new(Mutex::new(SerialPort(vm_superio::Serial::with_events(
        IrqTrigger(serial_irq),
        drained,
        Console,
    ))));
    let mut pio = Bus::default();
    pio.insert(u64::from(SERIAL_PORT), 8, serial.clone())?;
    pio.insert(
        u64::from(I8042_PORT),
        5,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(BOOT_MARKER_PORT),
        1,
        Arc::new(Mutex::new(BootTimer::new(start))),
    )?;
    pio.insert(
        u64::from(ACPI_PM1_PORT),
        ACPI_PM1_LEN,
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(ACPI_RESET_PORT),
        1,
        Arc::new(Mutex::new(AcpiReset::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(PVPANIC_PORT),
        1,
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
    )?;
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);

    events.add_subscriber(Arc::new(Mutex::new(ExitWatcher { exit: exit.clone() })));
    events.add_subscriber(Arc::new(Mutex::new(StdinInput::new(serial, drained_watch))));

    // vCPUs: CPUID before MSRs, since KVM derives the valid MSRs from the guest CPUID.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| anyhow!("KVM_GET_SUPPORTED_CPUID failed: {e}"))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    vcpu::install_kick_handler().context("cannot install the vCPU kick signal handler")?;
    if let Some(p) = probe {
        report_kvm_speed(p);
    }
    let mut threads = Vec::new();
    let mut exit_counters = Vec::new();
    for id in 0..cfg.cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| anyhow!("KVM refused to create vCPU {id}: {e}"))?;
        let mut cpuid = supported.clone();
        cpu::filter_cpuid(&mut cpuid, id, cfg.cpus, tsc_deadline);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| anyhow!("KVM_SET_CPUID2 failed on vCPU {id}: {e}"))?;
        cpu::setup_msrs(&fd)?;
        cpu::setup_fpu(&fd)?;
        cpu::setup_lapic(&fd)?;
        if id == 0 {
            cpu::setup_boot_regs(&fd, &mem, entry)?;
        }
        let exits = Arc::new(vcpu::ExitCounters::default());
        exit_counters.push(exits.clone());
        let vcpu = Vcpu {
            id,
            exits,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            mem: mem.clone(),
        };
        let filters = filters.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // Before the first KVM_RUN: everything after it is driven by the guest.
                    if let Err(e) = filters.enter(ThreadKind::Vcpu, &format!("vcpu{id}")) {
                        vcpu.exit.trigger(ExitReason::Error(e.to_string()));
                        return;
                    }
                    vcpu.run()
                })
                .context("cannot start a vCPU thread")?,
        );
    }
    let mut device_threads = Vec::new();
    for dev in threaded {
        device_threads.push(DeviceThread::spawn(dev, &filters, &exit)?);
    }
    let mut smaps = Smaps::open();
    // Opened before the main thread's filter, which allows no open.
    let sources = Arc::new(Sources {
        dma: report.dma.clone(),
        devices: device_counters,
        vcpus: exit_counters,
        statm: std::fs::File::open("/proc/self/statm").ok(),
        start,
    });
    let metrics = match &cfg.metrics {
        Some(m) => {
            let w = MetricsWriter::new(m, sources.clone())?;
            filters.allow_write(&[ThreadKind::Main], w.as_raw_fd());
            let w = Arc::new(Mutex::new(w));
            events.add_subscriber(w.clone());
            Some(w)
        }
        None => None,
    };
    if let Some(path) = &cfg.metrics_socket {
        let s = MetricsSocket::bind(path, sources)?;
        events.add_subscriber(Arc::new(Mutex::new(s)));
    }
    log::debug!("VM set up in {} us", start.elapsed().as_micros());

    // Set-up is over: from here on the main thread only serves the event loop.
    filters.enter(ThreadKind::Main, "main")?;
    loop {
        if let Some(reason) = exit.reason() {
            log::info!("VM exit: {reason:?}");
            stop_vcpus(threads);
            DeviceThread::stop_all(device_threads);
            if let Some(m) = &metrics {
                m.lock().unwrap_or_else(|e| e.into_inner()).write_line(true);
            }
            crate::metrics::log_memory_overhead(&mut smaps, &mem, &report.dma);
            report.log();
            return Ok(reason);
        }
        events
            .run()
            .map_err(|e| anyhow!("event loop failed: {e:?}"))?;
    }
}

/// A device on a thread of its own, with its own event loop (`virtio::Threaded`).
struct DeviceThread {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
}

/// Drains a device thread's stop event (the loop then sees the VM's exit and ends).
struct StopWatcher(Arc<EventFd>);

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.as_ref(), EventSet::IN)) {
            log::error!("cannot watch a device thread's stop event: {e:?}");
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

impl DeviceThread {
    /// Starts `dev`'s thread: its event loop is created (epoll) and its subscribers registered
    /// before it installs its seccomp filter; it serves the device until the VM ends.
    fn spawn(dev: virtio::Threaded, filters: &Filters, exit: &Arc<VmExit>) -> Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).context("cannot create a stop event")?);
        let (filters, exit, watch) = (filters.clone(), exit.clone(), stop.clone());
        let name = dev.name.clone();
        let handle = thread::Builder::new()
            .name(dev.name.clone())
            .spawn(move || {
                let fail = |what: String| exit.trigger(ExitReason::Error(what));
                let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
                    match EventManager::new() {
                        Ok(e) => e,
                        Err(e) => {
                            return fail(format!("{name}: cannot create its event loop: {e:?}"))
                        }
                    };
                events.add_subscriber(dev.transport);
                events.add_subscriber(Arc::new(Mutex::new(StopWatcher(watch))));
                if let Err(e) = filters.enter(ThreadKind::Device, &name) {
                    return fail(e.to_string());
                }
                while exit.reason().is_none() {
                    if let Err(e) = events.run() {
                        return fail(format!("{name}: event loop failed: {e:?}"));
                    }
                }
            })
            .context("cannot start a device thread")?;
        Ok(DeviceThread { stop, handle })
    }

    /// Wakes every device thread (the VM has ended: each sees it and returns) and waits for
    /// them, bounded like the vCPUs: a device in the middle of a request finishes it first.
    fn stop_all(threads: Vec<DeviceThread>) {
        for t in &threads {
            if let Err(e) = t.stop.write(1) {
                log::debug!("cannot wake {:?}: {e}", t.handle.thread().name());
            }
        }
        let start = Instant::now();
        while threads.iter().any(|t| !t.handle.is_finished()) {
            if start.elapsed() >= VCPU_STOP_TIMEOUT {
                log::warn!("device threads did not stop within {VCPU_STOP_TIMEOUT:?}; exiting");
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How long the vCPU threads get to leave KVM_RUN once kicked.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_millis(500);

/// Kicks every vCPU thread out of KVM_RUN (the VM has ended: each sees it and returns) and waits
/// for them, bounded: one that does not stop in time is reported and left to the process exit.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    let start = Instant::now();
    let mut running = threads;
    loop {
        running.retain(|t| {
            if t.is_finished() {
                return false;
            }
            // Again on every round: a kick is cheap, and one thread may be between checks.
            if let Err(e) = t.kill(vcpu::kick_signal()) {
                log::debug!("cannot kick {:?}: {e}", t.thread().name());
            }
            true
        });
        if running.is_empty() {
            log::debug!("vCPUs stopped in {} us", start.elapsed().as_micros());
            return;
        }
        if start.elapsed() >= VCPU_STOP_TIMEOUT {
            let names: Vec<_> = running.iter().filter_map(|t| t.thread().name()).collect();
            log::warn!(
                "vCPU threads {names:?} did not leave KVM_RUN within {VCPU_STOP_TIMEOUT:?} of a \
                 kick; exiting without them"
            );
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}
