//! Loading the guest kernel (bzImage or PVH ELF), initrd and command line, and writing the boot
//! structures the kernel reads (zero page or `hvm_start_info`), through linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::{
    linux::LinuxBootConfigurator, pvh::PvhBootConfigurator, BootConfigurator, BootParams,
};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit boot protocol (a bzImage with `XLF_KERNEL_64`): long mode, RSI = zero page.
    Linux64 { rip: u64 },
    /// 32-bit boot protocol (a bzImage without `XLF_KERNEL_64`): protected mode, paging off,
    /// entered at `code32_start`, ESI = zero page (Documentation/arch/x86/boot.rst).
    Linux32 { rip: u64 },
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
/// Boot protocol 2.02 brought `cmd_line_ptr`, which is how microvm passes the command line
/// (older kernels read it from a fixed place in real-mode memory, which only the 16-bit entry
/// sets up); 2.03 brought `initrd_addr_max`.
const BOOT_PROTOCOL_MIN_32BIT: u16 = 0x0202;
const BOOT_PROTOCOL_INITRD_ADDR_MAX: u16 = 0x0203;
/// The initrd limit of kernels before protocol 2.03 (boot.rst).
const INITRD_ADDR_MAX_OLD: u64 = 0x37ff_ffff;
/// Where a 32-bit kernel's initrd must end for the kernel to use it in place: a 32-bit kernel
/// maps only "low memory" (about 890 MiB with the default 3G/1G split, the smallest of the
/// splits), and relocates an initrd above that (a copy, and a panic if no room is left).
/// `initrd_addr_max` (0x7fffffff in today's kernels) says only what the loader may use.
const INITRD_END_32BIT: u64 = 0x3000_0000;
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
    let mut ident = [0u8; 5];
    if f.read_exact(&mut ident).is_ok() && ident == *b"\x7fELF\x01" {
        bail!(
            "{} is a 32-bit ELF vmlinux: microvm boots a 32-bit kernel only as a bzImage \
             (arch/x86/boot/bzImage of the same build)",
            path.display()
        );
    }
    f.seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot read kernel {}", path.display()))?;
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

    // A bzImage's entry is decided (and a kernel refused) before anything else is written.
    let bz_entry = match (&kernel.pvh_boot_cap, &kernel.setup_header) {
        (PvhBootCapability::PvhEntryPresent(_), _) | (_, None) => None,
        (_, Some(h)) => Some(
            bzimage_entry(h, kernel.kernel_load.raw_value())
                .map_err(|e| anyhow!("{}: {e}", s.kernel.display()))?,
        ),
    };
    let initrd_max = match (&kernel.setup_header, bz_entry) {
        (Some(h), Some(entry)) => initrd_addr_max(h, entry),
        // PVH (no setup header): the limit microvm has always used for its module.
        _ => INITRD_ADDR_MAX_OLD,
    };
    let initrd = match s.initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            kernel_footprint_end(&kernel),
            initrd_max,
        )?),
        None => None,
    };
    let map = memory_map(mem);

    if let PvhBootCapability::PvhEntryPresent(entry) = kernel.pvh_boot_cap {
        write_pvh(mem, s, &map, initrd)?;
        return Ok(EntryPoint::Pvh {
            rip: entry.raw_value(),
        });
    }
    let (Some(header), Some(entry)) = (kernel.setup_header, bz_entry) else {
        bail!(
            "{} is an ELF kernel without a PVH entry note: build it with CONFIG_PVH=y",
            s.kernel.display()
        );
    };
    match entry {
        EntryPoint::Linux64 { rip } => log::info!(
            "{}: 64-bit bzImage (boot protocol {}.{:02}, XLF_KERNEL_64): 64-bit boot protocol, \
             long mode at {rip:#x}",
            s.kernel.display(),
            header.version >> 8,
            header.version & 0xff
        ),
        EntryPoint::Linux32 { rip } => log::info!(
            "{}: bzImage without XLF_KERNEL_64 (boot protocol {}.{:02}): 32-bit boot \
             protocol, protected mode at code32_start {rip:#x}{}",
            s.kernel.display(),
            header.version >> 8,
            header.version & 0xff,
            initrd.map_or(String::new(), |(a, n)| format!(
                ", initrd at {a:#x}..{:#x}",
                a + n
            ))
        ),
        EntryPoint::Pvh { .. } => {}
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
    Ok(entry)
}

/// Where the kernel's memory ends: past the loaded image and, for a bzImage of protocol 2.10+,
/// past the kernel it decompresses, which runs from `pref_address` (LOAD_PHYSICAL_ADDR, 16 MiB
/// by default: a non-relocatable kernel, as a 32-bit tinyconfig one is, always; a relocatable
/// one loaded lower moves up to it) for `init_size` bytes. The initrd must not be put there.
fn kernel_footprint_end(k: &KernelLoaderResult) -> u64 {
    match k.setup_header {
        Some(h) if h.version >= 0x020a => {
            let (pref, init_size) = (h.pref_address, h.init_size);
            let base = pref.max(k.kernel_load.raw_value());
            k.kernel_end.max(base.saturating_add(u64::from(init_size)))
        }
        _ => k.kernel_end,
    }
}

