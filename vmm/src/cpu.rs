//! vCPU state at boot: CPUID, MSRs, registers, FPU and local APIC, as a micro-VMM sets them.

use anyhow::{Context, Result};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::EntryPoint;
use crate::layout::*;

// CPUID bits (Intel SDM vol. 2A, AMD APM vol. 3).
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// Filters the host's supported CPUID for vCPU `id` of `count`: APIC ids and topology (one
/// core per vCPU, no SMT), the hypervisor bit, and no power-management leaves we do not back.
pub fn filter_cpuid(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // KVM emulates the TSC-deadline timer (it is in KVM_GET_EMULATED_CPUID, not
                // the supported list): offering it lets Linux skip calibrating the APIC timer
                // against the PIT and leave the PIT off.
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Cores per package - 1 in EAX[31:26]; caches shared by one thread each.
                let cores = u32::from(count.max(1)) - 1;
                e.eax = (e.eax & 0x3ff) | (cores << 26);
            }
            0x6 => {
                // No thermal/power management; an always-running APIC timer.
                e.eax = LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                // x2APIC topology: level 0 = SMT (1 thread), level 1 = core (count).
                let shift = u32::BITS - u32::from(count.max(1)).saturating_sub(1).leading_zeros();
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
                e.edx = u32::from(id);
            }
            0x8000_001e => {
                // AMD: extended APIC id, one thread per core.
                e.eax = u32::from(id);
                e.ebx = (e.ebx & 0xffff_ff00) | u32::from(id);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

// MSR indices (Intel SDM vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ];
    let msrs = Msrs::from_entries(&entries).context("cannot build the MSR list")?;
    let set = vcpu.set_msrs(&msrs).context("KVM_SET_MSRS failed")?;
    anyhow::ensure!(
        set == entries.len(),
        "KVM accepted only {set} of {} boot MSRs (MSR {:#x} refused)",
        entries.len(),
        entries[set].index
    );
    Ok(())
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).context("KVM_SET_FPU failed")
}

// Local APIC register offsets and delivery modes (Intel SDM vol. 3A, 11.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 = ExtINT (the PIC's output), LINT1 = NMI, as a PC's BIOS leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().context("KVM_GET_LAPIC failed")?;
    let mut set_lvt = |off: usize, mode: u32| {
        let reg = &mut lapic.regs[off..off + 4];
        let bytes: Vec<u8> = reg.iter().map(|&b| b as u8).collect();
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let v = (v & !0x700) | (mode << 8);
        for (dst, src) in reg.iter_mut().zip(v.to_le_bytes()) {
            *dst = src as _;
        }
    };
    set_lvt(APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).context("KVM_SET_LAPIC failed")
}

