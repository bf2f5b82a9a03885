//! Guest compatibility matrix: which guests microvm boots, and how they end, through the
//! harness (direct or nested path). One test per cell; tests/README.md has the table with
//! the measured results.
//!
//! Dimensions:
//! - kernel: `own` (resources/kernel/microvm-x86_64-6.1.config: ACPI, pvpanic), `noacpi`
//!   (the same plus resources/kernel/noacpi.config: no ACPI, CPUs from the MP table, no
//!   pvpanic), `debian` (Debian's stock `linux-image-cloud-amd64` bzImage, not rebuilt);
//! - format: `bzimage`, or `pvh` (the ELF `vmlinux` booted through its PVH entry note; own
//!   and noacpi kernels only, Debian ships no vmlinux);
//! - vCPUs: 1, 2, 4 (4 on the nested path too: the outer machine has 2 vCPUs, and 4 guest
//!   vCPUs on them booted every time measured, see tests/README.md);
//! - microvm's stdin, stdout and stderr: `pty` (one pseudo-terminal, also its controlling
//!   terminal, as when run from a shell) or `pipes` (stdin an open pipe nobody writes to);
//! - how the guest ends (`microvm.exit=`): `reboot`, `poweroff` (ACPI kernels only: without
//!   ACPI Linux cannot power off, it halts), `panic` (PID 1 exits).
//!
//! Not a full cross product: every kernel x format x {1, 2} vCPUs once on a pty, 4 vCPUs once
//! per kernel, pipes once per kernel, and the exit kinds spread over those cells so that each
//! kernel ends each way it can at least once.
//!
//! Every cell checks: microvm reaches the guest's init, the guest sees the right number of
//! processors (/proc/cpuinfo) all online (/sys/devices/system/cpu/online), the command line
//! arrives intact (the guest prints /proc/cmdline), the guest ends the chosen way with
//! microvm's documented status, all within [`TIME_BOUND`]. microvm's statuses: 0 guest reboot
//! or ACPI power off, 3 guest triple fault, 4 guest panic reported through pvpanic, 1 microvm
//! error, 148 seccomp violation.

use std::path::PathBuf;
use std::time::Duration;

use microvm_tests::{
    debian_cloud_kernel, guest_initramfs, kernel_artifacts, kernel_variant_artifacts, Arg, Harness,
    Outcome, Run, StdioMode, INIT_OK,
};

/// Upper bound for one cell: microvm's start to its exit (measured where it runs, inside the
/// outer machine on the nested path). The slowest cell measured on the nested path (Debian's
/// kernel on 4 vCPUs) took up to 14 s, on a loaded machine; the harness kills microvm at
/// this bound, so a hang fails the cell.
const TIME_BOUND: Duration = Duration::from_secs(90);

/// microvm's exit status when pvpanic reports a guest panic.
const STATUS_GUEST_PANIC: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// resources/build-kernel.sh: ACPI, pvpanic (ACPI QEMU0001) built in.
    Own,
    /// resources/build-kernel.sh --variant noacpi.
    NoAcpi,
    /// Debian's linux-image-cloud-amd64 bzImage (/boot/vmlinuz-*-cloud-amd64).
    Debian,
}

impl Kernel {
    /// Whether a guest panic reaches microvm (pvpanic built in and announced through ACPI).
    /// Debian's pvpanic is a module the test initramfs does not load.
    fn has_pvpanic(self) -> bool {
        self == Kernel::Own
    }
    fn has_acpi(self) -> bool {
        self != Kernel::NoAcpi
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BzImage,
    /// The ELF vmlinux, entered through its PVH note.
    Pvh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Reboot,
    PowerOff,
    Panic,
}

impl Exit {
    fn word(self) -> &'static str {
        match self {
            Exit::Reboot => "reboot",
            Exit::PowerOff => "poweroff",
            Exit::Panic => "panic",
        }
    }
}

struct Cell {
    name: &'static str,
    kernel: Kernel,
    format: Format,
    cpus: u8,
    stdio: StdioMode,
    exit: Exit,
}

