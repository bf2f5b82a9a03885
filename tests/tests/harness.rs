//! The harness itself: path choice works on this machine (or says why not).

use microvm_tests::{probe, Harness, PathKind};

#[test]
fn probe_measures_or_explains() {
    let p = probe::probe();
    eprintln!("probe: {p}");
    match &p.outcome {
        Ok(ns) => assert!(*ns > 0.0, "a measurement must be positive: {ns}"),
        Err(why) => assert!(!why.to_string().is_empty()),
    }
}

#[test]
fn detect_chooses_a_working_path() {
    let h = match Harness::detect() {
        Ok(h) => h,
        Err(e) => panic!("no way to boot guests on this machine: {e:#}"),
    };
    // The choice must agree with the probe unless forced.
    if std::env::var_os("MICROVM_TEST_PATH").is_none() {
        let hw = probe::probe().is_hardware_speed();
        assert_eq!(
            h.path() == PathKind::Direct,
            hw,
            "path {} vs probe",
            h.path()
        );
    }
}

/// The harness carries a host program, returns stdout, stderr and the exit status
/// separately, and (nested) sees /dev/kvm inside the outer machine.
#[test]
fn runs_host_program_with_separate_streams_and_status() {
    use microvm_tests::{Arg, Program, Run};
    use std::time::Duration;
    let h = Harness::detect().expect("harness");
    let run = Run {
        program: Program::Host("/bin/sh".into()),
        args: vec![
            Arg::s("-c"),
            Arg::s("test -c /dev/kvm && echo kvm-present; echo to-out; echo to-err >&2; exit 7"),
        ],
        files_to_carry: vec![],
        disks: vec![],
        timeout: Duration::from_secs(60),
        marks: vec!["to-out".into()],
        echo: false,
        stdio: microvm_tests::StdioMode::Null,
        signal_at_mark: None,
    };
    let out = h.run(&run).expect("run");
    assert_eq!(out.status, Some(7), "{}", out.describe());
    assert_eq!(out.stdout, "kvm-present\nto-out\n", "{}", out.describe());
    assert_eq!(out.stderr, "to-err\n", "{}", out.describe());
    assert!(out.marks.contains_key("to-out"));
    if let Some(outer) = &out.outer {
        eprintln!(
            "outer machine: boot {:?}, total {:?}",
            outer.boot, outer.total
        );
    }
}

/// A disk image given to the harness is writable by the program (directly, or as
/// /dev/vda of the outer machine) and the writes land in the host file.
#[test]
fn disk_writes_land_in_the_host_image() {
    use microvm_tests::{Arg, Program, Run};
    use std::time::Duration;
    let h = Harness::detect().expect("harness");
    let dir = microvm_tests::artifacts::cache_dir().expect("cache dir");
    let img = dir.join(format!("harness-disk-{}.img", std::process::id()));
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("create image");
    let run = Run {
        program: Program::Host("/bin/sh".into()),
        args: vec![
            Arg::s("-c"),
            Arg::s("printf 'HARNESS-DISK' | dd of=\"$1\" bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null && echo written"),
            Arg::s("sh"),
            Arg::disk(0),
        ],
        files_to_carry: vec![],
        disks: vec![img.clone()],
        timeout: Duration::from_secs(60),
        marks: vec![],
        echo: false,
        stdio: microvm_tests::StdioMode::Null,
        signal_at_mark: None,
    };
    let out = h.run(&run).expect("run");
    let data = std::fs::read(&img).expect("read image back");
    let _ = std::fs::remove_file(&img);
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "written\n", "{}", out.describe());
    assert_eq!(data.len(), 1 << 20, "image size changed");
    assert_eq!(&data[4096..4096 + 12], b"HARNESS-DISK");
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096 + 12..].iter().all(|&b| b == 0));
}

