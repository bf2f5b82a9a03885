//! The few legacy I/O-port devices a micro-VM needs: the i8042's reset line, the ACPI PM1
//! registers, and the boot-time marker port.

use std::sync::Arc;
use std::time::Instant;

use crate::acpi::{PM1_CNT_OFFSET, PM1_SLP_EN, PM1_SLP_TYP_SHIFT, S5_SLEEP_TYPE};
use crate::exit::{ExitReason, VmExit};
use crate::layout::BOOT_MARKER_VALUE;
use devices::bus::BusDevice;

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

/// ACPI PM1a event block (status, enable) and control block; writing SLP_EN with the S5 sleep
/// type to the control register powers the machine off.
pub struct AcpiPm {
    exit: Arc<VmExit>,
}

impl AcpiPm {
    pub fn new(exit: Arc<VmExit>) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match data {
            [lo] => u16::from(*lo),
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return,
        };
        if offset == PM1_CNT_OFFSET && value & PM1_SLP_EN != 0 {
            let sleep_type = (value >> PM1_SLP_TYP_SHIFT) & 0x7;
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
