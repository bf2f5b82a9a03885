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

pub fn create(mib: u64) -> Result<GuestMemoryMmap> {
    let ranges = ram_ranges(mib)?;
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
}
