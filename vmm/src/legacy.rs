//! The few legacy I/O-port devices a micro-VM needs: the i8042's reset line, the ACPI sleep
//! registers, and the boot-time marker port.

use std::sync::Arc;
use std::time::Instant;

use crate::acpi::{S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::bus::BusDevice;
use crate::exit::{ExitReason, VmExit};
use crate::layout::BOOT_MARKER_VALUE;

/// i8042 keyboard controller, only as far as `reboot=k` needs: command 0xFE on port 0x64 pulses
/// the CPU reset line. Status reads say "no data, input buffer empty".
pub struct I8042 {
    exit: Arc<VmExit>,
}

const I8042_COMMAND_OFFSET: u64 = 4; // port 0x64
const I8042_CMD_RESET_CPU: u8 = 0xfe;

impl I8042 {
    pub fn new(exit: Arc<VmExit>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_OFFSET && data.first() == Some(&I8042_CMD_RESET_CPU) {
            log::info!("guest requested reset through the i8042");
            self.exit.trigger(ExitReason::Reboot);
        }
    }
}

/// ACPI hardware-reduced sleep control (offset 0) and status (offset 1) registers.
pub struct AcpiSleep {
    exit: Arc<VmExit>,
}

impl AcpiSleep {
    pub fn new(exit: Arc<VmExit>) -> Self {
        AcpiSleep { exit }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == 0 && v & SLEEP_ENABLE != 0 {
            let sleep_type = (v >> 2) & 0x7;
            if sleep_type == S5_SLEEP_TYPE {
                log::info!("guest powered off through ACPI");
                self.exit.trigger(ExitReason::PowerOff);
            } else {
                log::warn!("guest asked for unsupported ACPI sleep type {sleep_type}");
            }
        }
    }
}

/// Logs the time from VMM start to the guest's first marker write, as Firecracker's boot timer.
pub struct BootTimer {
    start: Instant,
    logged: bool,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            logged: false,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if !self.logged && data.first() == Some(&BOOT_MARKER_VALUE) {
            self.logged = true;
            let t = self.start.elapsed();
            log::info!(
                "Guest-boot-time = {:>6} us {} ms",
                t.as_micros(),
                t.as_millis()
            );
        }
    }
}
