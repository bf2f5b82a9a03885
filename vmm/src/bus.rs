//! Routes port I/O and MMIO exits to devices by address range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

/// A device on a bus; `offset` is relative to the range it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

#[derive(Default, Clone)]
pub struct Bus {
    /// base -> (length, device)
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
        if len == 0 {
            bail!("bus range at {base:#x} is empty");
        }
        let end = base + len;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if overlaps_prev {
            bail!("bus range {base:#x}+{len:#x} overlaps another device");
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
fn lock(dev: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
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
