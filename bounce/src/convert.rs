//! The cost of converting memory between private and shared (decrypt/encrypt in Linux terms:
//! `set_memory_decrypted` / `set_memory_encrypted`).
//!
//! No public per-page figure exists for SEV-SNP page-state changes, TDX `MapGPA` or guest_memfd
//! attribute conversions (see the seed thread of the dynamic-swiotlb debate: "I haven't
//! measured"). What is known is the *shape*: one exit or hypercall per call, and work per page on
//! the host. The presets below are therefore **assumptions**, documented number by number, meant
//! to be overridden (`convert=CALL_NS/PAGE_NS`); report results as functions of the cost, not as
//! facts about hardware.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Per-call and per-page price of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvertCost {
    /// Free (a non-confidential guest, or to isolate the copy cost).
    #[default]
    None,
    /// SEV-SNP page-state change through the GHCB. Assumptions: a VMGEXIT round trip of ~4 us
    /// per call, and ~1 us per 4 KiB page (host RMPUPDATE + guest PVALIDATE + TLB shootdown).
    /// Batch limit: `VMGEXIT_PSC_MAX_ENTRY` = 253 entries per request
    /// (arch/x86/include/asm/sev-common.h), so a large conversion takes ceil(pages/253) calls.
    /// Shape source: a 4 MiB change with 4 KiB backing pages made 1024 extra exits (LKML).
    Snp,
    /// TDX `TDG.VP.VMCALL<MapGPA>` plus `TDG.MEM.PAGE.ACCEPT`. Assumptions: ~6 us per call
    /// (TD exit through the TDX module to KVM and back) and ~1.5 us per 4 KiB page (SEPT update +
    /// accept). KVM handles MapGPA in 64 MiB chunks with retries (`tdx_map_gpa`), so a large
    /// conversion takes ceil(bytes/64 MiB) calls.
    Tdx,
    /// Anything else, e.g. measured on real hardware.
    Custom { per_call_ns: u64, per_page_ns: u64 },
}

/// What the model does with a conversion's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvertMode {
    /// Add the modeled time to the statistics only.
    #[default]
    Account,
    /// Also really delay the thread that pays (the worker for extensions, the I/O thread for
    /// transient pools), so guest-visible I/O slows as it would.
    Inject,
}

impl ConvertCost {
    /// (per-call ns, per-page ns, pages per call or 0 for unlimited).
    pub fn params(self) -> (u64, u64, u64) {
        match self {
            ConvertCost::None => (0, 0, 0),
            ConvertCost::Snp => (4_000, 1_000, 253),
            ConvertCost::Tdx => (6_000, 1_500, (64 << 20) / 4096),
            ConvertCost::Custom {
                per_call_ns,
                per_page_ns,
            } => (per_call_ns, per_page_ns, 0),
        }
    }

    /// Calls and modeled nanoseconds to convert `pages` pages.
    pub fn cost(self, pages: u64) -> (u64, u64) {
        let (call, page, batch) = self.params();
        if pages == 0 {
            return (0, 0);
        }
        let calls = if batch == 0 { 1 } else { pages.div_ceil(batch) };
        let ns = calls
            .saturating_mul(call)
            .saturating_add(pages.saturating_mul(page));
        (calls, ns)
    }
}

impl FromStr for ConvertCost {
    type Err = ();
    /// `none`, `snp`, `tdx`, or `CALL_NS/PAGE_NS`.
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "none" => ConvertCost::None,
            "snp" => ConvertCost::Snp,
            "tdx" => ConvertCost::Tdx,
            _ => {
                let (c, p) = s.split_once('/').ok_or(())?;
                ConvertCost::Custom {
                    per_call_ns: c.trim().parse().map_err(|_| ())?,
                    per_page_ns: p.trim().parse().map_err(|_| ())?,
                }
            }
        })
    }
}

/// Delays the calling thread by `ns`, precisely: sleep for all but the last 100 us, then spin.
pub fn delay(ns: u64) {
    if ns == 0 {
        return;
    }
    let start = Instant::now();
    let target = Duration::from_nanos(ns);
    const SPIN: Duration = Duration::from_micros(100);
    if target > SPIN {
        std::thread::sleep(target - SPIN);
    }
    while start.elapsed() < target {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs() {
        assert_eq!(ConvertCost::None.cost(100), (1, 0));
        assert_eq!(ConvertCost::Snp.cost(0), (0, 0));
        assert_eq!(ConvertCost::Snp.cost(253), (1, 4_000 + 253_000));
        assert_eq!(ConvertCost::Snp.cost(254), (2, 8_000 + 254_000));
        // 64 MiB default pool under TDX: one MapGPA chunk.
        assert_eq!(ConvertCost::Tdx.cost(16384), (1, 6_000 + 16384 * 1_500));
    }

    #[test]
    fn delay_is_at_least_asked() {
        let t = Instant::now();
        delay(300_000);
        assert!(t.elapsed() >= Duration::from_micros(300));
    }
}
