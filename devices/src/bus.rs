//! The interface between the VMM's MMIO bus and a device.

/// A device occupying a range of guest physical MMIO addresses.
///
/// The VMM decodes the guest physical address of an MMIO exit, subtracts the device's base and
/// calls [`MmioDevice::read`] / [`MmioDevice::write`] with the offset and the access's bytes
/// (1, 2, 4 or 8 of them, little-endian as the guest wrote them). Accesses a device does not
/// understand are ignored (reads return zeroes); they never panic.
pub trait MmioDevice: Send {
    /// A guest load of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}