/// The stdio choice reaches the program where it runs (on the nested path through
/// `harness-exec --stdio` inside the outer machine): a terminal on 0, 1 and 2, merged into
/// stdout; or a pipe on stdin that stays open.
#[test]
fn stdio_modes_reach_the_program() {
    use microvm_tests::{Arg, Program, Run, StdioMode};
    use std::time::Duration;
    let h = Harness::detect().expect("harness");
    let run = |stdio: StdioMode, script: &str| {
        let run = Run {
            program: Program::Host("/bin/sh".into()),
            args: vec![Arg::s("-c"), Arg::s(script)],
            files_to_carry: vec![],
            disks: vec![],
            timeout: Duration::from_secs(60),
            marks: vec![],
            echo: false,
            stdio,
            signal_at_mark: None,
        };
        h.run(&run).expect("run")
    };
    let out = run(
        StdioMode::Terminal,
        "test -t 0 && test -t 1 && test -t 2 && echo TTY-OK; echo to-err >&2; exit 3",
    );
    assert_eq!(out.status, Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "TTY-OK\r\nto-err\r\n", "{}", out.describe());
    assert_eq!(out.stderr, "", "{}", out.describe());

    // `timeout` ends (non-zero) a read that would wait forever on the open pipe; a closed
    // pipe or /dev/null would give end of file at once (status 0).
    let out = run(
        StdioMode::Pipes,
        "test -p /proc/self/fd/0 && echo FIFO; test -t 0 || echo NOT-TTY; \
         if timeout 1 cat 2>/dev/null; then echo EOF; else echo STILL-OPEN; fi; echo to-err >&2",
    );
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "FIFO\nNOT-TTY\nSTILL-OPEN\n",
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr, "to-err\n", "{}", out.describe());
}

/// The freeze bound these tests use: short, so a test that waits one out takes seconds.
const TEST_FREEZE_AFTER: u64 = 8;

/// A run of `script` (sh) on the nested path, whatever the probe says: the outer machine's
/// watch is what these tests check, and the nested path works on any host with QEMU.
/// One boot (no rerun of a failed outer machine: the failure is what is tested) and a
/// freeze bound of [`TEST_FREEZE_AFTER`].
fn nested_sh(
    script: &str,
    timeout_s: u64,
) -> (anyhow::Result<microvm_tests::Outcome>, std::time::Duration) {
    nested_sh_on(script, timeout_s, vec![], 1)
}

/// [`nested_sh`] with `disks` (/dev/vda, ...) and up to `attempts` boots.
fn nested_sh_on(
    script: &str,
    timeout_s: u64,
    disks: Vec<std::path::PathBuf>,
    attempts: u32,
) -> (anyhow::Result<microvm_tests::Outcome>, std::time::Duration) {
    use microvm_tests::{Arg, Program, Run};
    use std::time::{Duration, Instant};
    // Each test is its own process under nextest (under `cargo test`, run these one at a
    // time: `--test-threads 1`).
    std::env::set_var(
        microvm_tests::nested::config::ENV_ATTEMPTS,
        attempts.to_string(),
    );
    std::env::set_var(
        microvm_tests::nested::config::ENV_FREEZE_AFTER,
        TEST_FREEZE_AFTER.to_string(),
    );
    let h = Harness::with_path(PathKind::Nested);
    let run = Run {
        program: Program::Host("/bin/sh".into()),
        args: vec![Arg::s("-c"), Arg::s(script)],
        files_to_carry: vec![],
        disks,
        timeout: Duration::from_secs(timeout_s),
        marks: vec![],
        echo: false,
        stdio: microvm_tests::StdioMode::Null,
        signal_at_mark: None,
    };
    let t = Instant::now();
    let r = h.run(&run);
    (r, t.elapsed())
}

