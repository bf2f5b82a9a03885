//! ACPI tables: the MADT announces every vCPU and the I/O APIC, the FADT's PM1 registers let
//! the guest power off (the DSDT's `_S5_` tells it which sleep type that is) and its reset
//! register reboot, and the DSDT announces the pvpanic device (`QEMU0001`), through which a
//! guest reports a panic.
//!
//! Not hardware-reduced ACPI (Firecracker's and QEMU microvm's choice): Linux then drops the
//! legacy PIC and ISA IRQs, so the 8250 at IRQ 4 and `virtio_mmio.device=...:IRQ` devices would
//! need DSDT entries and PNP support in the guest. A fixed-hardware FADT with only the PM1 event
//! and control blocks keeps ISA IRQ numbers meaning IOAPIC pins, as the MP table (`mptable`) does.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    ACPI_PM1_PORT, ACPI_RESET_PORT, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, PVPANIC_PORT,
};

const OEM_ID: [u8; 6] = *b"MICROV";
const OEM_TABLE: [u8; 8] = *b"MICROVM ";

/// Sleep type the guest writes for S5 (soft off); any value works as long as `_S5_` agrees.
pub const S5_SLEEP_TYPE: u16 = 5;
/// PM1 control register (ACPI 6.5, 4.8.2.1): SLP_TYP in bits 10-12, SLP_EN in bit 13.
pub const PM1_CNT_OFFSET: u64 = 4;
pub const PM1_SLP_TYP_SHIFT: u16 = 10;
pub const PM1_SLP_EN: u16 = 1 << 13;
/// PM1 event block: status and enable, 2 bytes each; then the 2-byte control block.
const PM1_EVT_LEN: u8 = 4;
const PM1_CNT_LEN: u8 = 2;
/// What the guest writes to the reset register to reboot.
pub const RESET_VALUE: u8 = 1;
/// The SCI's ISA IRQ, as on PCs; microvm never raises it.
const SCI_IRQ: u16 = 9;

// FADT IA-PC boot architecture flags (ACPI 6.5, table 5.11).
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_MSI: u16 = 1 << 3;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Writes RSDP, XSDT, FADT, DSDT and MADT into the BIOS area; returns the RSDP address.
pub fn create_tables(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let mut next = ACPI_START + 64;
    let mut place = |data: &[u8]| -> Result<u64> {
        let addr = next;
        anyhow::ensure!(
            addr + data.len() as u64 <= MPTABLE_ADDR,
            "ACPI tables do not fit below the MP table"
        );
        mem.write_slice(data, GuestAddress(addr))
            .context("cannot write ACPI tables")?;
        next = (addr + data.len() as u64 + 15) & !15;
        Ok(addr)
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE]));
    dsdt.append_slice(&bytes(&s5));
    // The pvpanic device as QEMU announces it: Linux's pvpanic-mmio driver binds to QEMU0001
    // and takes its I/O port from _CRS. _STA 0x0b: present, enabled, not shown in a UI.
    let io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    let sta: u8 = 0x0b;
    let (hid, sta, crs) = (
        aml::Name::new("_HID".into(), &"QEMU0001"),
        aml::Name::new("_STA".into(), &sta),
        aml::Name::new("_CRS".into(), &crs),
    );
    let pvpanic = aml::Device::new("PEVT".into(), vec![&hid, &sta, &crs]);
    dsdt.append_slice(&bytes(&aml::Scope::new("_SB_".into(), vec![&pvpanic])));
    let dsdt_addr = place(dsdt.as_slice())?;

    let facs_addr = place(&bytes(&FACS::new()))?;
    let pm1_reg = |port: u16, len: u8| {
        GAS::new(
            AddressSpace::SystemIo,
            len * 8,
            0,
            AccessSize::Undefined,
            port.into(),
        )
    };
    let pm1_cnt = ACPI_PM1_PORT + PM1_CNT_OFFSET as u16;
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .firmware_ctrl_64(facs_addr)
        .dsdt_64(dsdt_addr);
    fadt.sci_int = SCI_IRQ.into();
    // SMI_CMD = 0: the platform is always in ACPI mode.
    fadt.pm1a_evt_blk = u32::from(ACPI_PM1_PORT).into();
    fadt.pm1a_cnt_blk = u32::from(pm1_cnt).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.x_pm1a_evt_blk = pm1_reg(ACPI_PM1_PORT, PM1_EVT_LEN);
    fadt.x_pm1a_cnt_blk = pm1_reg(pm1_cnt, PM1_CNT_LEN);
    // `reboot=a` (and Linux's default order, ACPI first) writes RESET_VALUE here.
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_RESET_PORT.into(),
    );
    fadt.reset_value = RESET_VALUE;
    // No VGA, MSI or CMOS RTC to probe, and no 8042 either: Linux then skips its i8042 driver,
    // whose probe of our reset-only controller costs seconds of timeouts. `reboot=k` still
    // works: the reboot path writes the reset command to port 0x64 itself.
    fadt.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_CMOS_RTC).into();
    let fadt_addr = place(&bytes(&fadt.finalize()))?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = place(&bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes(&rsdp), GuestAddress(rsdp_addr))
        .context("cannot write the RSDP")?;
    Ok(rsdp_addr)
}
