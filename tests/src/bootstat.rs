//! One guest boot's outcome, classified from what the VMM printed and how it exited, and
//! the statistics of a series of them (`boot-compare`).

use serde::{Deserialize, Serialize};

use crate::exec::ExecReport;
use crate::INIT_OK;

/// The line every guest warns when CPUID leaf 0xD disagrees with itself.
pub const XSAVE_WARNING: &str = "XSAVE consistency problem";
/// microvm's exit status for a guest triple fault (`vmm/src/exit.rs`).
pub const MICROVM_STATUS_TRIPLE_FAULT: i32 = 3;

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootKind {
    /// The guest's init printed [`INIT_OK`].
    Init,
    /// The guest reset without its kernel saying why: microvm's triple-fault exit (status 3,
    /// `KVM_EXIT_SHUTDOWN`); for QEMU (`-no-reboot`, which turns that reset into a normal
    /// exit) an exit without [`INIT_OK`], panic or `reboot:` line.
    TripleFault,
    /// The guest kernel panicked (`Kernel panic - not syncing` on its console).
    GuestPanic,
    /// Still running at the boot's timeout: killed.
    Timeout,
    /// Anything else (the VMM failed, the guest rebooted on purpose before init, ...).
    Other,
}

impl BootKind {
    pub const ALL: [BootKind; 5] = [
        BootKind::Init,
        BootKind::TripleFault,
        BootKind::GuestPanic,
        BootKind::Timeout,
        BootKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BootKind::Init => "init",
            BootKind::TripleFault => "triple-fault",
            BootKind::GuestPanic => "guest-panic",
            BootKind::Timeout => "timeout",
            BootKind::Other => "other",
        }
    }
}

/// Classify a boot of `vmm` ("microvm" or "qemu") from its report: the guest console is
/// the VMM's stdout, the VMM's own messages its stderr.
pub fn classify_boot(vmm: &str, rep: &ExecReport) -> BootKind {
    if rep.marks.contains_key(INIT_OK) || rep.stdout.contains(INIT_OK) {
        return BootKind::Init;
    }
    if rep.timed_out {
        return BootKind::Timeout;
    }
    if rep.stdout.contains("Kernel panic - not syncing") {
        return BootKind::GuestPanic;
    }
    let triple_fault = if vmm == "microvm" {
        rep.status == Some(MICROVM_STATUS_TRIPLE_FAULT)
    } else {
        rep.status == Some(0) && !rep.stdout.contains("reboot: ")
    };
    if triple_fault {
        BootKind::TripleFault
    } else {
        BootKind::Other
    }
}

/// One boot, as `boot-compare` records it (a `BOOT-RECORD <json>` line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootRecord {
    pub vmm: String,
    pub run: usize,
    pub kind: BootKind,
    /// Milliseconds from the VMM's start to [`INIT_OK`] on the console.
    pub init_ms: Option<f64>,
    pub elapsed_ms: f64,
    pub status: Option<i32>,
    pub signal: Option<i32>,
    /// The guest warned [`XSAVE_WARNING`].
    pub xsave_warning: bool,
    /// microvm's own `Guest-boot-time` line, milliseconds.
    pub vmm_boot_ms: Option<f64>,
    /// A failed boot's last console lines and the VMM's last messages.
    pub tail: String,
}

fn last_lines(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().map(|l| l.trim_end_matches('\r')).collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

impl BootRecord {
    pub fn new(vmm: &str, run: usize, rep: &ExecReport) -> BootRecord {
        let kind = classify_boot(vmm, rep);
        let tail = if kind == BootKind::Init {
            String::new()
        } else {
            format!(
                "--- console ---\n{}\n--- {vmm} ---\n{}",
                last_lines(&rep.stdout, 15),
                last_lines(&rep.stderr, 6)
            )
        };
        BootRecord {
            vmm: vmm.to_string(),
            run,
            kind,
            init_ms: rep.marks.get(INIT_OK).copied(),
            elapsed_ms: rep.elapsed_ms,
            status: rep.status,
            signal: rep.signal,
            xsave_warning: rep.stdout.contains(XSAVE_WARNING),
            vmm_boot_ms: crate::guest_boot_time_ms(&rep.stderr)
                .or_else(|| crate::guest_boot_time_ms(&rep.stdout)),
            tail,
        }
    }
}

/// The prefix of a record line.
pub const RECORD_PREFIX: &str = "BOOT-RECORD ";

/// Every record line in `text` (a line that does not parse, e.g. cut by a dying machine, is
/// left out).
pub fn parse_records(text: &str) -> Vec<BootRecord> {
    text.lines()
        .filter_map(|l| {
            let at = l.find(RECORD_PREFIX)?;
            serde_json::from_str(l[at + RECORD_PREFIX.len()..].trim()).ok()
        })
        .collect()
}

/// The `p`-th percentile (0..=100) of `v` by the nearest-rank method.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// Counts and times of one VMM's boots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub boots: usize,
    /// Boots per kind, in [`BootKind::ALL`]'s order.
    pub kinds: [usize; 5],
    pub xsave_warnings: usize,
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
}