/// How a bzImage with `header`, its protected-mode part loaded at `load_addr`, is entered:
/// through the 64-bit boot protocol when the header says the kernel has a 64-bit entry
/// (`XLF_KERNEL_64`, protocol 2.12+), else through the 32-bit one, whose entry is the start of
/// the protected-mode kernel (`code32_start`, where it was loaded).
pub(crate) fn bzimage_entry(header: &setup_header, load_addr: u64) -> Result<EntryPoint> {
    if header.xloadflags & XLF_KERNEL_64 != 0 {
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
        return Ok(EntryPoint::Linux64 {
            rip: load_addr + 0x200,
        });
    }
    let version = header.version;
    if version < BOOT_PROTOCOL_MIN_32BIT {
        bail!(
            "a bzImage with boot protocol {}.{:02}, and without a 64-bit entry (XLF_KERNEL_64): \
             microvm enters such a kernel through the 32-bit boot protocol, which needs protocol \
             2.02 or later (Linux 2.4 on) to pass the command line; boot a newer kernel",
            version >> 8,
            version & 0xff
        );
    }
    Ok(EntryPoint::Linux32 { rip: load_addr })
}

/// The highest address the initrd may use for a bzImage entered at `entry`.
pub(crate) fn initrd_addr_max(header: &setup_header, entry: EntryPoint) -> u64 {
    let max = if header.version >= BOOT_PROTOCOL_INITRD_ADDR_MAX && header.initrd_addr_max != 0 {
        u64::from(header.initrd_addr_max)
    } else {
        INITRD_ADDR_MAX_OLD
    };
    match entry {
        EntryPoint::Linux32 { .. } => max.min(INITRD_END_32BIT - 1),
        _ => max,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A bzImage file as linux-loader reads it: the setup header at 0x1f1 of a 5-sector setup,
    /// then `payload` bytes of "protected-mode kernel".
    fn fake_bzimage(
        name: &str,
        version: u16,
        xloadflags: u16,
        initrd_addr_max: u32,
    ) -> std::path::PathBuf {
        let mut img = vec![0u8; 5 * 512 + 4096];
        let hdr = setup_header {
            setup_sects: 4,
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            version,
            loadflags: 1, // LOADED_HIGH: a bzImage
            code32_start: HIMEM_START as u32,
            initrd_addr_max,
            xloadflags,
            ..Default::default()
        };
        let bytes = hdr.as_slice();
        img[0x1f1..0x1f1 + bytes.len()].copy_from_slice(bytes);
        let path = std::env::temp_dir().join(format!("microvm-boot-{name}-{}", std::process::id()));
        std::fs::write(&path, img).unwrap();
        path
    }

    fn boot(
        kernel: &Path,
        mem_size: u64,
        initrd_len: usize,
    ) -> (GuestMemoryMmap, Result<EntryPoint>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let initrd = kernel.with_extension("initrd");
        std::fs::write(&initrd, vec![0xa5u8; initrd_len]).unwrap();
        let mut cmdline = Cmdline::new(CMDLINE_MAX).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        let r = setup(
            &mem,
            &BootSetup {
                kernel,
                initrd: Some(&initrd),
                cmdline: &cmdline,
                rsdp_addr: ACPI_START,
            },
        );
        std::fs::remove_file(&initrd).unwrap();
        std::fs::remove_file(kernel).unwrap();
        (mem, r)
    }

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    #[test]
    fn a_bzimage_without_xlf_kernel_64_is_entered_at_code32_start_in_32_bit_mode() {
        let k = fake_bzimage("32", 0x020f, 0, 0x7fff_ffff);
        let (mem, r) = boot(&k, 2048 * MIB, 64 << 10);
        assert_eq!(r.unwrap(), EntryPoint::Linux32 { rip: HIMEM_START });
        let zp = zero_page(&mem);
        let (cmd, loader, image, size) = (
            zp.hdr.cmd_line_ptr,
            zp.hdr.type_of_loader,
            zp.hdr.ramdisk_image,
            zp.hdr.ramdisk_size,
        );
        assert_eq!((cmd, loader), (CMDLINE_ADDR as u32, KERNEL_LOADER_OTHER));
        // 2 GiB of RAM and initrd_addr_max 2 GiB - 1: the initrd still ends below what a
        // 32-bit kernel maps (INITRD_END_32BIT), so the kernel need not move it.
        assert_eq!(size, 64 << 10);
        assert_eq!(u64::from(image) + u64::from(size), INITRD_END_32BIT);
        let n = zp.e820_entries as usize;
        assert_eq!(n, memory_map(&mem).len());
    }

    #[test]
    fn a_bzimage_with_xlf_kernel_64_keeps_the_64_bit_entry_and_the_initrd_at_the_top() {
        let k = fake_bzimage("64", 0x020f, XLF_KERNEL_64, 0x7fff_ffff);
        let (mem, r) = boot(&k, 2048 * MIB, 64 << 10);
        assert_eq!(
            r.unwrap(),
            EntryPoint::Linux64 {
                rip: HIMEM_START + 0x200
            }
        );
        let zp = zero_page(&mem);
        let (image, size) = (zp.hdr.ramdisk_image, zp.hdr.ramdisk_size);
        assert_eq!(u64::from(image) + u64::from(size), 0x8000_0000);
    }

    #[test]
    fn a_32_bit_initrd_obeys_a_lower_initrd_addr_max_and_small_memory() {
        // The header's limit below INITRD_END_32BIT wins...
        let k = fake_bzimage("32-low", 0x020f, 0, 0x1fff_ffff);
        let (mem, r) = boot(&k, 2048 * MIB, 8192);
        assert!(matches!(r.unwrap(), EntryPoint::Linux32 { .. }));
        let zp = zero_page(&mem);
        let image = zp.hdr.ramdisk_image;
        assert_eq!(image, 0x2000_0000 - 8192);
        // ... and so does the end of a small guest's RAM.
        let k = fake_bzimage("32-small", 0x020f, 0, 0x7fff_ffff);
        let (mem, r) = boot(&k, 256 * MIB, 8192);
        assert!(matches!(r.unwrap(), EntryPoint::Linux32 { .. }));
        let image = zero_page(&mem).hdr.ramdisk_image;
        assert_eq!(u64::from(image), 256 * MIB - 8192);
    }

    #[test]
    fn the_initrd_stays_clear_of_where_the_kernel_decompresses() {
        // pref_address 16 MiB, init_size 16 MiB: the kernel uses up to 32 MiB. A 12 MiB initrd
        // in 40 MiB of RAM would start at 28 MiB: refused, not written over the kernel.
        let k = fake_bzimage("footprint", 0x020f, 0, 0x7fff_ffff);
        let mut img = std::fs::read(&k).unwrap();
        img[0x258..0x260].copy_from_slice(&(16 * MIB).to_le_bytes()); // pref_address
        img[0x260..0x264].copy_from_slice(&(16 * MIB as u32).to_le_bytes()); // init_size
        std::fs::write(&k, &img).unwrap();
        let (_, r) = boot(&k, 40 * MIB, (12 * MIB) as usize);
        let msg = format!("{:#}", r.unwrap_err());
        assert!(
            msg.contains("does not fit") && msg.contains("raise --memory"),
            "{msg}"
        );
        // An 8 MiB one fits above 32 MiB.
        let k = fake_bzimage("footprint2", 0x020f, 0, 0x7fff_ffff);
        std::fs::write(&k, &img).unwrap();
        let (mem, r) = boot(&k, 40 * MIB, (8 * MIB) as usize);
        assert!(r.is_ok());
        let image = zero_page(&mem).hdr.ramdisk_image;
        assert_eq!(u64::from(image), 32 * MIB);
    }

    #[test]
    fn a_32_bit_bzimage_before_protocol_2_02_is_refused_saying_why() {
        let k = fake_bzimage("old", 0x0201, 0, 0);
        let (_, r) = boot(&k, 256 * MIB, 4096);
        let msg = format!("{:#}", r.unwrap_err());
        assert!(msg.contains("boot protocol 2.01"), "{msg}");
        assert!(msg.contains("2.02 or later"), "{msg}");
        // The same version with a 64-bit entry is not the 32-bit protocol's business.
        let hdr = setup_header {
            version: 0x0201,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        assert!(bzimage_entry(&hdr, HIMEM_START).is_ok());
    }

    #[test]
    fn initrd_limit_of_protocols_before_2_03_is_the_old_fixed_one() {
        let hdr = setup_header {
            version: 0x0202,
            initrd_addr_max: 0x1234_5678, // not a field before 2.03: ignored
            ..Default::default()
        };
        let e = bzimage_entry(&hdr, HIMEM_START).unwrap();
        assert_eq!(initrd_addr_max(&hdr, e), INITRD_END_32BIT - 1);
        let hdr = setup_header {
            version: 0x0202,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        };
        let e = bzimage_entry(&hdr, HIMEM_START).unwrap();
        assert_eq!(initrd_addr_max(&hdr, e), INITRD_ADDR_MAX_OLD);
    }

    #[test]
    fn a_32_bit_elf_vmlinux_is_refused_with_a_hint() {
        let path = std::env::temp_dir().join(format!("microvm-boot-elf32-{}", std::process::id()));
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x01");
        std::fs::write(&path, elf).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MIB) as usize)]).unwrap();
        let msg = format!("{:#}", load_kernel(&mem, &path).unwrap_err());
        std::fs::remove_file(&path).unwrap();
        assert!(
            msg.contains("32-bit ELF vmlinux") && msg.contains("bzImage"),
            "{msg}"
        );
    }
}