// Page-table and control-register bits.
const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The byte-granular limit KVM wants, expanded from the descriptor's 20 bits.
fn segment_limit(entry: u64) -> u32 {
    let raw = (((entry >> 48) & 0xf) << 16 | (entry & 0xffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

fn segment(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: segment_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// The boot vCPU's GDT and registers for `entry`, from the registers KVM gave it (`sregs`).
#[derive(Debug)]
pub(crate) struct BootCpuState {
    /// Written at `GDT_ADDR`.
    pub gdt: Vec<u64>,
    pub sregs: kvm_sregs,
    pub regs: kvm_regs,
    /// Whether the identity-mapped page tables at `PML4_ADDR` are needed (long mode).
    pub page_tables: bool,
}

// GDT indices: the 32-bit boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18
// (Documentation/arch/x86/boot.rst, "32-bit BOOT PROTOCOL"); the other entries keep the
// layout they always had (code 0x08, data 0x10, TSS 0x18).
const GDT_FLAT_CODE32: u16 = 0xc09b;
const GDT_FLAT_DATA: u16 = 0xc093;
const GDT_TSS32: u16 = 0x008b;

pub(crate) fn boot_cpu_state(entry: EntryPoint, mut sregs: kvm_sregs) -> BootCpuState {
    // (GDT, code index, data index, TSS index)
    let (gdt, cs, ds, tss): (Vec<u64>, u8, u8, u8) = match entry {
        EntryPoint::Linux64 { .. } => (
            vec![
                0,
                gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
                gdt_entry(0xc093, 0, 0xfffff), // data
                gdt_entry(0x808b, 0, 0xfffff), // TSS
            ],
            1,
            2,
            3,
        ),
        EntryPoint::Pvh { .. } => (
            vec![
                0,
                gdt_entry(GDT_FLAT_CODE32, 0, 0xffff_ffff),
                gdt_entry(GDT_FLAT_DATA, 0, 0xffff_ffff),
                gdt_entry(GDT_TSS32, 0, 0x67),
            ],
            1,
            2,
            3,
        ),
        EntryPoint::Linux32 { .. } => (
            vec![
                0,
                0,
                gdt_entry(GDT_FLAT_CODE32, 0, 0xffff_ffff), // __BOOT_CS: execute/read
                gdt_entry(GDT_FLAT_DATA, 0, 0xffff_ffff),   // __BOOT_DS: read/write
                gdt_entry(GDT_TSS32, 0, 0x67),
            ],
            2,
            3,
            4,
        ),
    };
    let code = segment(gdt[usize::from(cs)], cs);
    let data = segment(gdt[usize::from(ds)], ds);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[usize::from(tss)], tss);

    // RFLAGS 0x2: interrupts off.
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    let page_tables = matches!(entry, EntryPoint::Linux64 { .. });
    match entry {
        EntryPoint::Linux64 { rip } => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryPoint::Linux32 { rip } => {
            // Protected mode, paging off; ESI = boot_params, EBP = EDI = EBX = 0. The
            // kernel's startup_32 loads its own GDT and stack (in the zero page's scratch
            // field) before it uses either.
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rsp = BOOT_STACK;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryPoint::Pvh { rip } => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = PVH_INFO_ADDR;
        }
    }
    BootCpuState {
        gdt,
        sregs,
        regs,
        page_tables,
    }
}

/// Registers of the boot vCPU for `entry`.
pub fn setup_boot_regs(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<()> {
    let sregs = vcpu.get_sregs().context("KVM_GET_SREGS failed")?;
    let state = boot_cpu_state(entry, sregs);
    for (i, e) in state.gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .context("cannot write the boot GDT")?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .context("cannot write the boot IDT")?;
    if state.page_tables {
        // Identity-map the first GiB with 2 MiB pages.
        mem.write_obj(PDPTE_ADDR | 0x03, GuestAddress(PML4_ADDR))
            .context("cannot write boot page tables")?;
        mem.write_obj(PDE_ADDR | 0x03, GuestAddress(PDPTE_ADDR))
            .context("cannot write boot page tables")?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_ADDR + i * 8))
                .context("cannot write boot page tables")?;
        }
    }
    vcpu.set_sregs(&state.sregs)
        .context("KVM_SET_SREGS failed")?;
    vcpu.set_regs(&state.regs).context("KVM_SET_REGS failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trips_through_segment() {
        let e = gdt_entry(0xa09b, 0, 0xfffff);
        let s = segment(e, 1);
        assert_eq!(
            (s.l, s.db, s.type_, s.present, s.selector),
            (1, 0, 0xb, 1, 8)
        );
        let d = segment(gdt_entry(0xc093, 0, 0xffff_ffff), 2);
        assert_eq!((d.db, d.g, d.limit), (1, 1, 0xffff_ffff));
    }

    fn flat_4g(s: &kvm_segment) -> bool {
        s.base == 0 && s.limit == 0xffff_ffff && s.g == 1 && s.db == 1 && s.l == 0 && s.present == 1
    }

    #[test]
    fn the_32_bit_boot_protocol_gets_boot_cs_0x10_boot_ds_0x18_flat_no_paging_esi_zero_page() {
        let st = boot_cpu_state(
            EntryPoint::Linux32 { rip: 0x10_0000 },
            kvm_sregs {
                cr0: 0x6000_0010,
                cr4: X86_CR4_PAE,
                efer: EFER_LME,
                ..Default::default()
            },
        );
        let s = &st.sregs;
        assert_eq!(s.cs.selector, 0x10);
        assert!(flat_4g(&s.cs), "{:?}", s.cs);
        assert_eq!(s.cs.type_ & 0xa, 0xa, "execute/read code: {:?}", s.cs);
        assert_eq!(s.cs.s, 1);
        for d in [&s.ds, &s.es, &s.ss] {
            assert_eq!(d.selector, 0x18);
            assert!(flat_4g(d), "{d:?}");
            assert_eq!(d.type_ & 0xa, 0x2, "read/write data: {d:?}");
        }
        // The GDT the kernel could reload these from holds the same descriptors.
        assert_eq!(segment(st.gdt[2], 2).selector, s.cs.selector);
        assert_eq!(st.gdt[2], gdt_entry(GDT_FLAT_CODE32, 0, 0xffff_ffff));
        assert_eq!(st.gdt[3], gdt_entry(GDT_FLAT_DATA, 0, 0xffff_ffff));
        assert_eq!(s.gdt.limit as usize, st.gdt.len() * 8 - 1);
        assert!(GDT_ADDR + st.gdt.len() as u64 * 8 <= IDT_ADDR);
        assert_eq!(s.cr0, X86_CR0_PE, "protected mode, paging off");
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert!(!st.page_tables);
        let r = &st.regs;
        assert_eq!(r.rip, 0x10_0000);
        assert_eq!(r.rsi, ZERO_PAGE_ADDR);
        assert_eq!((r.rbp, r.rdi, r.rbx), (0, 0, 0));
        assert_eq!(r.rflags & (1 << 9), 0, "interrupts off");
    }

    #[test]
    fn the_64_bit_boot_protocol_gets_long_mode_and_rsi_zero_page() {
        let st = boot_cpu_state(EntryPoint::Linux64 { rip: 0x10_0200 }, kvm_sregs::default());
        let s = &st.sregs;
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x8, 1, 0));
        assert_eq!(s.ds.selector, 0x10);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
        assert!(st.page_tables);
        assert_eq!((st.regs.rip, st.regs.rsi), (0x10_0200, ZERO_PAGE_ADDR));
    }

    #[test]
    fn pvh_keeps_its_32_bit_layout_and_rbx_start_info() {
        let st = boot_cpu_state(EntryPoint::Pvh { rip: 0x100_0000 }, kvm_sregs::default());
        let s = &st.sregs;
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.tr.selector),
            (0x8, 0x10, 0x18)
        );
        assert!(flat_4g(&s.cs) && flat_4g(&s.ds));
        assert_eq!((s.cr0, s.efer), (X86_CR0_PE, 0));
        assert_eq!((st.regs.rbx, st.regs.rsi), (PVH_INFO_ADDR, 0));
        assert!(GDT_ADDR + st.gdt.len() as u64 * 8 <= IDT_ADDR);
    }
}