impl Summary {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a BootRecord>) -> Summary {
        let mut s = Summary::default();
        let mut times = Vec::new();
        for r in records {
            s.boots += 1;
            s.kinds[BootKind::ALL.iter().position(|k| *k == r.kind).unwrap_or(4)] += 1;
            s.xsave_warnings += usize::from(r.xsave_warning);
            if let Some(t) = r.init_ms {
                times.push(t);
            }
        }
        s.median_ms = percentile(&times, 50.0);
        s.p90_ms = percentile(&times, 90.0);
        s
    }

    pub fn count(&self, kind: BootKind) -> usize {
        self.kinds[BootKind::ALL.iter().position(|k| *k == kind).unwrap_or(4)]
    }

    /// Boots that did not reach init.
    pub fn failures(&self) -> usize {
        self.boots - self.count(BootKind::Init)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rep(stdout: &str, stderr: &str, status: Option<i32>, init: Option<f64>) -> ExecReport {
        let mut marks = BTreeMap::new();
        if let Some(t) = init {
            marks.insert(INIT_OK.to_string(), t);
        }
        ExecReport {
            stdout: stdout.into(),
            stderr: stderr.into(),
            status,
            signal: None,
            timed_out: false,
            elapsed_ms: 3000.0,
            marks,
            signalled_ms: None,
        }
    }

    /// The start of a real nested boot's console (microvm, 2 vCPUs, 2026-12-01) with the
    /// warning every nested guest printed on QEMU 7.2's EPYC model.
    const XSAVE_BOOT: &str = include_str!("bootstat/xsave-warning-boot.txt");

    #[test]
    fn a_boot_that_reached_init() {
        let r = BootRecord::new(
            "microvm",
            4,
            &rep(
                &format!("{XSAVE_BOOT}\r\nMICROVM-INIT-OK\r\n"),
                "[INFO microvm::legacy] Guest-boot-time = 2715000 us 2715 ms",
                Some(0),
                Some(2716.0),
            ),
        );
        assert_eq!(r.kind, BootKind::Init);
        assert!(r.xsave_warning);
        assert_eq!(r.init_ms, Some(2716.0));
        assert_eq!(r.vmm_boot_ms, Some(2715.0));
        assert_eq!(r.tail, "");
    }

    #[test]
    fn failure_kinds() {
        let early = "Linux version 6.1.192\r\nsmpboot: CPU0: AMD EPYC Processor\r\n";
        // microvm's triple-fault exit.
        let tf = rep(
            early,
            "[WARN microvm::vcpu] vCPU 1: guest triple fault (KVM_EXIT_SHUTDOWN): it crashed",
            Some(3),
            None,
        );
        assert_eq!(classify_boot("microvm", &tf), BootKind::TripleFault);
        let r = BootRecord::new("microvm", 0, &tf);
        assert!(r.tail.contains("smpboot: CPU0") && r.tail.contains("triple fault"));
        // QEMU with -no-reboot: the reset is an exit 0 without a word from the kernel...
        assert_eq!(
            classify_boot("qemu", &rep(early, "", Some(0), None)),
            BootKind::TripleFault
        );
        // ... unlike a reboot the kernel announced.
        assert_eq!(
            classify_boot(
                "qemu",
                &rep(
                    &format!("{early}reboot: Restarting system\r\n"),
                    "",
                    Some(0),
                    None
                )
            ),
            BootKind::Other
        );
        let panic = format!("{early}Kernel panic - not syncing: VFS: Unable to mount root fs\r\n");
        for vmm in ["microvm", "qemu"] {
            assert_eq!(
                classify_boot(vmm, &rep(&panic, "", Some(4), None)),
                BootKind::GuestPanic
            );
        }
        let mut t = rep(early, "", None, None);
        t.timed_out = true;
        assert_eq!(classify_boot("microvm", &t), BootKind::Timeout);
        assert_eq!(
            classify_boot(
                "microvm",
                &rep(early, "error: cannot open /dev/kvm", Some(1), None)
            ),
            BootKind::Other
        );
        assert_eq!(
            classify_boot("microvm", &rep(early, "", Some(0), None)),
            BootKind::Other
        );
    }

    #[test]
    fn records_round_trip_through_lines() {
        let a = BootRecord::new("qemu", 7, &rep("x", "", Some(0), Some(1500.0)));
        let b = BootRecord::new("microvm", 8, &rep("y", "", Some(3), None));
        let text = format!(
            "noise\n{RECORD_PREFIX}{}\r\n[ 3.2] kernel line\n{RECORD_PREFIX}{}\n{RECORD_PREFIX}{{\"vmm\":\"cut",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(parse_records(&text), vec![a, b]);
    }

    #[test]
    fn percentiles_and_summary() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let recs = [
            BootRecord::new("microvm", 0, &rep(XSAVE_BOOT, "", Some(0), Some(2000.0))),
            BootRecord::new("microvm", 1, &rep("", "", Some(3), None)),
            BootRecord::new("microvm", 2, &rep("", "", Some(0), Some(3000.0))),
        ];
        let s = Summary::of(&recs);
        assert_eq!(s.boots, 3);
        assert_eq!(s.count(BootKind::Init), 2);
        assert_eq!(s.count(BootKind::TripleFault), 1);
        assert_eq!(s.failures(), 1);
        assert_eq!(s.xsave_warnings, 1);
        assert_eq!(s.median_ms, Some(2000.0));
        assert_eq!(s.p90_ms, Some(3000.0));
    }
}
