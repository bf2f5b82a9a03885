//! Emulated devices of microvm.
//!
//! * [`bus`]: the [`bus::Bus`] that routes port I/O and MMIO exits to [`bus::BusDevice`]s.
//! * [`virtio`]: the [`virtio::VirtioDevice`] trait, the virtio-mmio (modern, v2) transport
//!   [`virtio::mmio::MmioTransport`], and the block, rng and net devices.
//! * [`log_limit`]: rate-limited logging ([`warn_limited!`] and friends) for every line a guest
//!   can trigger at will.
//!
//! Devices reach guest memory only through `bounce::Dma` / `bounce::DmaQueue`: no constructor in
//! this crate takes a guest memory object, so a device cannot touch guest memory except through a
//! streaming DMA mapping (direct or bounced).

pub mod bus;
pub mod log_limit;
pub mod rate_limiter;
pub mod virtio;
