//! The cost of converting memory between private and shared (decrypt/encrypt in Linux terms:
//! `set_memory_decrypted` / `set_memory_encrypted`), by direction and granularity.
//!
//! A conversion of `pages` pages is priced as `calls * call_ns + exits * exit_ns + pages *
//! page_ns`, each direction with its own figures, where
//! - `calls`: the guest's requests (one TDVMCALL<MapGPA>, one GHCB Page State Change request per
//!   `pages_per_call` pages, one pKVM share/unshare call per page);
//! - `exits`: the exits to the VMM those requests cause (`KVM_EXIT_HYPERCALL` with
//!   `KVM_HC_MAP_GPA_RANGE`, after which the VMM flips the range's memory attributes), one per
//!   `pages_per_exit` pages of a request;
//! - `page_ns`: the work per page (guest validation or acceptance, host page-table and RMP/S-EPT
//!   updates, TLB and cache flushes).
//!
//! The *shapes* (how many calls and exits) come from the Linux and KVM sources cited at each
//! preset. The *times* are **assumptions**: no public per-page figure exists for SEV-SNP page
//! state changes, TDX `MapGPA` or guest_memfd attribute conversions (the seed thread of the
//! dynamic-swiotlb debate: "I haven't measured"; /work/shared/DMA-FACTS.md, "Conversion
//! costs"). Override them (`convert=custom:...`) and report results as functions of the cost,
//! not as facts about hardware. The presets count 4 KiB pages (the `page` key's default).

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which way a conversion goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertDirection {
    /// Private -> shared (Linux `set_memory_decrypted`): a new pool.
    ToShared,
    /// Shared -> private (Linux `set_memory_encrypted`): a pool released.
    ToPrivate,
}

/// One direction's price and granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirCost {
    /// Per guest request: the round trip from the guest into the host (or the TDX module, or
    /// the pKVM hypervisor) and back.
    pub call_ns: u64,
    /// Per exit to the VMM: KVM's exit to user space, the VMM's attribute change
    /// (`KVM_SET_MEMORY_ATTRIBUTES`, guest_memfd), re-entry.
    pub exit_ns: u64,
    /// Per page.
    pub page_ns: u64,
    /// Pages one request carries at most; 0: any number (one request per conversion).
    pub pages_per_call: u64,
    /// Pages of a request handled per exit to the VMM; 0: requests cause no exit to the VMM.
    pub pages_per_exit: u64,
}

impl DirCost {
    const FREE: DirCost = DirCost {
        call_ns: 0,
        exit_ns: 0,
        page_ns: 0,
        pages_per_call: 0,
        pages_per_exit: 0,
    };
}

/// What converting some pages costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub calls: u64,
    pub exits: u64,
    /// Modeled nanoseconds.
    pub ns: u64,
}

/// The conversion cost model: a preset or explicit figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvertCost {
    /// No conversions (a guest without memory encryption, or to isolate the copy cost): nothing
    /// is converted or counted.
    #[default]
    None,
    /// AMD SEV-SNP: GHCB Page State Change requests (see [`SNP`]).
    Snp,
    /// Intel TDX: `TDG.VP.VMCALL<MapGPA>`, accept on the way back to private (see [`TDX`]).
    Tdx,
    /// Arm pKVM: one share/unshare hypercall per page (see [`PKVM`]).
    Pkvm,
    /// Every figure given (e.g. measured on real hardware).
    Custom {
        to_shared: DirCost,
        to_private: DirCost,
    },
}

/// Exit to the VMM for one `KVM_HC_MAP_GPA_RANGE` range, its `KVM_SET_MEMORY_ATTRIBUTES` (and
/// guest_memfd invalidation or allocation) and the return to the guest. **Assumption**: 4 us, a
/// few times a plain KVM user-space exit (1-2 us) for the attribute update and mapping zap.
/// Both TDX and SNP reach the VMM this way in upstream KVM (`__tdx_map_gpa`, `snp_begin_psc`).
const EXIT_NS: u64 = 4_000;

