#![no_main]
//! `cargo +nightly fuzz run blk`: the harness is `microvm_fuzz::blk::run` (see fuzz/README.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| microvm_fuzz::blk::run(data));
