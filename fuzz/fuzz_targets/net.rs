#![no_main]
//! `cargo +nightly fuzz run net`: the harness is `microvm_fuzz::net::run` (see fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| microvm_fuzz::net::run(data));
