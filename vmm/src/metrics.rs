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
    let guest: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
        .collect();
    let (mut total_kib, mut guest_kib) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = guest.iter().any(|&(s, e)| a >= s && b <= e);
                continue;
            }
        }
        if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total_kib += kib;
            if in_guest {
                guest_kib += kib;
            }
        }
    }
    let pools_kib = dma.stats().map_or(0, |s| s.shared_bytes >> 10);
    log::info!(
        "VMM resident memory beyond guest RAM: {} KiB, of which bounce pools {} KiB (guest RAM resident: {} KiB)",
        total_kib - guest_kib,
        pools_kib,
        guest_kib
    );
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
