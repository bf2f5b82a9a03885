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

/// Guest RAM is mapped lazily, so an mmap far beyond the host's memory succeeds and the host
/// runs out later, under the guest: refuse up front what RAM and swap together cannot back.
fn check_host_can_back(mib: u64, host: Option<(u64, u64)>) -> Result<()> {
    if let Some((ram, swap)) = host {
        if mib > ram + swap {
            bail!(
                "--memory {mib} MiB is more than this host can back ({ram} MiB of RAM and {swap} \
                 MiB of swap): give the guest less"
            );
        }
    }
    Ok(())
}

pub fn create(mib: u64) -> Result<GuestMemoryMmap> {
    let ranges = ram_ranges(mib)?;
    check_host_can_back(mib, host_memory_mib())?;
    GuestMemoryMmap::from_ranges(&ranges)
        .with_context(|| format!("cannot allocate {mib} MiB of guest memory"))
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
    fn refuses_more_than_the_host_has() {
        assert!(check_host_can_back(1024, Some((1024, 0))).is_ok());
        assert!(check_host_can_back(1536, Some((1024, 512))).is_ok());
        let e = check_host_can_back(2048, Some((1024, 512))).unwrap_err();
        assert!(
            e.to_string().contains("more than this host can back"),
            "{e}"
        );
        assert!(check_host_can_back(1 << 40, None).is_ok());
        let (ram, _) = host_memory_mib().expect("/proc/meminfo");
        assert!(ram > 0);
    }
}
