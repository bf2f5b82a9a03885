#![no_main]
//! `cargo +nightly fuzz run mmio`: the harness is `microvm_fuzz::mmio::run` (see fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| microvm_fuzz::mmio::run(data));
