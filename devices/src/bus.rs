//! Routes guest port I/O and MMIO accesses to devices by address range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

/// A device occupying a range of guest port I/O or MMIO addresses.
///
/// The VMM decodes the address of a vCPU exit, subtracts the device's base and calls
/// [`BusDevice::read`] / [`BusDevice::write`] with the offset and the access's bytes (1, 2, 4 or
/// 8 of them, little-endian as the guest wrote them). Accesses a device does not understand are
/// ignored (reads return zeroes); they never panic.
pub trait BusDevice: Send {
    /// A guest load of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range at {0:#x} is empty")]
    EmptyRange(u64),
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

#[derive(Default, Clone)]
pub struct Bus {
    /// base -> (length, device)
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// `false` if nothing is mapped at `addr` (reads then see all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// A poisoned device lock means a device panicked on another vCPU; keep serving the guest with
/// the state as it is rather than cascading the panic.
fn lock(dev: &Mutex<dyn BusDevice>) -> MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range() {
        let mut bus = Bus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        assert!(bus.insert(0x12, 4, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x0e, 4, Arc::new(Mutex::new(Echo(0)))).is_err());
        bus.insert(0x14, 1, Arc::new(Mutex::new(Echo(9)))).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x12, &mut d));
        assert_eq!(d[0], 3);
        assert!(!bus.read(0x15, &mut d));
        assert_eq!(d[0], 0xff);
        assert!(bus.write(0x14, &[5]));
        bus.read(0x14, &mut d);
        assert_eq!(d[0], 5);
    }
}
