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
    /// The mapping (plus its alignment offset) needs more slots than one segment holds
    /// (Linux: `swiotlb_max_mapping_size`).
    #[error("DMA mapping of {len:#x} bytes exceeds the bounce segment limit of {max:#x} bytes")]
    TooLarge { len: usize, max: usize },
    /// Every pool is full and growth (background or transient) is switched off.
    #[error("no free bounce slots for {len:#x} bytes and the pools may not grow")]
    NoSpace { len: usize },
    /// Every pool is full and a new (transient) pool would pass the cap on shared memory.
    #[error(
        "no free bounce slots for {len:#x} bytes and shared memory is at its cap of {cap:#x} bytes"
    )]
    CapReached { len: usize, cap: u64 },
    /// Every pool is full and no atomic pool (memory encrypted: kernel/dma/pool.c) can hold a
    /// transient pool for the request (Linux: `swiotlb_alloc_tlb` finds no atomic memory and
    /// the map fails, "swiotlb buffer is full").
    #[error("no free bounce slots for {len:#x} bytes and the atomic DMA pools cannot hold a transient pool")]
    AtomicPoolExhausted { len: usize },
    /// The map may block (`MapAttrs::may_block`) and must wait: the caller defers the request
    /// and retries it when the waker registered for its source fires (`Dma::set_waker`; see
    /// the `swiotlb` module's exhaustion policies). Not a failure: nothing was mapped, nothing
    /// needs undoing, and the wait is already registered.
    #[error("DMA mapping of {len:#x} bytes must wait ({cause}); retry when woken")]
    WouldBlock { len: usize, cause: BlockCause },
    /// No pool owns this bounce address (never mapped, or its transient pool is gone).
    #[error("bounce address {addr:#x} belongs to no pool")]
    UnknownAddress { addr: u64 },
    /// The address is inside a pool but its slot is free: unmapped twice, or never mapped.
    #[error("bounce address {addr:#x} is not mapped (already unmapped?)")]
    NotMapped { addr: u64 },
    /// The address is inside a live mapping but is not the address `map` returned.
    #[error("bounce address {addr:#x} is not the start of a mapping")]
    NotMappingStart { addr: u64 },
    /// `sync_for_cpu` while the CPU already owns the buffer, or `sync_for_device` while the device
    /// does.
    #[error("DMA buffer at guest address {addr:#x} synced twice for the {owner}")]
    DoubleSync { addr: u64, owner: &'static str },
}

/// Why a map must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCause {
    /// `exhaustion=throttle`: use is past the high mark (or the low mark while a throttled
    /// mapping is live) and another throttled mapping holds the semaphore; woken when it is
    /// unmapped (the semaphore is then handed to the first waiter).
    Throttled,
    /// `exhaustion=wait`: no pool has room; woken by the next unmap or pool growth, or when the
    /// wait timeout has passed (the retry then grows the pools synchronously).
    NoSpace,
}

impl std::fmt::Display for BlockCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockCause::Throttled => "throttled",
            BlockCause::NoSpace => "waiting for space",
        })
    }
}
