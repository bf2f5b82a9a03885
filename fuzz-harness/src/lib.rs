//! Fuzz harnesses for microvm's guest-facing surface, plain Rust on `arbitrary`: the cargo-fuzz
//! targets in `fuzz/fuzz_targets/` call them (nightly, libFuzzer), and `tests/corpus.rs` runs
//! them over the checked-in corpus in `fuzz/corpus/` as ordinary tests on stable.
//!
//! Every harness asserts, after each round of driver actions: no panic; used head indices below
//! the queue size; a used length never above the chain's writable bytes, and every byte it
//! claims written (each input runs twice, writable buffers filled with 0x00 and then 0xff); no
//! guest byte changed outside writable buffers and used rings; with bounced DMA, every bounce
//! slot released.

pub mod blk;
pub mod dma;
pub mod driver;
pub mod mmio;
pub mod net;

/// A harness: runs one input, panics when a check fails.
pub type Harness = fn(&[u8]);

/// The harnesses by name, as the fuzz targets and corpus directories are named.
pub const TARGETS: [(&str, Harness); 4] = [
    ("blk", blk::run),
    ("net", net::run),
    ("mmio", mmio::run),
    ("dma", dma::run),
];
