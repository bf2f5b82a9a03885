//! The harness itself: path choice works on this machine (or says why not).

use microvm_tests::{probe, Harness, PathKind};

#[test]
fn probe_measures_or_explains() {
    let p = probe::probe();
    eprintln!("probe: {p}");
    match (&p.failure, p.ns_per_insn) {
        (None, Some(ns)) => assert!(ns > 0.0, "a measurement must be positive: {ns}"),
        (Some(why), None) => assert!(!why.is_empty()),
        other => panic!("probe must give a measurement or a failure, got {other:?}"),
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
