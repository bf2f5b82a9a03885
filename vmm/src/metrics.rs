//! What the VMM itself costs.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Logs the process's resident memory outside guest RAM (from /proc/self/smaps).
pub fn log_memory_overhead(mem: &GuestMemoryMmap) {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
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
    log::info!(
        "VMM resident memory beyond guest RAM: {} KiB (guest RAM resident: {} KiB)",
        total_kib - guest_kib,
        guest_kib
    );
}
