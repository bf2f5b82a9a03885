//! Guest RAM: anonymous mappings through vm-memory, split around the 32-bit MMIO gap.

use anyhow::{bail, Context, Result};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Smallest guest that can hold a compressed kernel while it decompresses itself.
pub const MIN_MEMORY_MIB: u64 = 32;

/// RAM ranges for `mib` MiB of guest memory.
pub fn ram_ranges(mib: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if mib < MIN_MEMORY_MIB {
        bail!("--memory {mib} MiB is too small: a Linux guest needs at least {MIN_MEMORY_MIB} MiB");
    }
    let size = mib.checked_mul(1 << 20).context("--memory is too large")?;
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    Ok(ranges)
}

/// This host's RAM and swap in MiB (/proc/meminfo), if it can be read.
fn host_memory_mib() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((
        kib("MemTotal:")? >> 10,
        kib("SwapTotal:").unwrap_or(0) >> 10,
    ))
}

/// Guest RAM is mapped lazily (`MAP_NORESERVE`): more than the host's RAM and swap can be
/// given, as every VMM allows (memory overcommit), and is only a problem if the guest touches
/// it all. Say so, once, rather than refuse.
fn warn_if_overcommitted(mib: u64, host: Option<(u64, u64)>) -> bool {
    match host {
        Some((ram, swap)) if mib > ram + swap => {
            log::warn!(
                "--memory {mib} MiB is more than this host's {ram} MiB of RAM and {swap} MiB of \
                 swap: fine while the guest leaves most of it untouched, but the host will \
                 kill microvm (OOM) if the guest uses it all"
            );
            true
        }
        _ => false,
    }
}

/// The guest-physical address space KVM can give a guest: the host CPU's physical address
/// width (CPUID 0x80000008), 36 bits if it does not say.
fn max_guest_phys_bits() -> u32 {
    // `__cpuid` is safe since Rust 1.87 and unsafe before (the workspace allows 1.80).
    #[allow(unused_unsafe)]
    // SAFETY: CPUID has no side effects; leaf 0x80000008 exists on every x86-64 CPU.
    let eax = unsafe { std::arch::x86_64::__cpuid(0x8000_0008) }.eax;
    match eax & 0xff {
        0 => 36,
        bits => bits,
    }
}

/// Refuses guest RAM that cannot be addressed (its top, past the MMIO gap, beyond the
/// physical address width): a clear error instead of a failure deep in mmap or KVM.
fn check_addressable(mib: u64, phys_bits: u32) -> Result<()> {
    let ranges = ram_ranges(mib)?;
    let top = ranges
        .iter()
        .map(|(a, len)| a.0 + *len as u64)
        .max()
        .unwrap_or(0);
    if phys_bits < 64 && top > 1u64 << phys_bits {
        bail!(
            "--memory {mib} MiB does not fit in this host's {phys_bits}-bit guest physical \
             address space (RAM would end at {top:#x}): give the guest less"
        );
    }
    Ok(())
}

pub fn create(mib: u64) -> Result<GuestMemoryMmap> {
    let ranges = ram_ranges(mib)?;
    check_addressable(mib, max_guest_phys_bits())?;
    warn_if_overcommitted(mib, host_memory_mib());
    GuestMemoryMmap::from_ranges(&ranges).with_context(|| {
        format!("cannot map {mib} MiB of guest memory (the host refused the address space)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_gap() {
        assert_eq!(ram_ranges(256).unwrap(), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4096).unwrap();
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
        assert!(ram_ranges(1).is_err());
    }

    #[test]
    fn overcommit_is_allowed_with_a_warning_and_unaddressable_ram_refused() {
        assert!(!warn_if_overcommitted(1536, Some((1024, 512))));
        assert!(warn_if_overcommitted(4096, Some((2048, 0))));
        assert!(!warn_if_overcommitted(1 << 40, None));
        let (ram, _) = host_memory_mib().expect("/proc/meminfo");
        assert!(ram > 0);
        assert!(check_addressable(4096, 36).is_ok());
        // 64 GiB of RAM past the gap ends at 65 GiB: beyond 36 bits (64 GiB).
        let e = check_addressable(64 << 10, 36).unwrap_err();
        assert!(e.to_string().contains("36-bit"), "{e}");
        assert!((36..=57).contains(&max_guest_phys_bits()));
    }
}
