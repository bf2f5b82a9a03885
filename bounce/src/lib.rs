//! `bounce`: a model of restricted-DMA (swiotlb) bounce pools, and the only path from emulated
//! devices to guest memory.
//!
//! Devices receive a [`Dma`] handle and [`DmaQueue`]s. Neither exposes guest memory: a device
//! reaches a guest buffer only by mapping it for streaming DMA ([`Dma::map`]), which either hands
//! out the guest pages themselves ([`Dma::direct`], the no-bounce baseline) or a bounce buffer in
//! a shared pool ([`Dma::bounced`]), filled and drained as Linux's swiotlb does.
//!
//! ```compile_fail
//! // A device cannot get at guest memory through the handle it is given.
//! fn device(dma: &bounce::Dma) { let _ = &dma.inner.mem; }
//! ```

pub mod config;
pub mod convert;
pub mod dma;
pub mod error;
pub mod linux_trace;
mod lookup;
pub mod notify;
pub mod owned;
pub mod pool;
pub mod queue;
mod spinlock;
pub mod stats;
pub mod swiotlb;
pub mod trace;
pub mod types;

pub use config::{
    AtomicPool, Chunk, ConfigError, Exhaustion, Growth, LookupKind, PoolOrder, SlotReuse,
    SwiotlbConfig,
};
pub use convert::{ConvertCost, ConvertDirection, ConvertMode, DirCost};
pub use dma::{Dma, DmaBuffer};
pub use error::{BlockCause, DmaError};
pub use notify::{DmaWaker, EventNotifier};
pub use owned::OwnedDmaBuffer;
pub use pool::MapAttrs;
pub use queue::{Chain, Desc, DmaQueue, QueueCounters, QueueCountersSnapshot, QueueError};
pub use stats::{
    BlockingStats, ConversionCount, Conversions, ConversionsBy, Failures, Payer, PoolStats,
    StatsSnapshot,
};
pub use swiotlb::{AtomicPoolStats, Freed, Mapping, Swiotlb, WorkerStart, BOUNCE_BASE};
pub use trace::{
    read_trace, read_trace_versioned, write_trace, TraceHeader, TraceOp, TracePoolKind,
    TraceRecord, TraceRecorder, TRACE_VERSION,
};
pub use types::{DmaDirection, DmaSource};
