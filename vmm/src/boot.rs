//! Loading the guest kernel (bzImage or PVH ELF), initrd and command line, and writing the boot
//! structures the kernel reads (zero page or `hvm_start_info`), through linux-loader.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::{
    linux::LinuxBootConfigurator, pvh::PvhBootConfigurator, BootConfigurator, BootParams,
};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use crate::layout::*;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy)]
pub enum EntryPoint {
    /// 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { rip: u64 },
    /// PVH: 32-bit protected mode, RBX = `hvm_start_info`.
    Pvh { rip: u64 },
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XLF_KERNEL_64: u16 = 1 << 0;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

// linux-loader's PVH structs are not `ByteValued`; these wrappers are only ever written as bytes.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct StartInfo(hvm_start_info);
// SAFETY: plain-old-data C struct with no implicit padding that matters to the guest.
unsafe impl ByteValued for StartInfo {}
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: plain-old-data C struct.
unsafe impl ByteValued for MemmapEntry {}
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: plain-old-data C struct.
unsafe impl ByteValued for ModlistEntry {}

/// The guest's memory map as (start, size, e820 type).
pub(crate) fn memory_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Loads the kernel image; the format is recognised from its contents.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelLoaderResult> {
    let mut f =
        File::open(path).with_context(|| format!("cannot open kernel {}", path.display()))?;
    let elf = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)));
    match elf {
        Ok(r) => Ok(r),
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            anyhow!(
                "{} is not a kernel microvm can boot (an ELF vmlinux with PVH, or a bzImage): {e}",
                path.display()
            )
        }),
        Err(e) => Err(anyhow!("cannot load ELF kernel {}: {e}", path.display())),
    }
}

/// Places the initrd page-aligned at the top of low RAM (below `max_addr`).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<(u64, u64)> {
    let data =
        std::fs::read(path).with_context(|| format!("cannot read initrd {}", path.display()))?;
    let size = data.len() as u64;
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.len())
        .unwrap_or(0)
        .min(max_addr.saturating_add(1));
    let addr = low_end.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(a) if a >= kernel_end => {
            mem.write_slice(&data, GuestAddress(a))
                .context("cannot write initrd into guest memory")?;
            Ok((a, size))
        }
        _ => bail!(
            "initrd {} ({} KiB) does not fit in guest memory above the kernel: raise --memory",
            path.display(),
            size >> 10
        ),
    }
}

pub struct BootSetup<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a Cmdline,
    pub rsdp_addr: u64,
}

/// Loads everything and writes the boot structures; returns where to start the boot vCPU.
pub fn setup(mem: &GuestMemoryMmap, s: &BootSetup) -> Result<EntryPoint> {
    let kernel = load_kernel(mem, s.kernel)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), s.cmdline)
        .map_err(|e| anyhow!("cannot write the kernel command line: {e}"))?;
    let cmdline_size = s
        .cmdline
        .as_cstring()
        .map_err(|e| anyhow!("invalid kernel command line: {e}"))?
        .as_bytes_with_nul()
        .len() as u32;

    let initrd_max = kernel
        .setup_header
        .map(|h| h.initrd_addr_max as u64)
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let initrd = match s.initrd {
        Some(p) => Some(load_initrd(mem, p, kernel.kernel_end, initrd_max)?),
        None => None,
    };
    let map = memory_map(mem);

    if let PvhBootCapability::PvhEntryPresent(entry) = kernel.pvh_boot_cap {
        write_pvh(mem, s, &map, initrd)?;
        return Ok(EntryPoint::Pvh {
            rip: entry.raw_value(),
        });
    }
    let Some(header) = kernel.setup_header else {
        bail!(
            "{} is an ELF kernel without a PVH entry note: build it with CONFIG_PVH=y",
            s.kernel.display()
        );
    };
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        bail!("{} is not a 64-bit bzImage", s.kernel.display());
    }
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_size;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = s.rsdp_addr;
    if map.len() > params.e820_table.len() {
        bail!("too many memory regions for the e820 table");
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| anyhow!("cannot write the zero page: {e}"))?;
    // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
    Ok(EntryPoint::Linux64 {
        rip: kernel.kernel_load.raw_value() + 0x200,
    })
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    s: &BootSetup,
    map: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        rsdp_paddr: s.rsdp_addr,
        ..Default::default()
    };
    let entries: Vec<MemmapEntry> = map
        .iter()
        .map(|&(addr, size, type_)| {
            MemmapEntry(hvm_memmap_table_entry {
                addr,
                size,
                type_,
                reserved: 0,
            })
        })
        .collect();
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&StartInfo(info), GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&entries, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some((paddr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        });
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| anyhow!("cannot write PVH start info: {e}"))?;
    Ok(())
}
