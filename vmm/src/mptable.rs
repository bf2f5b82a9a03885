//! Intel MultiProcessor table (MP spec 1.4): how a guest built without ACPI (but with
//! `CONFIG_X86_MPPARSE`) finds its application processors, the I/O APIC and the ISA IRQ routing.
//! Guests with ACPI use the MADT instead; both describe the same machine.
//!
//! Linux finds the 16-byte floating pointer by scanning 16-byte steps of the first KiB of RAM,
//! the last KiB of base memory (our EBDA) and 0xf0000..0x100000. The configuration table it points
//! to holds 20 bytes per processor (over 5 KiB for 254 vCPUs), more than the EBDA's KiB, so it
//! goes in the BIOS area at [`MPTABLE_ADDR`], above the ACPI tables; both are e820-reserved.

use std::mem::size_of;

use anyhow::{ensure, Context, Result};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::MAX_CPUS;
use crate::layout::{HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_POINTER_ADDR};

const SPEC_REV: u8 = 4;
const OEM_ID: [u8; 8] = *b"MICROVM ";
const PRODUCT_ID: [u8; 12] = *b"MICROVM     ";
/// Versions KVM's in-kernel LAPIC (lapic.c `APIC_VERSION`) and IOAPIC (`IOAPIC_VERSION_ID`) report.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// KVM's IOAPIC has 24 pins (`KVM_IOAPIC_NUM_PINS`).
const IOAPIC_PINS: u8 = 24;
/// CPU signature and features as Firecracker and QEMU's tables have them: family 6, FPU and APIC.
/// Linux reads neither (CPUID tells it more).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 1 << 0 | 1 << 9;
const ISA_BUS_ID: u8 = 0;
const ALL_LAPICS: u8 = 0xff;

