//! Does `/dev/kvm` run guest kernel code at hardware speed? The `kvm-probe` crate, shared with
//! `microvm` (which warns at start when it does not), with the harness's sizes.

use std::time::Duration;

pub use kvm_probe::{ProbeError, ProbeResult, HARDWARE_MAX_NS_PER_INSN as DIRECT_MAX_NS_PER_INSN};

/// Loop iterations of the measured run (two instructions each): long enough to time well on
/// hardware, ~130 ms on an emulating `/dev/kvm`.
const LOOPS: u64 = 100_000;

/// Runs the probe (bounded to 20 s even if KVM_RUN never returns).
pub fn probe() -> ProbeResult {
    kvm_probe::probe(LOOPS, Duration::from_secs(20))
}
