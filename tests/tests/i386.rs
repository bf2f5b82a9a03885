//! A 32-bit guest: the kernel `make tinyconfig` gives on an x86_64 host without
//! `ARCH=x86_64` (resources/build-kernel.sh --variant i386: the main fragment minus the 64-bit
//! options), whose bzImage has no 64-bit entry (`XLF_KERNEL_64` clear), so microvm enters it
//! through the 32-bit boot protocol. A 32-bit kernel cannot run the busybox initramfs (64-bit
//! programs): the init is resources/guest/init32/init.c (resources/build-init32.sh), a static
//! i386 program that prints `I386-*` lines and powers off through reboot(2).
//!
//! Each cell checks: microvm logged the 32-bit entry; the init ran (`I386-INIT-OK`) on a 32-bit
//! kernel (`uname -m` is i686); all vCPUs online; the command line intact; with `--rng`, 16
//! bytes from virtio-rng (virtio-mmio at 0xd0000000); the CPUs found in the ACPI MADT, or with
//! `acpi=off` in the MP table; no step failed; the initrd not moved by the kernel; the kernel
//! powered off (ACPI; rebooted with `acpi=off`) and microvm exited 0, within [`TIME_BOUND`].

use std::time::Duration;

use microvm_tests::{
    init32_initramfs, kernel_variant_artifacts, Arg, Harness, Outcome, Run, StdioMode,
};

const TIME_BOUND: Duration = Duration::from_secs(90);
const INIT_OK: &str = "I386-INIT-OK";

struct Cell {
    name: &'static str,
    cpus: u8,
    memory_mib: u32,
    stdio: StdioMode,
    /// `--rng`: a virtio-rng device (virtio-mmio at 0xd0000000) the init reads 16 bytes from.
    rng: bool,
    /// `acpi=off i386.exit=reboot`: the CPUs come from the MP table, and the init reboots
    /// (`reboot=k`: the i8042) since without ACPI the kernel cannot power off.
    acpi_off: bool,
}

fn run_cell(cell: &Cell) -> Outcome {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let kernel = kernel_variant_artifacts("i386").unwrap_or_else(|e| {
        panic!(
            "cannot build the 32-bit guest kernel (resources/build-kernel.sh --variant i386): \
             {e:#}"
        )
    });
    let initrd = init32_initramfs().unwrap_or_else(|e| {
        panic!("cannot build the 32-bit init (resources/build-init32.sh): {e:#}")
    });
    let mut cmdline = format!("console=ttyS0 reboot=k panic=1 microvm.cell={}", cell.name);
    if cell.acpi_off {
        cmdline.push_str(" acpi=off i386.exit=reboot");
    }
    let mut run = Run::microvm(vec![
        Arg::s("--kernel"),
        Arg::file(&kernel.bzimage),
        Arg::s("--initrd"),
        Arg::file(&initrd),
        Arg::s("--cmdline"),
        Arg::s(&cmdline),
        Arg::s("--cpus"),
        Arg::s(cell.cpus.to_string()),
        Arg::s("--memory"),
        Arg::s(cell.memory_mib.to_string()),
    ]);
    if cell.rng {
        run.args.push(Arg::s("--rng"));
    }
    run.stdio = cell.stdio;
    run.timeout = TIME_BOUND;
    run.marks = vec![INIT_OK.to_string()];
    let o = h
        .run(&run)
        .unwrap_or_else(|e| panic!("{}: harness run failed: {e:#}", cell.name));
    eprintln!(
        "i386: {} path={} init={} total={:.1}s status={:?} signal={:?} timed_out={} memtotal={:?}",
        cell.name,
        o.path,
        o.marks
            .get(INIT_OK)
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into()),
        o.elapsed.as_secs_f64(),
        o.status,
        o.signal,
        o.timed_out,
        o.value("I386-MEMTOTAL"),
    );
    check_cell(cell, &cmdline, &o);
    o
}

