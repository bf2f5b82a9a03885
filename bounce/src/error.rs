//! Errors of the DMA API.

use thiserror::Error;

/// Why a DMA operation failed. Each is the guest's (or the pool's) fault, never a VMM bug: the
/// device turns it into the virtio status the spec asks for.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DmaError {
    #[error("zero-length DMA mapping at guest address {addr:#x}")]
    ZeroLength { addr: u64 },
    #[error("DMA range {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u64 },
    #[error("DMA range {addr:#x}+{len:#x} spans two guest memory regions")]
    NotContiguous { addr: u64, len: u64 },
    #[error("access {offset:#x}+{len:#x} is past the end of a {size:#x}-byte DMA buffer")]
    OutOfBuffer {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("write to a DMA buffer mapped to-device (read-only for the device)")]
    ReadOnlyBuffer,
}
