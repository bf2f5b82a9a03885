#![no_main]
//! `cargo +nightly fuzz run dma`: the harness is `microvm_fuzz::dma::run` (see fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| microvm_fuzz::dma::run(data));