/// SEV-SNP presets. Shape, Linux guest `__set_pages_state` (arch/x86/coco/sev/core.c, 6.x):
/// a request carries at most `VMGEXIT_PSC_MAX_ENTRY` = 253 entries
/// (arch/x86/include/asm/sev-common.h); the guest rescinds validation (`PVALIDATE`) of each
/// page before a change to shared and validates each page after a change to private. KVM
/// `snp_begin_psc` (arch/x86/kvm/svm/sev.c, 6.11+) coalesces adjacent entries of one operation
/// and page size into one `KVM_HC_MAP_GPA_RANGE` exit: a contiguous range of 4 KiB entries is
/// one exit per request. Linux uses 2 MiB entries for 2 MiB-aligned parts of the linear map;
/// the model uses 4 KiB entries only (more requests for large aligned pools, an upper bound).
/// Times, **assumptions**: 2 us per request (VMGEXIT world switch and the GHCB/PSC buffer
/// handling in KVM), [`EXIT_NS`] per exit, 1 us per page both ways (guest `PVALIDATE`, host
/// `RMPUPDATE` and TLB flush; the shape "work per page on the host" is from DMA-FACTS.md: a
/// 4 MiB change with 4 KiB backing pages made 1024 extra exits).
pub const SNP: [DirCost; 2] = {
    let d = DirCost {
        call_ns: 2_000,
        exit_ns: EXIT_NS,
        page_ns: 1_000,
        pages_per_call: 253,
        pages_per_exit: 253,
    };
    [d, d]
};

/// TDX presets `[to shared, to private]`. Shape: the guest makes one `TDG.VP.VMCALL<MapGPA>`
/// for the whole range (`tdx_enc_status_changed`, arch/x86/coco/tdx/tdx.c; a RETRY answer,
/// given when an interrupt is pending, is not modeled); KVM splits it into
/// `TDX_MAP_GPA_MAX_LEN` = 2 MiB pieces, each a `KVM_HC_MAP_GPA_RANGE` exit to the VMM
/// (`tdx_map_gpa`/`__tdx_map_gpa`, arch/x86/kvm/vmx/tdx.c, 6.16); so 512 pages per exit. Only
/// on the way back to private does the guest accept the pages (`TDG.MEM.PAGE.ACCEPT`,
/// `tdx_accept_memory`, arch/x86/coco/tdx/tdx-shared.c): it tries 2 MiB first, but KVM maps TD
/// private memory at 4 KiB only (`tdx_gmem_private_max_mapping_level` returns `PG_LEVEL_4K`),
/// so it accepts every 4 KiB page, each after an EPT violation that KVM resolves in the
/// kernel (`TDH.MEM.PAGE.AUG`, no exit to the VMM). Times, **assumptions**: 3 us per MapGPA
/// (a TD exit through the TDX module to KVM and back), [`EXIT_NS`] per 2 MiB piece; per page
/// 0.5 us to shared (the guest's cache flush, KVM removing the private S-EPT entry and TLB
/// tracking) and 1.5 us to private (the old single TDX figure "S-EPT update + accept": AUG,
/// the EPT violation and the accept).
pub const TDX: [DirCost; 2] = [
    DirCost {
        call_ns: 3_000,
        exit_ns: EXIT_NS,
        page_ns: 500,
        pages_per_call: 0,
        pages_per_exit: 512,
    },
    DirCost {
        call_ns: 3_000,
        exit_ns: EXIT_NS,
        page_ns: 1_500,
        pages_per_call: 0,
        pages_per_exit: 512,
    },
];

