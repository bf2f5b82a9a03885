//! The few legacy I/O-port devices a micro-VM needs: the i8042's reset line, the ACPI PM1
//! registers and reset register, pvpanic, and the boot-time marker port.

use std::sync::Arc;
use std::time::Instant;

use crate::acpi::{PM1_CNT_OFFSET, PM1_SLP_EN, PM1_SLP_TYP_SHIFT, RESET_VALUE, S5_SLEEP_TYPE};
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

/// ACPI PM1a event block (status, enable) and control block, as registers: ACPICA reads back
/// what it enables (the global-lock event) and errors out when the bits do not stick. Writing
/// SLP_EN with the S5 sleep type to the control register powers the machine off.
pub struct AcpiPm {
    exit: Arc<VmExit>,
    /// PM1_STS (write 1 to clear; nothing ever sets a bit), PM1_EN, PM1_CNT.
    regs: [u16; 3],
}

/// PM1_CNT.SCI_EN: the platform is in ACPI mode (we have no SMI to switch it).
const PM1_SCI_EN: u16 = 1;

impl AcpiPm {
    pub fn new(exit: Arc<VmExit>) -> Self {
        AcpiPm {
            exit,
            regs: [0, 0, PM1_SCI_EN],
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes: Vec<u8> = self.regs.iter().flat_map(|r| r.to_le_bytes()).collect();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // 16-bit registers at even offsets; ACPICA uses their natural width.
        let value = match data {
            [lo] => u16::from(*lo),
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return,
        };
        match offset {
            0 => self.regs[0] &= !value,
            2 => self.regs[1] = value,
            PM1_CNT_OFFSET => {
                self.regs[2] = (value & !PM1_SLP_EN) | PM1_SCI_EN;
                if value & PM1_SLP_EN != 0 {
                    let sleep_type = (value >> PM1_SLP_TYP_SHIFT) & 0x7;
                    if sleep_type == S5_SLEEP_TYPE {
                        log::info!("guest powered off through ACPI");
                        self.exit.trigger(ExitReason::PowerOff);
                    } else {
                        devices::warn_limited!(
                            "guest asked for unsupported ACPI sleep type {sleep_type}"
                        );
                    }
                }
            }
            _ => log::debug!("ignored ACPI PM1 write at offset {offset}"),
        }
    }
}

/// The ACPI reset register (FADT RESET_REG): writing [`RESET_VALUE`] reboots.
pub struct AcpiReset {
    exit: Arc<VmExit>,
}

impl AcpiReset {
    pub fn new(exit: Arc<VmExit>) -> Self {
        AcpiReset { exit }
    }
}

impl BusDevice for AcpiReset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&RESET_VALUE) {
            log::info!("guest requested reset through the ACPI reset register");
            self.exit.trigger(ExitReason::Reboot);
        }
    }
}

/// pvpanic (QEMU's device, as Linux's pvpanic driver sees it): reading gives the events the
/// device can report, the guest writes the event when it happens.
pub struct PvPanic {
    exit: Arc<VmExit>,
}

/// The guest panicked.
const PVPANIC_PANICKED: u8 = 1 << 0;
/// A crash kernel is about to take over (kdump): the guest goes on.
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

impl PvPanic {
    pub fn new(exit: Arc<VmExit>) -> Self {
        PvPanic { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let event = data.first().copied().unwrap_or(0);
        if event & PVPANIC_PANICKED != 0 {
            log::error!("guest panicked (reported through pvpanic)");
            self.exit.trigger(ExitReason::GuestPanic);
        } else if event & PVPANIC_CRASH_LOADED != 0 {
            devices::warn_limited!("guest panicked and is starting its crash kernel (pvpanic)");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm1_registers_keep_enables_and_power_off_on_s5() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(2, &[0x20, 0x00]); // GBL_EN
        let mut v = [0u8; 2];
        pm.read(2, &mut v);
        assert_eq!(u16::from_le_bytes(v), 0x20);
        pm.read(PM1_CNT_OFFSET, &mut v);
        assert_eq!(u16::from_le_bytes(v) & PM1_SCI_EN, PM1_SCI_EN);
        let mut far = [0xffu8; 4];
        pm.read(5, &mut far);
        assert_eq!(far, [0, 0, 0, 0]);
        assert_eq!(exit.reason(), None);
        let s5 = (S5_SLEEP_TYPE << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN;
        pm.write(PM1_CNT_OFFSET, &s5.to_le_bytes());
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn pvpanic_offers_its_events_and_a_panic_ends_the_vm() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = PvPanic::new(exit.clone());
        let mut caps = [0u8; 1];
        dev.read(0, &mut caps);
        assert_eq!(caps[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(exit.reason(), None);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn only_the_reset_value_resets() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = AcpiReset::new(exit.clone());
        dev.write(0, &[RESET_VALUE.wrapping_add(1)]);
        assert_eq!(exit.reason(), None);
        dev.write(0, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }
}