fn check_cell(cell: &Cell, cmdline: &str, o: &Outcome) {
    let name = cell.name;
    let d = o.describe();
    assert!(!o.timed_out, "{name}: not done within {TIME_BOUND:?}\n{d}");
    // microvm's log (stderr; on a terminal it arrives in stdout) says which entry it took.
    let log = format!("{}{}", o.stdout, o.stderr);
    assert!(
        log.contains("bzImage without XLF_KERNEL_64") && log.contains("32-bit boot protocol"),
        "{name}: microvm did not log the 32-bit entry\n{d}"
    );
    o.assert_microvm_not_stopped(name);
    assert!(
        o.stdout.contains(INIT_OK),
        "{name}: the 32-bit init never ran\n{d}"
    );
    let uname = o
        .value("I386-UNAME")
        .unwrap_or_else(|| panic!("{name}: no I386-UNAME line\n{d}"));
    let machine = uname.split_whitespace().last().unwrap_or("");
    assert!(
        matches!(machine, "i386" | "i486" | "i586" | "i686"),
        "{name}: not a 32-bit kernel: uname says {uname:?}\n{d}"
    );
    let online = o
        .value("I386-CPUS-ONLINE")
        .unwrap_or_else(|| panic!("{name}: no I386-CPUS-ONLINE line\n{d}"));
    let want = if cell.cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cell.cpus - 1)
    };
    assert_eq!(online.trim(), want, "{name}: vCPUs online\n{d}");
    let seen = o
        .value("I386-CMDLINE")
        .unwrap_or_else(|| panic!("{name}: no I386-CMDLINE line\n{d}"));
    // microvm appends each virtio device's window and IRQ.
    let want = if cell.rng {
        format!("{cmdline} virtio_mmio.device=4K@0xd0000000:5")
    } else {
        cmdline.to_string()
    };
    assert_eq!(seen.trim(), want, "{name}: command line changed\n{d}");
    let rng = o
        .value("I386-RNG")
        .unwrap_or_else(|| panic!("{name}: no I386-RNG line\n{d}"));
    if cell.rng {
        assert!(
            rng.trim().starts_with("virtio_rng"),
            "{name}: virtio-rng is not the guest's hw_random: {rng:?}\n{d}"
        );
        let bytes = o
            .value("I386-HWRNG")
            .unwrap_or_else(|| panic!("{name}: nothing read from /dev/hwrng\n{d}"));
        let bytes = bytes.trim();
        assert!(
            bytes.len() == 32
                && bytes.bytes().all(|b| b.is_ascii_hexdigit())
                && bytes != "0".repeat(32),
            "{name}: 16 random bytes from virtio-rng, got {bytes:?}\n{d}"
        );
    } else {
        assert_eq!(
            rng.trim(),
            "none",
            "{name}: no hw_random without --rng\n{d}"
        );
    }
    assert!(
        o.value("I386-ERROR").is_none(),
        "{name}: a step of the 32-bit init failed\n{d}"
    );
    if cell.acpi_off {
        assert!(
            o.stdout.contains("Intel MultiProcessor Specification")
                && !o.stdout.contains("Using ACPI (MADT)"),
            "{name}: the CPUs did not come from the MP table\n{d}"
        );
        assert!(
            o.stdout.contains("I386-INIT-DONE reboot") && o.stdout.contains("reboot: Restarting"),
            "{name}: the guest did not reboot\n{d}"
        );
    } else {
        assert!(
            o.stdout.contains("Using ACPI (MADT) for SMP"),
            "{name}: the CPUs did not come from the ACPI MADT\n{d}"
        );
        assert!(
            o.stdout.contains("I386-INIT-DONE poweroff") && o.stdout.contains("reboot: Power down"),
            "{name}: the guest did not power off\n{d}"
        );
    }
    assert!(
        !o.stdout.contains("Kernel panic"),
        "{name}: the guest panicked\n{d}"
    );
    // The initrd was placed where a 32-bit kernel maps it: the kernel did not have to move it.
    assert!(
        !o.stdout.contains("Move RAMDISK"),
        "{name}: the kernel relocated the initrd\n{d}"
    );
    assert_eq!(o.signal, None, "{name}: microvm died from a signal\n{d}");
    assert_eq!(
        o.status,
        Some(0),
        "{name}: a guest power off or reboot must exit 0\n{d}"
    );
    assert!(o.elapsed < TIME_BOUND, "{name}: took {:?}\n{d}", o.elapsed);
}

/// MemTotal in KiB from the `I386-MEMTOTAL=MemTotal:  N kB` line.
fn memtotal_kib(o: &Outcome) -> u64 {
    let line = o.value("I386-MEMTOTAL").unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {line:?}\n{}", o.describe()))
}

#[test]
fn i386_bzimage_1cpu_pty_poweroff() {
    let o = run_cell(&Cell {
        name: "i386_bzimage_1cpu_pty_poweroff",
        cpus: 1,
        memory_mib: 256,
        stdio: StdioMode::Terminal,
        rng: false,
        acpi_off: false,
    });
    assert_eq!(o.stderr, "", "stderr is the terminal too\n{}", o.describe());
}

/// With virtio-rng: the 32-bit driver finds the virtio-mmio window at 0xd0000000 from the
/// command line and reads through the ring.
#[test]
fn i386_bzimage_2cpus_pipes_rng_poweroff() {
    run_cell(&Cell {
        name: "i386_bzimage_2cpus_pipes_rng_poweroff",
        cpus: 2,
        memory_mib: 256,
        stdio: StdioMode::Pipes,
        rng: true,
        acpi_off: false,
    });
}

/// 2 GiB of RAM: more than a 32-bit kernel without HIGHMEM maps (about 890 MiB with the 3G/1G
/// split). The rest stays unused, the initrd must still be placed inside what it maps.
#[test]
fn i386_bzimage_2cpus_2g_pipes_poweroff() {
    let o = run_cell(&Cell {
        name: "i386_bzimage_2cpus_2g_pipes_poweroff",
        cpus: 2,
        memory_mib: 2048,
        stdio: StdioMode::Pipes,
        rng: false,
        acpi_off: false,
    });
    let kib = memtotal_kib(&o);
    assert!(
        (512 << 10..1 << 20).contains(&kib),
        "MemTotal {kib} KiB: want the kernel's low memory (under 1 GiB, over 512 MiB)\n{}",
        o.describe()
    );
}

/// Without ACPI (`acpi=off`): the 32-bit kernel finds both vCPUs in microvm's MP table and
/// reboots through the i8042.
#[test]
fn i386_bzimage_2cpus_pty_acpi_off_reboot() {
    run_cell(&Cell {
        name: "i386_bzimage_2cpus_pty_acpi_off_reboot",
        cpus: 2,
        memory_mib: 256,
        stdio: StdioMode::Terminal,
        rng: false,
        acpi_off: true,
    });
}
