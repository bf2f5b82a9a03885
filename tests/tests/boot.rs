//! Guest boots under microvm, through the harness (direct or nested path).
//!
//! Every test boots the resources/ guest (resources/build-kernel.sh,
//! resources/build-initramfs.sh) and checks what the guest init reports.

use std::time::{SystemTime, UNIX_EPOCH};

use microvm_tests::{kernel_artifacts, Arg, Harness, KernelArtifacts, Outcome, Run, INIT_OK};

const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

fn setup() -> (Harness, KernelArtifacts) {
    let h = match Harness::detect() {
        Ok(h) => h,
        Err(e) => panic!("cannot boot guests on this machine: {e:#}"),
    };
    let k = match kernel_artifacts() {
        Ok(k) => k,
        Err(e) => panic!("cannot build the guest kernel/initramfs: {e:#}"),
    };
    (h, k)
}

/// Boot `kernel` with the test initramfs and `BASE_CMDLINE extra`, plus `more` args.
fn boot(
    h: &Harness,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    extra: &str,
    more: &[&str],
) -> Outcome {
    let mut args = vec![
        Arg::s("--kernel"),
        Arg::file(kernel),
        Arg::s("--initrd"),
        Arg::file(initrd),
        Arg::s("--cmdline"),
        Arg::s(format!("{BASE_CMDLINE} {extra}")),
    ];
    args.extend(more.iter().map(|s| Arg::s(*s)));
    match h.run(&Run::microvm(args)) {
        Ok(o) => o,
        Err(e) => panic!("harness run failed: {e:#}"),
    }
}

fn assert_booted_and_passed(o: &Outcome) {
    assert!(
        o.stdout.contains(INIT_OK),
        "guest never reached its init\n{}",
        o.describe()
    );
    assert!(
        o.stdout.contains("MICROVM-TEST-RESULT=PASS"),
        "guest test did not pass\n{}",
        o.describe()
    );
    assert_eq!(
        o.status,
        Some(0),
        "microvm must exit 0 after guest poweroff\n{}",
        o.describe()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
}

#[test]
fn bzimage_boots_to_init() {
    let (h, k) = setup();
    let o = boot(&h, &k.bzimage, &k.initramfs, "microvm.test=boot", &[]);
    assert_booted_and_passed(&o);
    if let Some(t) = o.marks.get(INIT_OK) {
        eprintln!("bzImage: {INIT_OK} after {t:?} ({} path)", o.path);
    }
}

#[test]
fn pvh_vmlinux_boots_to_init() {
    let (h, k) = setup();
    let o = boot(&h, &k.vmlinux, &k.initramfs, "microvm.test=boot", &[]);
    assert_booted_and_passed(&o);
}

#[test]
fn two_cpus_are_online() {
    let (h, k) = setup();
    let o = boot(
        &h,
        &k.bzimage,
        &k.initramfs,
        "microvm.test=boot",
        &["--cpus", "2"],
    );
    assert_booted_and_passed(&o);
    assert_eq!(o.value("nproc").as_deref(), Some("2"), "{}", o.describe());
    assert_eq!(
        o.value("cpus-online").as_deref(),
        Some("0-1"),
        "{}",
        o.describe()
    );
}

#[test]
fn one_cpu_by_default() {
    let (h, k) = setup();
    let o = boot(&h, &k.bzimage, &k.initramfs, "microvm.test=boot", &[]);
    assert_booted_and_passed(&o);
    assert_eq!(o.value("nproc").as_deref(), Some("1"), "{}", o.describe());
    assert_eq!(
        o.value("cpus-online").as_deref(),
        Some("0"),
        "{}",
        o.describe()
    );
}

#[test]
fn memory_above_the_mmio_gap_is_usable() {
    // 4 GiB: 3 GiB below the 32-bit MMIO gap, 1 GiB from 4 GiB up. Guest RAM is mapped lazily,
    // so this fits in the nested machine too.
    let (h, k) = setup();
    let o = boot(
        &h,
        &k.bzimage,
        &k.initramfs,
        "microvm.test=boot",
        &["--memory", "4096"],
    );
    assert_booted_and_passed(&o);
    let kb: u64 = o
        .value("memtotal-kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memtotal-kb\n{}", o.describe()));
    // MemTotal excludes the kernel's own reservations: well above 3 GiB means the RAM past
    // the gap was found.
    assert!(kb > 3_700_000, "MemTotal {kb} kB\n{}", o.describe());
}