// Entry types (MP spec table 4-3) and flags.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IO_APIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;
// Interrupt types (MP spec table 4-11).
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    config_addr: u32,
    length_16: u8,
    spec_rev: u8,
    checksum: u8,
    /// Feature byte 1 = 0: a configuration table exists (not a default configuration).
    features: [u8; 5],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct Processor {
    kind: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct Bus {
    kind: u8,
    id: u8,
    bus_type: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct IoApic {
    kind: u8,
    id: u8,
    version: u8,
    flags: u8,
    addr: u32,
}

/// I/O (type 3) and local (type 4) interrupt assignments share one layout: `dst_apic`/`dst_pin`
/// are an IOAPIC and its INTIN pin, or a LAPIC id and its LINTIN pin.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct Interrupt {
    kind: u8,
    irq_type: u8,
    /// 0: polarity and trigger as the source bus defines them (ISA: active high, edge).
    flags: u16,
    src_bus: u8,
    src_irq: u8,
    dst_apic: u8,
    dst_pin: u8,
}

// SAFETY: a `repr(C, packed)` struct of integers and byte arrays: no padding, and every bit
// pattern is a valid value. The same holds for the five structs below.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for Processor {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for Bus {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for IoApic {}
// SAFETY: as for `FloatingPointer`.
unsafe impl ByteValued for Interrupt {}

// Sizes the spec fixes (tables 4-1 to 4-12).
const _: () = assert!(size_of::<FloatingPointer>() == 16 && size_of::<ConfigHeader>() == 44);
const _: () = assert!(size_of::<Processor>() == 20 && size_of::<Bus>() == 8);
const _: () = assert!(size_of::<IoApic>() == 8 && size_of::<Interrupt>() == 8);
// Linux scans for the floating pointer on 16-byte boundaries.
const _: () = assert!(MPTABLE_POINTER_ADDR.is_multiple_of(16));

/// The byte that makes `bytes` plus it sum to 0 (mod 256).
fn checksum<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u8 {
    bytes
        .into_iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Writes the floating pointer at [`MPTABLE_POINTER_ADDR`] and the configuration table at
/// [`MPTABLE_ADDR`]: vCPU n has LAPIC id n, vCPU 0 boots, the IOAPIC takes id `cpus`.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    ensure!(
        (1..=MAX_CPUS).contains(&cpus),
        "an MP table needs 1 to {MAX_CPUS} vCPUs, not {cpus}"
    );
    // Above every LAPIC id and below 0xff (broadcast).
    let ioapic_id = cpus;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for id in 0..cpus {
        push(
            Processor {
                kind: PROCESSOR,
                apic_id: id,
                apic_version: LAPIC_VERSION,
                flags: CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 },
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                ..Default::default()
            }
            .as_slice(),
        );
    }
    push(
        Bus {
            kind: BUS,
            id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        IoApic {
            kind: IO_APIC,
            id: ioapic_id,
            version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            addr: IOAPIC_ADDR,
        }
        .as_slice(),
    );
    // ISA IRQ n -> pin n, IRQ 0 too: KVM's default routing sends the PIT's GSI 0 to pin 0, not 2.
    // (microvm sets no GSI routing and the MADT has no override; Firecracker does the same.)
    for irq in 0..IOAPIC_PINS {
        push(
            Interrupt {
                kind: IO_INTERRUPT,
                irq_type: INT_VECTORED,
                flags: 0,
                src_bus: ISA_BUS_ID,
                src_irq: irq,
                dst_apic: ioapic_id,
                dst_pin: irq,
            }
            .as_slice(),
        );
    }
    // The PIC's output on LINT0 and NMI on LINT1 of every LAPIC: KVM offers PIC interrupts to any
    // LAPIC whose LINT0 is in ExtINT mode (Linux leaves that unmasked on the BSP only).
    for (irq_type, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        push(
            Interrupt {
                kind: LOCAL_INTERRUPT,
                irq_type,
                flags: 0,
                src_bus: ISA_BUS_ID,
                src_irq: 0,
                dst_apic: ALL_LAPICS,
                dst_pin: lint,
            }
            .as_slice(),
        );
    }

    let length = size_of::<ConfigHeader>() + entries.len();
    ensure!(
        MPTABLE_ADDR + length as u64 <= HIMEM_START,
        "the MP table for {cpus} vCPUs ({length} bytes) does not fit below 1 MiB"
    );
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        length: u16::try_from(length)?,
        spec_rev: SPEC_REV,
        oem_id: OEM_ID,
        product_id: PRODUCT_ID,
        entry_count: count,
        lapic_addr: LAPIC_ADDR,
        // No OEM table and no extended entries (their length and checksum stay 0).
        ..Default::default()
    };
    header.checksum = checksum(header.as_slice().iter().chain(&entries));
    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        config_addr: MPTABLE_ADDR as u32,
        length_16: 1,
        spec_rev: SPEC_REV,
        ..Default::default()
    };
    pointer.checksum = checksum(pointer.as_slice());

    let table = [header.as_slice(), &entries].concat();
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .context("cannot write the MP configuration table")?;
    mem.write_slice(pointer.as_slice(), GuestAddress(MPTABLE_POINTER_ADDR))
        .context("cannot write the MP floating pointer")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{ACPI_START, EBDA_START};

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), HIMEM_START as usize)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) == 0
    }

    /// Linux's `smp_scan_config` over the ranges `mpparse_find_mptable` scans: the first match.
    fn scan(mem: &GuestMemoryMmap) -> Option<u64> {
        let ranges = [(0, 0x400), (639 * 0x400, 0x400), (0xf0000, 0x10000)];
        ranges.into_iter().find_map(|(base, len)| {
            (base..base + len).step_by(16).find(|&a| {
                let p = read(mem, a, 16);
                &p[..4] == b"_MP_" && p[8] == 1 && sums_to_zero(&p) && matches!(p[9], 1 | 4)
            })
        })
    }

    /// The configuration table as Linux's `smp_check_mpc` / `smp_read_mpc` see it: its address,
    /// raw bytes, and its entries by type in table order.
    struct Parsed {
        addr: u64,
        bytes: Vec<u8>,
        by_type: [Vec<Vec<u8>>; 5],
    }

    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let pointer = scan(mem).expect("no MP floating pointer found");
        let p = read(mem, pointer, 16);
        assert_eq!(p[9], 4, "spec revision");
        assert_eq!(
            &p[11..16],
            &[0; 5],
            "feature bytes: a table, not a default configuration"
        );
        let addr = u64::from(le32(&p, 4));
        let header = read(mem, addr, 44);
        assert_eq!(&header[..4], b"PCMP");
        let bytes = read(mem, addr, le16(&header, 4).into());
        assert!(sums_to_zero(&bytes), "configuration table checksum");
        assert_eq!(bytes[6], 4, "spec revision");
        assert_eq!(&bytes[16..28], b"MICROVM     ");
        assert_eq!(le32(&bytes, 36), 0xfee0_0000, "LAPIC address");
        assert_eq!((le16(&bytes, 40), bytes[42]), (0, 0), "extended table");

        let mut by_type: [Vec<Vec<u8>>; 5] = Default::default();
        let mut at = 44;
        while at < bytes.len() {
            let size = match bytes[at] {
                0 => 20,
                1..=4 => 8,
                t => panic!("unknown entry type {t} at offset {at}"),
            };
            by_type[usize::from(bytes[at])].push(bytes[at..at + size].to_vec());
            at += size;
        }
        assert_eq!(at, bytes.len(), "the last entry runs past the table length");
        let entries: usize = by_type.iter().map(Vec::len).sum();
        assert_eq!(entries, usize::from(le16(&bytes, 34)), "entry count");
        Parsed {
            addr,
            bytes,
            by_type,
        }
    }

    #[test]
    fn entries_for_1_2_and_254_vcpus() {
        for cpus in [1u8, 2, 254] {
            let mem = guest();
            write(&mem, cpus).unwrap();
            let t = parse(&mem);
            let [cpu, bus, ioapic, io_int, local_int] = &t.by_type;
            let counts: Vec<usize> = t.by_type.iter().map(Vec::len).collect();
            assert_eq!(counts, [usize::from(cpus), 1, 1, 24, 2], "{cpus} vCPUs");

            // Processors: LAPIC ids 0..cpus, KVM's LAPIC version, all enabled, vCPU 0 the BSP.
            let ids: Vec<u8> = cpu.iter().map(|e| e[1]).collect();
            assert_eq!(ids, (0..cpus).collect::<Vec<_>>());
            assert!(cpu.iter().all(|e| e[2] == 0x14 && e[3] & 1 == 1));
            let bsps: Vec<u8> = cpu.iter().filter(|e| e[3] & 2 != 0).map(|e| e[1]).collect();
            assert_eq!(bsps, [0], "exactly one BSP, LAPIC id 0");

            let isa = bus[0][1];
            assert_eq!(&bus[0][2..8], b"ISA   ");

            // The IOAPIC: an id no LAPIC has, KVM's version, enabled, at the address KVM emulates.
            let io = &ioapic[0];
            assert!(
                !ids.contains(&io[1]) && io[1] != 0xff,
                "IOAPIC id {}",
                io[1]
            );
            assert_eq!((io[2], io[3] & 1), (0x11, 1));
            assert_eq!(le32(io, 4), 0xfec0_0000);

            // ISA IRQ n -> pin n of that IOAPIC (KVM's default GSI routing), for all 24 pins.
            let mut irqs: Vec<(u8, u8)> = io_int
                .iter()
                .map(|e| {
                    assert_eq!((e[1], le16(e, 2), e[4], e[6]), (0, 0, isa, io[1]));
                    (e[5], e[7])
                })
                .collect();
            irqs.sort();
            assert_eq!(irqs, (0..24).map(|n| (n, n)).collect::<Vec<_>>());

            // ExtINT on LINT0 and NMI on LINT1, of every LAPIC.
            let lints: Vec<(u8, u8, u8)> = local_int.iter().map(|e| (e[1], e[6], e[7])).collect();
            assert_eq!(lints, [(3, 0xff, 0), (1, 0xff, 1)]);
        }
    }

    #[test]
    fn found_where_linux_scans_and_clear_of_acpi() {
        let mem = guest();
        crate::acpi::create_tables(&mem, MAX_CPUS).unwrap();
        let acpi_bytes = read(&mem, ACPI_START, (HIMEM_START - ACPI_START) as usize);
        let acpi_end = ACPI_START + acpi_bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;

        write(&mem, MAX_CPUS).unwrap();
        assert_eq!(
            scan(&mem),
            Some(EBDA_START),
            "floating pointer in the EBDA's first KiB"
        );
        let t = parse(&mem);
        let end = t.addr + t.bytes.len() as u64;
        assert!(
            t.addr >= acpi_end,
            "table at {:#x}, ACPI up to {acpi_end:#x}",
            t.addr
        );
        // Both parts inside one e820-reserved range, so the guest never reuses them as RAM.
        let reserved = |start: u64, end: u64| {
            crate::boot::memory_map(&mem)
                .iter()
                .any(|&(s, len, kind)| kind == 2 && s <= start && end <= s + len)
        };
        assert!(reserved(EBDA_START, EBDA_START + 16) && reserved(t.addr, end));
        let acpi_len = (acpi_end - ACPI_START) as usize;
        assert_eq!(read(&mem, ACPI_START, acpi_len), acpi_bytes[..acpi_len]);
    }

    #[test]
    fn rejects_vcpu_counts_without_free_apic_ids() {
        let mem = guest();
        assert!(write(&mem, 0).is_err());
        assert!(write(&mem, 255).is_err());
        assert_eq!(scan(&mem), None);
    }
}