/// An outer kernel panic (a real one: sysrq) ends the run at once as "outer kernel
/// panicked", with the kernel's panic line, not as a timeout of the program (600 s here).
#[test]
fn outer_kernel_panic_is_reported_as_such() {
    use microvm_tests::nested::{OuterError, OuterFailure};
    let (r, _) = nested_sh(
        "echo 1 >/proc/sys/kernel/sysrq; echo c >/proc/sysrq-trigger; sleep 600",
        600,
    );
    let e = r.expect_err("the outer machine panicked: the run must fail");
    let oe = e
        .downcast_ref::<OuterError>()
        .unwrap_or_else(|| panic!("not an OuterError: {e:#}"));
    match &oe.failure {
        OuterFailure::KernelPanic { line } => {
            assert!(line.contains("sysrq triggered crash"), "{line}")
        }
        other => panic!("expected an outer kernel panic, got {other:?}: {e:#}"),
    }
    let msg = format!("{e:#}");
    assert!(msg.contains("outer kernel panicked"), "{msg}");
    // The machine's own time (the wait for a nested machine slot is not the harness's doing).
    assert!(
        oe.ran < std::time::Duration::from_secs(120),
        "ran {:?}: {msg}",
        oe.ran
    );
}

/// An outer machine whose user space stops (every process but init and the program
/// stopped, the program silent: no heartbeat, no console output) is declared frozen within
/// seconds of the freeze bound, with its console's last lines, not after the program's
/// 600 s timeout.
#[test]
fn frozen_outer_machine_is_reported_as_such() {
    use microvm_tests::nested::{OuterError, OuterFailure};
    const FREEZE_AFTER: std::time::Duration = std::time::Duration::from_secs(TEST_FREEZE_AFTER);
    let (r, _) = nested_sh("echo stopping-everything; kill -STOP -1; sleep 600", 600);
    let e = r.expect_err("the outer machine froze: the run must fail");
    let oe = e
        .downcast_ref::<OuterError>()
        .unwrap_or_else(|| panic!("not an OuterError: {e:#}"));
    assert!(
        matches!(oe.failure, OuterFailure::Froze(f) if f.silent >= FREEZE_AFTER),
        "expected a freeze, got {:?}: {e:#}",
        oe.failure
    );
    let msg = format!("{e:#}");
    assert!(msg.contains("outer machine froze"), "{msg}");
    assert!(
        oe.ran < FREEZE_AFTER + std::time::Duration::from_secs(90),
        "ran {:?}: {msg}",
        oe.ran
    );
}

/// An outer machine that froze after its program wrote to a disk is rerun on the disk as the
/// test made it: the second boot reads what the first one read (both freeze here, so the run
/// fails with the second boot's console, where the program said what it read).
#[test]
fn a_rerun_starts_from_the_disks_as_the_test_made_them() {
    let img =
        std::env::temp_dir().join(format!("microvm-harness-rerun-{}.img", std::process::id()));
    let mut data = b"original".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&img, &data).expect("write the image");
    let (r, _) = nested_sh_on(
        "echo \"disk-said=$(head -c 8 /dev/vda)\" >/dev/ttyS0; printf overwrit | dd of=/dev/vda conv=fsync 2>/dev/null; \
         kill -STOP -1; sleep 600",
        600,
        vec![img.clone()],
        2,
    );
    let after = std::fs::read(&img).expect("read the image");
    let _ = std::fs::remove_file(&img);
    let e = r.expect_err("both boots froze: the run must fail");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("earlier attempts: "),
        "one rerun expected: {msg}"
    );
    assert!(msg.contains("disk-said=original"), "{msg}");
    assert!(!msg.contains("disk-said=overwrit"), "{msg}");
    // The last boot's write stays: what it did is what the failed run reports.
    assert_eq!(&after[..8], b"overwrit");
}

/// A program that prints nothing for longer than the freeze bound is not a freeze while the
/// outer machine's heartbeat goes on.
#[test]
fn a_quiet_program_is_not_a_frozen_machine() {
    let quiet = TEST_FREEZE_AFTER + 10;
    let (r, _) = nested_sh(&format!("sleep {quiet}; echo awake"), 120);
    let out = r.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "awake\n", "{}", out.describe());
    let outer = out.outer.expect("nested run");
    assert!(
        outer.heartbeats > quiet,
        "{} heartbeats in a run of {:?}",
        outer.heartbeats,
        outer.total
    );
}