#[test]
fn initrd_and_cmdline_arrive_intact() {
    let (h, k) = setup();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let token = format!("microvm.token=t{nanos:x}");
    let extra = format!("microvm.test=boot {token}");
    let o = boot(&h, &k.bzimage, &k.initramfs, &extra, &[]);
    assert_booted_and_passed(&o);
    assert_eq!(
        o.value("payload-sha256").as_deref(),
        Some(k.payload_sha256.as_str()),
        "initramfs payload corrupted or missing\n{}",
        o.describe()
    );
    let cmdline = o.value("cmdline").unwrap_or_default();
    assert_eq!(
        cmdline.trim(),
        format!("{BASE_CMDLINE} {extra}"),
        "{}",
        o.describe()
    );
}

/// The guest init ends with `microvm.exit=MODE`; microvm must exit 0 without a panic.
fn assert_guest_exit_ends_with_status_0(mode: &str) {
    let (h, k) = setup();
    let o = boot(
        &h,
        &k.bzimage,
        &k.initramfs,
        &format!("microvm.test=boot microvm.exit={mode}"),
        &[],
    );
    assert!(
        o.stdout.contains(&format!("microvm-init: {mode}")),
        "guest did not get to {mode}\n{}",
        o.describe()
    );
    assert_eq!(o.status, Some(0), "{}", o.describe());
    assert!(!o.stderr.contains("panicked"), "{}", o.describe());
}

#[test]
fn guest_reboot_ends_with_status_0() {
    assert_guest_exit_ends_with_status_0("reboot");
}

#[test]
fn guest_poweroff_ends_with_status_0() {
    assert_guest_exit_ends_with_status_0("poweroff");
}

/// microvm must fail cleanly: non-zero exit, exactly one line on stderr, no panic.
fn assert_clean_failure(o: &Outcome, what: &str) {
    assert!(!o.timed_out, "{what}: microvm hung\n{}", o.describe());
    assert!(
        o.signal.is_none(),
        "{what}: microvm died from a signal\n{}",
        o.describe()
    );
    assert!(
        matches!(o.status, Some(c) if c != 0),
        "{what}: must exit non-zero\n{}",
        o.describe()
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{what}: panic\n{}",
        o.describe()
    );
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected a one-line error on stderr\n{}",
        o.describe()
    );
    assert!(
        !o.stdout.contains(INIT_OK),
        "{what}: a guest booted\n{}",
        o.describe()
    );
}

#[test]
fn bad_inputs_fail_cleanly() {
    let (h, k) = setup();
    // A kernel path that exists on neither the host nor in the outer machine.
    let missing = Run::microvm(vec![
        Arg::s("--kernel"),
        Arg::s("/nonexistent/microvm-test/bzImage"),
    ]);
    let o = h.run(&missing).unwrap_or_else(|e| panic!("{e:#}"));
    assert_clean_failure(&o, "missing kernel file");

    // A file that is not a kernel (the kernel's .config text).
    let not_kernel = Run::microvm(vec![Arg::s("--kernel"), Arg::file(&k.config)]);
    let o = h.run(&not_kernel).unwrap_or_else(|e| panic!("{e:#}"));
    assert_clean_failure(&o, "non-kernel file");

    // Far too little memory for the kernel.
    let tiny = Run::microvm(vec![
        Arg::s("--kernel"),
        Arg::file(&k.bzimage),
        Arg::s("--initrd"),
        Arg::file(&k.initramfs),
        Arg::s("--memory"),
        Arg::s("1"),
    ]);
    let o = h.run(&tiny).unwrap_or_else(|e| panic!("{e:#}"));
    assert_clean_failure(&o, "--memory 1");
}
