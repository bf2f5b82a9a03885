//! The vocabulary the DMA API, the pool model and the traces share: who maps ([`DmaSource`]) and
//! which way the data goes ([`DmaDirection`]). A leaf module, so that `dma` (which uses the
//! pools) and `swiotlb`/`trace` (which the DMA API uses) do not depend on each other for it.

/// Direction of a streaming mapping, as Linux's `enum dma_data_direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmaDirection {
    /// The device reads the buffer (a virtio driver-readable descriptor).
    ToDevice,
    /// The device writes the buffer (a virtio device-writable descriptor).
    FromDevice,
    Bidirectional,
}

impl DmaDirection {
    pub fn device_writes(self) -> bool {
        !matches!(self, DmaDirection::ToDevice)
    }

    /// Whether the guest's data must reach the device (copied in on `sync_for_device`).
    pub fn device_reads(self) -> bool {
        !matches!(self, DmaDirection::FromDevice)
    }
}

/// Who maps: selects the pool area (so queues do not contend) and labels trace records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DmaSource {
    pub device: u16,
    pub queue: u16,
}
