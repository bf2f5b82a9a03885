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
        assert_eq!(h.path() == PathKind::Direct, hw, "path {} vs probe", h.path());
    }
}