/// pKVM presets. Shape: the guest shares and unshares one page per hypercall
/// (`ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID` / `_UNSHARE_`, `__set_memory_range`,
/// drivers/virt/coco/pkvm-guest/arm-pkvm-guest.c, 6.12+; DMA-FACTS.md: "one call per page").
/// **Assumption**: the hypervisor handles them at EL2 and the host kernel, without an exit to
/// the VMM (crosvm), so `pages_per_exit` = 0. Times, **assumptions**: 1 us per call (HVC to EL2
/// and back), 0.5 us per page (stage-2 updates of guest and host, TLB invalidation).
pub const PKVM: [DirCost; 2] = {
    let d = DirCost {
        call_ns: 1_000,
        exit_ns: 0,
        page_ns: 500,
        pages_per_call: 1,
        pages_per_exit: 0,
    };
    [d, d]
};

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
    /// Whether memory is encrypted (a confidential guest): every model but `none`.
    pub fn encrypted(self) -> bool {
        self != ConvertCost::None
    }

    /// The figures of one direction.
    pub fn params(self, dir: ConvertDirection) -> DirCost {
        let i = dir as usize;
        match self {
            ConvertCost::None => DirCost::FREE,
            ConvertCost::Snp => SNP[i],
            ConvertCost::Tdx => TDX[i],
            ConvertCost::Pkvm => PKVM[i],
            ConvertCost::Custom {
                to_shared,
                to_private,
            } => [to_shared, to_private][i],
        }
    }

    /// Calls, exits and modeled nanoseconds to convert `pages` pages in direction `dir`
    /// (nothing for `none` or zero pages).
    pub fn cost(self, dir: ConvertDirection, pages: u64) -> Cost {
        if pages == 0 || !self.encrypted() {
            return Cost::default();
        }
        let d = self.params(dir);
        let per_call = if d.pages_per_call == 0 {
            pages
        } else {
            d.pages_per_call
        };
        let (full, rest) = (pages / per_call, pages % per_call);
        let calls = full + u64::from(rest > 0);
        let exits = if d.pages_per_exit == 0 {
            0
        } else {
            full * per_call.div_ceil(d.pages_per_exit) + rest.div_ceil(d.pages_per_exit)
        };
        let ns = calls
            .saturating_mul(d.call_ns)
            .saturating_add(exits.saturating_mul(d.exit_ns))
            .saturating_add(pages.saturating_mul(d.page_ns));
        Cost { calls, exits, ns }
    }
}

/// The syntax `FromStr` takes, for error messages.
pub const CONVERT_SYNTAX: &str = "expected none, snp, tdx, pkvm, or \
    custom:to-shared=CALL_NS/EXIT_NS/PAGE_NS/PAGES_PER_CALL/PAGES_PER_EXIT:to-private=(the same five)";

fn dir_cost(s: &str) -> Option<DirCost> {
    let v: Vec<u64> = s
        .split('/')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [call_ns, exit_ns, page_ns, pages_per_call, pages_per_exit] = v[..] else {
        return None;
    };
    Some(DirCost {
        call_ns,
        exit_ns,
        page_ns,
        pages_per_call,
        pages_per_exit,
    })
}

