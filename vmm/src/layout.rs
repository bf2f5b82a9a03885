//! Guest physical address map (x86-64), after Firecracker's: low structures below 1 MiB, the
//! kernel at 1 MiB, RAM split around the 32-bit MMIO gap, devices inside the gap.

/// GDT (up to 8 entries: the 32-bit boot protocol's has 5), IDT and boot page tables (see
/// `cpu::boot_cpu_state`).
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x540;
/// PVH `hvm_start_info`, its memory map and module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
pub const PVH_MODLIST_ADDR: u64 = 0x6ff0 - 32;
/// bzImage zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional low RAM; the EBDA and BIOS area follow.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area, where the kernel also scans for the RSDP, up to the MP
/// configuration table.
pub const ACPI_START: u64 = 0xe0000;
/// MP table (see `mptable`): the floating pointer in the EBDA's first KiB, where Linux scans for
/// it; the configuration table it points to (5.2 KiB for 254 vCPUs) in the last 64 KiB below 1 MiB.
pub const MPTABLE_POINTER_ADDR: u64 = EBDA_START;
pub const MPTABLE_ADDR: u64 = 0xf0000;
pub const HIMEM_START: u64 = 0x10_0000;

/// 32-bit MMIO gap: [3 GiB, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map, inside the gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// I/O ports.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
/// Boot marker port (as Cloud Hypervisor's debug port): the guest init writes
/// [`BOOT_MARKER_VALUE`] when user space starts.
pub const BOOT_MARKER_PORT: u16 = 0x80;
pub const BOOT_MARKER_VALUE: u8 = 0x41;
/// ACPI PM1a event (4 bytes) and control (2 bytes) blocks, where QEMU's PIIX4 has them.
pub const ACPI_PM1_PORT: u16 = 0x600;
pub const ACPI_PM1_LEN: u64 = 6;
/// ACPI reset register (FADT RESET_REG), one byte.
pub const ACPI_RESET_PORT: u16 = 0x608;
/// pvpanic (QEMU's ISA pvpanic port), one byte; announced in the DSDT.
pub const PVPANIC_PORT: u16 = 0x505;