/// The kernel image and initramfs of a cell; a missing or unbuildable one fails the test
/// with how to get it.
fn images(kernel: Kernel, format: Format) -> (PathBuf, PathBuf) {
    let built = |variant: Option<&str>| {
        let k = match variant {
            None => kernel_artifacts(),
            Some(v) => kernel_variant_artifacts(v),
        };
        k.unwrap_or_else(|e| {
            panic!(
                "cannot build the guest kernel{} and initramfs (resources/build-kernel.sh{}): {e:#}",
                variant.map(|v| format!(" variant {v}")).unwrap_or_default(),
                variant.map(|v| format!(" --variant {v}")).unwrap_or_default(),
            )
        })
    };
    match kernel {
        Kernel::Own | Kernel::NoAcpi => {
            let k = built((kernel == Kernel::NoAcpi).then_some("noacpi"));
            let image = match format {
                Format::BzImage => k.bzimage,
                Format::Pvh => k.vmlinux,
            };
            (image, k.initramfs)
        }
        Kernel::Debian => {
            assert_eq!(
                format,
                Format::BzImage,
                "Debian's kernel package has no vmlinux"
            );
            let image = debian_cloud_kernel()
                .unwrap_or_else(|e| panic!("the Debian guest kernel is missing: {e:#}"));
            let initrd = guest_initramfs()
                .unwrap_or_else(|e| panic!("cannot build the guest initramfs: {e:#}"));
            (image, initrd)
        }
    }
}

fn online_list(cpus: u8) -> String {
    if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    }
}

fn run_cell(cell: &Cell) -> Outcome {
    assert!(
        cell.exit != Exit::PowerOff || cell.kernel.has_acpi(),
        "{}: a kernel without ACPI cannot power off",
        cell.name
    );
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let (image, initrd) = images(cell.kernel, cell.format);
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 microvm.test=boot microvm.exit={} microvm.cell={}",
        cell.exit.word(),
        cell.name
    );
    let mut run = Run::microvm(vec![
        Arg::s("--kernel"),
        Arg::file(&image),
        Arg::s("--initrd"),
        Arg::file(&initrd),
        Arg::s("--cmdline"),
        Arg::s(&cmdline),
        Arg::s("--cpus"),
        Arg::s(cell.cpus.to_string()),
    ]);
    run.stdio = cell.stdio;
    run.timeout = TIME_BOUND;
    let o = h
        .run(&run)
        .unwrap_or_else(|e| panic!("{}: harness run failed: {e:#}", cell.name));
    let secs = |d: Option<&Duration>| {
        d.map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    };
    // The figures tests/README.md's table records.
    eprintln!(
        "compat: {} path={} init={} total={:.1}s status={:?} signal={:?} timed_out={}{}",
        cell.name,
        o.path,
        secs(o.marks.get(INIT_OK)),
        o.elapsed.as_secs_f64(),
        o.status,
        o.signal,
        o.timed_out,
        o.outer
            .as_ref()
            .map(|x| format!(" (outer machine boot {:.1}s)", x.boot.as_secs_f64()))
            .unwrap_or_default()
    );
    check_cell(cell, &cmdline, &o);
    o
}

fn check_cell(cell: &Cell, cmdline: &str, o: &Outcome) {
    let name = cell.name;
    let d = o.describe();
    assert!(!o.timed_out, "{name}: not done within {TIME_BOUND:?}\n{d}");
    assert!(o.elapsed < TIME_BOUND, "{name}: took {:?}\n{d}", o.elapsed);
    assert!(
        o.stdout.contains(INIT_OK),
        "{name}: the guest never reached its init\n{d}"
    );
    o.assert_microvm_not_stopped(name);
    if cell.stdio == StdioMode::Terminal {
        assert_eq!(o.stderr, "", "{name}: stderr is the terminal too\n{d}");
    }

    let cpus = o
        .value("MICROVM-CPUS")
        .unwrap_or_else(|| panic!("{name}: no MICROVM-CPUS line from the guest init\n{d}"));
    assert_eq!(
        cpus.trim(),
        format!("{} online={}", cell.cpus, online_list(cell.cpus)),
        "{name}: want {} processors, all online\n{d}",
        cell.cpus
    );
    let seen = o
        .value("MICROVM-CMDLINE")
        .unwrap_or_else(|| panic!("{name}: no MICROVM-CMDLINE line from the guest init\n{d}"));
    assert_eq!(seen.trim(), cmdline, "{name}: command line changed\n{d}");
    assert!(
        o.stdout.contains("MICROVM-TEST-RESULT=PASS"),
        "{name}: the guest's boot checks failed\n{d}"
    );

    assert!(
        o.stdout
            .contains(&format!("microvm-init: {}", cell.exit.word())),
        "{name}: the guest init did not get to {}\n{d}",
        cell.exit.word()
    );
    assert!(
        o.signal.is_none(),
        "{name}: microvm died from a signal\n{d}"
    );
    match cell.exit {
        Exit::Reboot | Exit::PowerOff => {
            assert_eq!(o.status, Some(0), "{name}: guest {:?}\n{d}", cell.exit);
            assert!(
                !o.stdout.contains("Kernel panic"),
                "{name}: the guest panicked\n{d}"
            );
        }
        Exit::Panic => {
            assert!(
                o.stdout.contains("Kernel panic") && o.stdout.contains("Attempted to kill init"),
                "{name}: no kernel panic message on the console\n{d}"
            );
            if cell.kernel.has_pvpanic() {
                assert_eq!(
                    o.status,
                    Some(STATUS_GUEST_PANIC),
                    "{name}: a panic reported through pvpanic must end microvm with status \
                     {STATUS_GUEST_PANIC}\n{d}"
                );
            } else {
                // No pvpanic in this guest (none without ACPI; a module in Debian's kernel
                // that the test initramfs does not load): microvm cannot tell the panic from
                // a reboot. With panic=1 reboot=k the kernel reboots a second after the panic
                // message, and microvm exits 0 as for any reboot. The panic message above
                // is what shows this cell really panicked.
                assert_eq!(
                    o.status,
                    Some(0),
                    "{name}: a guest without pvpanic reboots after its panic (panic=1)\n{d}"
                );
            }
        }
    }
}

