//! What the VMM itself costs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bounce::{Dma, TraceRecorder};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// /proc/self/smaps, opened during set-up (the main thread's seccomp filter allows no open) and
/// read from the start whenever needed.
pub struct Smaps(Option<File>);

impl Smaps {
    pub fn open() -> Smaps {
        Smaps(File::open("/proc/self/smaps").ok())
    }

    fn read(&mut self) -> Option<String> {
        let f = self.0.as_mut()?;
        f.seek(SeekFrom::Start(0)).ok()?;
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        Some(s)
    }
}

/// Logs the process's resident memory outside guest RAM (from /proc/self/smaps), and how much
/// of it is bounce pools (in a confidential VM those would be guest memory made shared).
pub fn log_memory_overhead(smaps: &mut Smaps, mem: &GuestMemoryMmap, dma: &Dma) {
    let Some(smaps) = smaps.read() else {
        log::warn!("cannot read /proc/self/smaps: no memory overhead figure");
        return;
    };
    // Guest RAM's resident pages from mincore, not from smaps: the kernel may merge a guest
    // region's mapping with a neighbouring anonymous one, and smaps then has no line for it.
    let guest_kib: u64 = mem
        .iter()
        .map(|r| resident_kib(r.as_ptr(), r.len() as usize))
        .sum();
    let total_kib: u64 = smaps
        .lines()
        .filter_map(|l| l.strip_prefix("Rss:"))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let pools_kib = dma.stats().map_or(0, |s| s.shared_bytes >> 10);
    log::info!(
        "VMM resident memory beyond guest RAM: {} KiB, of which bounce pools {} KiB (guest RAM resident: {} KiB)",
        total_kib.saturating_sub(guest_kib),
        pools_kib,
        guest_kib
    );
}

/// KiB of `[addr, addr + len)` (page-aligned, mapped) resident in memory.
fn resident_kib(addr: *const u8, len: usize) -> u64 {
    const PAGE: usize = 4096;
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: mincore reads the page tables of a mapping we own (a guest memory region, page-
    // aligned, `len` bytes) and writes one byte per page into `vec`, which has that many.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * (PAGE as u64 / 1024)
}

/// What `--restricted-dma` and `--dma-trace` produce: statistics and a trace to flush.
#[derive(Clone)]
pub struct DmaReport {
    pub dma: Dma,
    pub trace: Option<Arc<TraceRecorder>>,
}

impl DmaReport {
    /// Logs the bounce statistics (when bouncing) as one JSON line and flushes the DMA trace.
    pub fn log(&self) {
        if let Some(stats) = self.dma.stats() {
            match serde_json::to_string(&stats) {
                Ok(json) => log::info!("bounce statistics: {json}"),
                Err(e) => log::warn!("cannot serialize bounce statistics: {e}"),
            }
        }
        if let Some(trace) = &self.trace {
            if let Err(e) = trace.flush() {
                log::warn!("cannot flush the DMA trace: {e}");
            }
            if trace.errors() > 0 {
                log::warn!("DMA trace: {} records could not be written", trace.errors());
            }
        }
    }
}