impl FromStr for ConvertCost {
    type Err = ();
    /// `none`, `snp`, `tdx`, `pkvm`, or
    /// `custom:to-shared=CALL_NS/EXIT_NS/PAGE_NS/PAGES_PER_CALL/PAGES_PER_EXIT:to-private=...`
    /// with both directions and all five figures of each (`PAGES_PER_CALL` 0: any number per
    /// call; `PAGES_PER_EXIT` 0: no exit to the VMM).
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "none" => ConvertCost::None,
            "snp" => ConvertCost::Snp,
            "tdx" => ConvertCost::Tdx,
            "pkvm" => ConvertCost::Pkvm,
            _ => {
                let rest = s.strip_prefix("custom:").ok_or(())?;
                let (mut shared, mut private) = (None, None);
                for part in rest.split(':') {
                    let (k, v) = part.split_once('=').ok_or(())?;
                    let slot = match k.trim() {
                        "to-shared" | "to_shared" => &mut shared,
                        "to-private" | "to_private" => &mut private,
                        _ => return Err(()),
                    };
                    if slot.replace(dir_cost(v).ok_or(())?).is_some() {
                        return Err(());
                    }
                }
                ConvertCost::Custom {
                    to_shared: shared.ok_or(())?,
                    to_private: private.ok_or(())?,
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
    use super::ConvertDirection::{ToPrivate, ToShared};
    use super::*;

    const MIB4: u64 = (4 << 20) / 4096;

    #[test]
    fn tdx_4m_to_shared_is_one_mapgpa_and_two_exits() {
        let c = ConvertCost::Tdx.cost(ToShared, MIB4);
        assert_eq!((c.calls, c.exits), (1, 2));
        assert_eq!(c.ns, 3_000 + 2 * EXIT_NS + 1024 * 500);
        // A piece is 2 MiB: one page more is a third exit.
        assert_eq!(ConvertCost::Tdx.cost(ToShared, MIB4 + 1).exits, 3);
        assert_eq!(ConvertCost::Tdx.cost(ToShared, 1).exits, 1);
    }

    #[test]
    fn tdx_to_private_accepts_every_page() {
        let s = ConvertCost::Tdx.cost(ToShared, MIB4);
        let p = ConvertCost::Tdx.cost(ToPrivate, MIB4);
        assert_eq!((p.calls, p.exits), (s.calls, s.exits));
        // 1024 pages accepted: the to-private page figure applies 1024 times, to-shared has none.
        let d = TDX[ToPrivate as usize];
        assert_eq!(p.ns, d.call_ns + 2 * d.exit_ns + 1024 * d.page_ns);
        assert_eq!(p.ns - s.ns, 1024 * (TDX[1].page_ns - TDX[0].page_ns));
        assert_ne!(s, p, "the directions cost differently");
    }

    #[test]
    fn snp_requests_carry_253_entries_one_exit_each() {
        let c = ConvertCost::Snp.cost(ToShared, 253);
        assert_eq!(
            c,
            Cost {
                calls: 1,
                exits: 1,
                ns: 2_000 + EXIT_NS + 253 * 1_000
            }
        );
        let c = ConvertCost::Snp.cost(ToPrivate, 254);
        assert_eq!((c.calls, c.exits), (2, 2));
        assert_eq!(
            ConvertCost::Snp.cost(ToShared, MIB4).calls,
            1024u64.div_ceil(253)
        );
    }

    #[test]
    fn pkvm_one_call_per_page_no_exit() {
        let c = ConvertCost::Pkvm.cost(ToShared, 16);
        assert_eq!(
            c,
            Cost {
                calls: 16,
                exits: 0,
                ns: 16 * (1_000 + 500)
            }
        );
    }

    #[test]
    fn none_converts_nothing() {
        assert_eq!(ConvertCost::None.cost(ToShared, 100), Cost::default());
        assert_eq!(ConvertCost::Snp.cost(ToShared, 0), Cost::default());
        assert!(!ConvertCost::None.encrypted() && ConvertCost::Pkvm.encrypted());
    }

    #[test]
    fn custom_takes_every_figure_of_both_directions() {
        let c: ConvertCost = "custom:to-shared=10/20/30/4/2:to-private=1/2/3/0/0"
            .parse()
            .unwrap();
        let ConvertCost::Custom {
            to_shared,
            to_private,
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            to_shared,
            DirCost {
                call_ns: 10,
                exit_ns: 20,
                page_ns: 30,
                pages_per_call: 4,
                pages_per_exit: 2
            }
        );
        assert_eq!(to_private.pages_per_exit, 0);
        // 9 pages: calls of 4, 4, 1; exits 2 + 2 + 1.
        assert_eq!(
            c.cost(ToShared, 9),
            Cost {
                calls: 3,
                exits: 5,
                ns: 3 * 10 + 5 * 20 + 9 * 30
            }
        );
        // Unlimited pages per call, no exits.
        assert_eq!(
            c.cost(ToPrivate, 9),
            Cost {
                calls: 1,
                exits: 0,
                ns: 1 + 9 * 3
            }
        );
        for bad in [
            "custom:to-shared=1/2/3/4/5",
            "custom:to-shared=1/2/3/4:to-private=1/2/3/4/5",
            "custom:to-shared=1/2/3/4/5/6:to-private=1/2/3/4/5",
            "custom:to-shared=1/2/3/4/5:to-private=1/2/3/4/5:to-shared=1/2/3/4/5",
            "custom:to-shared=1/2/3/4/5:from=1/2/3/4/5",
            "custom:to-shared=1/2/x/4/5:to-private=1/2/3/4/5",
            "100/20",
            "tdx2",
        ] {
            assert!(bad.parse::<ConvertCost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn delay_is_at_least_asked() {
        let t = Instant::now();
        delay(300_000);
        assert!(t.elapsed() >= Duration::from_micros(300));
    }
}