macro_rules! cell {
    ($name:ident, $kernel:ident, $format:ident, $cpus:literal, $stdio:ident, $exit:ident) => {
        #[test]
        fn $name() {
            run_cell(&Cell {
                name: stringify!($name),
                kernel: Kernel::$kernel,
                format: Format::$format,
                cpus: $cpus,
                stdio: StdioMode::$stdio,
                exit: Exit::$exit,
            });
        }
    };
}

// --- own kernel (ACPI, pvpanic) -------------------------------------------------------------
cell!(
    own_bzimage_1cpu_pty_poweroff,
    Own,
    BzImage,
    1,
    Terminal,
    PowerOff
);
cell!(
    own_bzimage_2cpus_pty_panic,
    Own,
    BzImage,
    2,
    Terminal,
    Panic
);
cell!(own_pvh_1cpu_pty_reboot, Own, Pvh, 1, Terminal, Reboot);
cell!(own_pvh_2cpus_pty_poweroff, Own, Pvh, 2, Terminal, PowerOff);
cell!(
    own_bzimage_4cpus_pty_reboot,
    Own,
    BzImage,
    4,
    Terminal,
    Reboot
);
cell!(own_pvh_1cpu_pipes_panic, Own, Pvh, 1, Pipes, Panic);

// --- noacpi kernel (MP table, no pvpanic, no power off) -------------------------------------
cell!(
    noacpi_bzimage_1cpu_pty_reboot,
    NoAcpi,
    BzImage,
    1,
    Terminal,
    Reboot
);
cell!(
    noacpi_bzimage_2cpus_pty_panic,
    NoAcpi,
    BzImage,
    2,
    Terminal,
    Panic
);
cell!(noacpi_pvh_1cpu_pty_reboot, NoAcpi, Pvh, 1, Terminal, Reboot);
cell!(
    noacpi_pvh_2cpus_pty_reboot,
    NoAcpi,
    Pvh,
    2,
    Terminal,
    Reboot
);
cell!(
    noacpi_bzimage_4cpus_pty_reboot,
    NoAcpi,
    BzImage,
    4,
    Terminal,
    Reboot
);
cell!(noacpi_pvh_2cpus_pipes_panic, NoAcpi, Pvh, 2, Pipes, Panic);

// --- Debian's stock cloud kernel (ACPI, pvpanic only as a module) ---------------------------
cell!(
    debian_bzimage_1cpu_pty_poweroff,
    Debian,
    BzImage,
    1,
    Terminal,
    PowerOff
);
cell!(
    debian_bzimage_2cpus_pty_panic,
    Debian,
    BzImage,
    2,
    Terminal,
    Panic
);
cell!(
    debian_bzimage_4cpus_pty_reboot,
    Debian,
    BzImage,
    4,
    Terminal,
    Reboot
);
cell!(
    debian_bzimage_1cpu_pipes_reboot,
    Debian,
    BzImage,
    1,
    Pipes,
    Reboot
);
