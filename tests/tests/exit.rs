//! How microvm ends, through the harness (direct or nested path): every way out ends the
//! process promptly whatever state the vCPUs are in, with the documented status and log line.
//!
//! The bound asserted is a hang detector (5 s, on an emulated machine), not a performance
//! target: each test prints the measured time from the trigger to the process exit.

use std::time::Duration;

use microvm_tests::{kernel_artifacts, Arg, Harness, KernelArtifacts, Outcome, Run, StdioMode};

/// Longer than any prompt exit, even on the nested path; shorter than a hang.
const EXIT_BOUND: Duration = Duration::from_secs(5);

fn setup() -> (Harness, KernelArtifacts) {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    (h, k)
}

fn run(
    h: &Harness,
    k: &KernelArtifacts,
    cmdline: &str,
    more: &[&str],
    tweak: impl FnOnce(&mut Run),
) -> Outcome {
    let mut args = k.boot_args(format!("console=ttyS0 panic=1 {cmdline}"));
    args.extend(more.iter().map(|s| Arg::s(*s)));
    let mut r = Run::microvm(args);
    r.timeout = Duration::from_secs(90);
    tweak(&mut r);
    let o = h
        .run(&r)
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    assert!(!o.timed_out, "microvm did not exit\n{}", o.describe());
    assert!(!o.stdout.contains("panicked at"), "{}", o.describe());
    o
}

/// Time from `since` (from program start) to the process exit.
fn exit_after(o: &Outcome, since: Duration, what: &str) -> Duration {
    let t = o.elapsed.saturating_sub(since);
    eprintln!("{what}: microvm exited {t:?} after it ({} path)", o.path);
    assert!(t < EXIT_BOUND, "{what}: exit took {t:?}\n{}", o.describe());
    t
}

/// A guest whose init spins in a shell loop on vCPU 0, with vCPU 1 idle (halted in KVM) and
/// vCPU 2 never started (`maxcpus=2`: it waits for a SIPI in KVM_RUN forever). SIGTERM must
/// get all three out of KVM_RUN and end microvm with 143.
#[test]
fn sigterm_stops_spinning_halted_and_sipi_waiting_vcpus() {
    let (h, k) = setup();
    // The mark is computed by the shell, so the kernel's echo of its command line is no match.
    let o = run(
        &h,
        &k,
        r#"reboot=k maxcpus=2 rdinit=/bin/sh -- -c "echo SPIN$((6*7))NING; while :; do :; done""#,
        &["--cpus", "3"],
        |r| r.signal_at_mark = Some(("SPIN42NING".into(), libc::SIGTERM)),
    );
    let sent = o
        .signalled
        .unwrap_or_else(|| panic!("the guest never spun\n{}", o.describe()));
    assert_eq!(o.status, Some(143), "{}", o.describe());
    assert!(
        o.stderr.contains("SIGTERM received: stopping the VM"),
        "{}",
        o.describe()
    );
    exit_after(&o, sent, "SIGTERM to a spinning/halted/SIPI-waiting guest");
}

/// A seccomp violation on the main thread (the hidden self-test makes one right after the
/// filter is on, while vCPU 0 boots and vCPU 1 waits for its SIPI), with microvm on a terminal
/// as a person runs it: status 148, one line, and the process gone at once.
#[test]
fn a_seccomp_trap_ends_microvm_at_once_on_a_terminal() {
    let (h, k) = setup();
    let line = "made a forbidden system call";
    let o = run(
        &h,
        &k,
        "reboot=k",
        &["--cpus", "2", "--seccomp-selftest=main"],
        |r| {
            r.stdio = StdioMode::Terminal;
            r.marks.push(line.into());
        },
    );
    assert_eq!(o.status, Some(148), "{}", o.describe());
    let at = *o
        .marks
        .get(line)
        .unwrap_or_else(|| panic!("no violation line\n{}", o.describe()));
    exit_after(&o, at, "seccomp trap on the main thread");
}

/// The guest reboots through the i8042 while its second vCPU still waits for a SIPI
/// (`maxcpus=1`); on a terminal, where the vCPU thread's log line once needed a forbidden
/// ioctl. Status 0, the line naming the i8042.
#[test]
fn guest_reboot_with_a_vcpu_waiting_for_sipi_exits_0_promptly() {
    let (h, k) = setup();
    let line = "guest requested reset through the i8042";
    let o = run(
        &h,
        &k,
        "reboot=k maxcpus=1 microvm.exit=reboot",
        &["--cpus", "2"],
        |r| {
            r.stdio = StdioMode::Terminal;
            r.marks.push(line.into());
        },
    );
    assert_eq!(o.status, Some(0), "{}", o.describe());
    let at = *o
        .marks
        .get(line)
        .unwrap_or_else(|| panic!("no i8042 reset line\n{}", o.describe()));
    exit_after(&o, at, "i8042 reset with a vCPU waiting for SIPI");
}

/// `reboot=t` makes Linux reboot by triple fault: microvm cannot tell that from a crash, so it
/// says "triple fault" and exits 3 (README: Exit status).
#[test]
fn a_guest_triple_fault_exits_3_with_its_own_line() {
    let (h, k) = setup();
    let o = run(
        &h,
        &k,
        "reboot=t microvm.exit=reboot",
        &["--cpus", "2"],
        |_| {},
    );
    assert_eq!(o.status, Some(3), "{}", o.describe());
    assert!(o.stderr.contains("guest triple fault"), "{}", o.describe());
}

/// `reboot=a` resets through the FADT's reset register: status 0, its own line.
#[test]
fn the_acpi_reset_register_reboots_with_status_0() {
    let (h, k) = setup();
    let o = run(
        &h,
        &k,
        "reboot=a microvm.exit=reboot",
        &["--cpus", "2"],
        |_| {},
    );
    assert_eq!(o.status, Some(0), "{}", o.describe());
    assert!(
        o.stderr
            .contains("guest requested reset through the ACPI reset register"),
        "{}",
        o.describe()
    );
}
