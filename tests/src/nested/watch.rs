//! Watching an outer machine while it runs and saying how it failed when it gives no report.
//!
//! The outer init writes a heartbeat line ([`HEARTBEAT`]) to its second serial port (beside
//! harness-exec's report) every second; the outer kernel's console is the third one
//! (`console=ttyS2`) while user space writes to the first, so the kernel's file holds only
//! kernel text, never the program's output (a guest's panic echoed by the program is not
//! the outer kernel's). The harness kills the
//! machine when the heartbeat stops ([`Watch::check`]) and classifies the end
//! ([`classify`]): the outer kernel panicked, the machine froze, it never reached its init,
//! it overran the run's time limit, or QEMU exited on its own.

use std::fmt;
use std::time::Duration;

/// The heartbeat line's prefix (`@@MVH-HB <n> <uptime>@@`).
pub const HEARTBEAT: &str = "@@MVH-HB";
/// No heartbeat and no console output this long: the machine froze (the default of
/// `MICROVM_OUTER_FREEZE_AFTER`, [`super::config::OuterConfig::freeze_after`]).
pub const FREEZE_AFTER: Duration = Duration::from_secs(25);
/// No heartbeat this long: frozen even if the console still prints (a kernel printing stall
/// warnings while user space is stuck).
pub const STALL_AFTER: Duration = Duration::from_secs(90);
/// The first heartbeat (the outer init running) must come within this (~3 s normally).
pub const INIT_WITHIN: Duration = Duration::from_secs(120);
/// After a panic line QEMU gets this long to end on its own (`panic=1`, `-no-reboot`).
pub const PANIC_GRACE: Duration = Duration::from_secs(15);

/// Console text of the outer kernel failing, most telling first.
const FAILURE_SIGNS: &[&str] = &[
    "BUG:",
    "kernel BUG at",
    "Oops:",
    "general protection fault",
    "double fault",
    "Kernel panic - not syncing",
];
const PANIC: &str = "Kernel panic - not syncing";

/// A frozen machine: no heartbeat for `silent` (after `heartbeats` of them), its console
/// silent for `console_silent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freeze {
    pub heartbeats: u64,
    pub silent: Duration,
    pub console_silent: Duration,
}

/// Why the harness stopped an outer machine itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Its kernel panicked and QEMU did not end within [`PANIC_GRACE`].
    Panicked,
    Froze(Freeze),
    /// No heartbeat at all within [`INIT_WITHIN`].
    NoInit {
        after: Duration,
    },
    /// Alive (heartbeat going) at the run's time limit.
    Overran {
        limit: Duration,
    },
}

/// What the harness knows while an outer machine runs; times are from QEMU's start.
#[derive(Debug, Clone)]
pub struct Watch {
    freeze_after: Duration,
    heartbeats: u64,
    last_heartbeat: Option<Duration>,
    last_console: Duration,
    panic_at: Option<Duration>,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch::new(FREEZE_AFTER)
    }
}

impl Watch {
    /// A watch that declares the machine frozen after `freeze_after` of silence.
    pub fn new(freeze_after: Duration) -> Watch {
        Watch {
            freeze_after,
            heartbeats: 0,
            last_heartbeat: None,
            last_console: Duration::ZERO,
            panic_at: None,
        }
    }

    /// `count` heartbeats seen so far, at `now`.
    pub fn heartbeats(&mut self, count: u64, now: Duration) {
        if count > self.heartbeats {
            self.heartbeats = count;
            self.last_heartbeat = Some(now);
        }
    }

    pub fn heartbeat_count(&self) -> u64 {
        self.heartbeats
    }

    /// The console printed something at `at`.
    pub fn console(&mut self, at: Duration) {
        self.last_console = self.last_console.max(at);
    }

    /// The kernel's panic line appeared at `now`.
    pub fn panicked(&mut self, now: Duration) {
        self.panic_at.get_or_insert(now);
    }

    /// Whether to stop the machine now, and why.
    pub fn check(&self, now: Duration, limit: Duration) -> Option<Stop> {
        if let Some(p) = self.panic_at {
            if now.saturating_sub(p) >= PANIC_GRACE {
                return Some(Stop::Panicked);
            }
            return None; // give QEMU its grace time first
        }
        let console_silent = now.saturating_sub(self.last_console);
        match self.last_heartbeat {
            None if now >= INIT_WITHIN => return Some(Stop::NoInit { after: now }),
            None => {}
            Some(hb) => {
                let silent = now.saturating_sub(hb);
                if (silent >= self.freeze_after && console_silent >= self.freeze_after)
                    || silent >= STALL_AFTER.max(self.freeze_after)
                {
                    return Some(Stop::Froze(Freeze {
                        heartbeats: self.heartbeats,
                        silent,
                        console_silent,
                    }));
                }
            }
        }
        (now >= limit).then_some(Stop::Overran { limit })
    }
}

/// Count of heartbeat lines in `text`.
pub fn count_heartbeats(text: &str) -> u64 {
    text.matches(HEARTBEAT).count() as u64
}

/// `text` without its heartbeat lines (what the outer kernel printed).
pub fn kernel_text(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains(HEARTBEAT))
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A kernel line without its `[   12.345678] ` time stamp.
fn without_timestamp(line: &str) -> &str {
    let l = line.trim_end_matches('\r').trim_start();
    if l.starts_with('[') {
        if let Some(end) = l.find("] ") {
            if l[1..end]
                .trim()
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
            {
                return &l[end + 2..];
            }
        }
    }
    l
}

/// The outer kernel's first failure line (BUG, oops, fault, panic), time stamp removed;
/// with the panic line appended when that came later.
pub fn kernel_failure(kernel_log: &str) -> Option<String> {
    let mut first: Option<&str> = None;
    let mut panic: Option<&str> = None;
    for line in kernel_log.lines() {
        let l = without_timestamp(line);
        if l.starts_with("---[ end ") {
            continue;
        }
        if first.is_none() && FAILURE_SIGNS.iter().any(|s| l.contains(s)) {
            first = Some(l);
        }
        if panic.is_none() && l.contains(PANIC) {
            panic = Some(l);
        }
    }
    let first = first?;
    Some(match panic {
        Some(p) if p != first => format!("{first} (then: {p})"),
        _ => first.to_string(),
    })
}

/// Did the outer kernel panic (its log has the panic line)?
pub fn kernel_panicked(kernel_log: &str) -> bool {
    kernel_log.contains(PANIC)
}

/// How an outer machine run failed (it gave no report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OuterFailure {
    /// The outer kernel panicked: its first failure line.
    KernelPanic { line: String },
    /// Neither heartbeat nor console output: killed.
    Froze(Freeze),
    /// Its init never ran (no heartbeat): killed.
    NoInit { after: Duration },
    /// Still alive at the run's time limit: killed.
    Overran { limit: Duration },
    /// QEMU ended on its own (status 0) but the outer kernel never powered off: the machine
    /// reset, which `-no-reboot` turns into QEMU's exit; `triple_fault` if QEMU logged one
    /// (`-d cpu_reset`), with each CPU's state just before ([`reset_cpu_states`]).
    Reset {
        triple_fault: bool,
        cpus: Vec<String>,
    },
    /// QEMU ended on its own, without a panic on the console.
    Exited { status: String },
}

impl OuterFailure {
    /// A short name for counts and tables.
    pub fn kind(&self) -> &'static str {
        match self {
            OuterFailure::KernelPanic { .. } => "outer-panic",
            OuterFailure::Froze(_) => "outer-freeze",
            OuterFailure::NoInit { .. } => "outer-no-init",
            OuterFailure::Overran { .. } => "outer-overrun",
            OuterFailure::Reset { .. } => "outer-reset",
            OuterFailure::Exited { .. } => "qemu-exit",
        }
    }
}

impl fmt::Display for OuterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OuterFailure::KernelPanic { line } => write!(f, "outer kernel panicked: {line}"),
            OuterFailure::Froze(Freeze {
                heartbeats,
                silent,
                console_silent,
            }) => write!(
                f,
                "outer machine froze: no heartbeat for {:.0} s (after {heartbeats}) and no console \
                 output for {:.0} s",
                silent.as_secs_f64(),
                console_silent.as_secs_f64()
            ),
            OuterFailure::NoInit { after } => write!(
                f,
                "outer machine did not reach its init (no heartbeat) within {:.0} s",
                after.as_secs_f64()
            ),
            OuterFailure::Overran { limit } => write!(
                f,
                "outer machine still running at the run's time limit ({:.0} s, the program's \
                 timeout plus the outer machine's slack)",
                limit.as_secs_f64()
            ),
            OuterFailure::Reset { triple_fault, cpus } => write!(
                f,
                "outer machine reset itself without its kernel powering off or panicking ({}){}",
                if *triple_fault {
                    "QEMU logged a triple fault"
                } else {
                    "no triple fault logged"
                },
                if cpus.is_empty() {
                    String::new()
                } else {
                    format!("; before the reset: {}", cpus.join("; "))
                }
            ),
            OuterFailure::Exited { status } => write!(
                f,
                "QEMU exited ({status}) with no report from harness-exec and no panic on the \
                 outer console"
            ),
        }
    }
}

/// QEMU's `-d cpu_reset` log line for a triple fault.
const TRIPLE_FAULT: &str = "Triple fault";

/// Each CPU's state (`CPU n: RIP=... CPL=n CR3=...`) in the `-d cpu_reset` dumps that follow
/// the first triple fault in QEMU's log (or the last dumps, when it logged none): QEMU dumps a
/// CPU's registers as it resets it, so these are where the CPUs were. `symbol` names a RIP.
pub fn reset_cpu_states(qemu_log: &str, symbol: &dyn Fn(u64) -> Option<String>) -> Vec<String> {
    let after = match qemu_log.find(TRIPLE_FAULT) {
        Some(i) => &qemu_log[i..],
        None => {
            // The last round of resets: from the last "CPU Reset (CPU 0)".
            let i = qemu_log.rfind("CPU Reset (CPU 0)").unwrap_or(0);
            &qemu_log[i..]
        }
    };
    let mut out = Vec::new();
    for block in after.split("CPU Reset (CPU ").skip(1) {
        let cpu = block.split(')').next().unwrap_or("?");
        let field = |name: &str| -> Option<&str> {
            let at = block.find(name)? + name.len();
            block[at..].split_whitespace().next()
        };
        let Some(rip) = field("RIP=") else { continue };
        let sym = u64::from_str_radix(rip, 16)
            .ok()
            .and_then(symbol)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        out.push(format!(
            "CPU {cpu}: RIP={rip}{sym} CPL={} CR0={} CR3={} CR4={}",
            field("CPL=").unwrap_or("?"),
            field("CR0=").unwrap_or("?"),
            field("CR3=").unwrap_or("?"),
            field("CR4=").unwrap_or("?")
        ));
    }
    out
}

/// The function around `addr` in a System.map (`ADDRESS TYPE NAME` lines), as `name+0xoff`.
pub fn symbolize(system_map: &str, addr: u64) -> Option<String> {
    let mut best: Option<(u64, &str)> = None;
    for line in system_map.lines() {
        let mut w = line.split_whitespace();
        let (Some(a), Some(t), Some(name)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if !matches!(t, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if a <= addr && best.is_none_or(|(b, _)| a > b) {
            best = Some((a, name));
        }
    }
    let (a, name) = best?;
    // Beyond 1 MiB past the nearest symbol it is not in the kernel's text.
    (addr - a < 1 << 20).then(|| format!("{name}+{:#x}", addr - a))
}

/// How a run that gave no report failed: a panic on the kernel log wins over how the harness
/// stopped it (a panicked machine also stops beating); `status` is QEMU's exit status, and
/// `reset` the CPU states of [`reset_cpu_states`] when QEMU logged a reset.
pub fn classify(
    stop: Option<&Stop>,
    kernel_log: &str,
    status: &str,
    qemu_log: &str,
    symbol: &dyn Fn(u64) -> Option<String>,
) -> OuterFailure {
    if kernel_panicked(kernel_log) || stop == Some(&Stop::Panicked) {
        return OuterFailure::KernelPanic {
            line: kernel_failure(kernel_log).unwrap_or_else(|| PANIC.to_string()),
        };
    }
    match stop {
        Some(Stop::Froze(freeze)) => OuterFailure::Froze(*freeze),
        Some(Stop::NoInit { after }) => OuterFailure::NoInit { after: *after },
        Some(Stop::Overran { limit }) => OuterFailure::Overran { limit: *limit },
        Some(Stop::Panicked) => OuterFailure::Exited {
            status: status.to_string(),
        },
        None => {
            let powered_off = kernel_log.contains("reboot: Power down")
                || kernel_log.contains("reboot: Restarting");
            if status == "exit status: 0" && !powered_off {
                OuterFailure::Reset {
                    triple_fault: qemu_log.contains(TRIPLE_FAULT),
                    cpus: reset_cpu_states(qemu_log, symbol),
                }
            } else {
                OuterFailure::Exited {
                    status: status.to_string(),
                }
            }
        }
    }
}

/// The error a nested run returns when the outer machine failed; callers can downcast an
/// `anyhow::Error` to it (boot-compare does, to count the failure and keep the boots the
/// machine finished before).
#[derive(Debug)]
pub struct OuterError {
    pub failure: OuterFailure,
    /// How long the outer machine ran (not counting the wait for a nested machine slot).
    pub ran: Duration,
    /// A kernel failure line (BUG, oops) when the failure is not a panic.
    pub kernel_said: Option<String>,
    /// What the outer machine's user space wrote on its console (ttyS0).
    pub console: String,
    /// What the outer kernel wrote (ttyS2).
    pub kernel_log: String,
    /// The whole message: what ran, the failure, the console's last lines, QEMU's stderr.
    pub detail: String,
}

impl fmt::Display for OuterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for OuterError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    const LIMIT: Duration = Duration::from_secs(600);

    #[test]
    fn beating_machine_runs_until_the_limit() {
        let mut w = Watch::default();
        for t in 3..600 {
            w.heartbeats(t - 2, s(t));
            assert_eq!(w.check(s(t), LIMIT), None, "at {t} s");
        }
        w.heartbeats(599, s(600));
        assert_eq!(w.check(s(600), LIMIT), Some(Stop::Overran { limit: LIMIT }));
    }

    #[test]
    fn silent_heartbeat_and_console_is_a_freeze() {
        let mut w = Watch::default();
        w.heartbeats(1, s(3));
        w.heartbeats(10, s(12));
        w.console(s(15));
        // The same count again is no new heartbeat.
        w.heartbeats(10, s(30));
        assert_eq!(w.check(s(36), LIMIT), None, "heartbeat silent 24 s");
        assert_eq!(w.check(s(39), LIMIT), None, "console silent 24 s");
        assert_eq!(
            w.check(s(40), LIMIT),
            Some(Stop::Froze(Freeze {
                heartbeats: 10,
                silent: s(28),
                console_silent: s(25)
            }))
        );
    }

    #[test]
    fn a_printing_console_delays_a_freeze_to_the_stall_bound() {
        let mut w = Watch::default();
        w.heartbeats(5, s(8));
        for t in 9..98 {
            w.console(s(t));
            assert_eq!(w.check(s(t), LIMIT), None, "at {t} s");
        }
        w.console(s(98));
        assert!(matches!(
            w.check(s(98), LIMIT),
            Some(Stop::Froze(Freeze { silent, .. })) if silent == s(90)
        ));
    }

    #[test]
    fn no_first_heartbeat_is_no_init() {
        let mut w = Watch::default();
        w.console(s(1));
        assert_eq!(w.check(s(119), LIMIT), None);
        assert_eq!(w.check(s(120), LIMIT), Some(Stop::NoInit { after: s(120) }));
    }

    #[test]
    fn a_panic_gets_its_grace_then_is_stopped() {
        let mut w = Watch::default();
        w.heartbeats(60, s(62));
        w.panicked(s(66));
        w.panicked(s(70)); // the first one counts
        assert_eq!(w.check(s(80), LIMIT), None, "within the grace");
        assert_eq!(w.check(s(81), LIMIT), Some(Stop::Panicked));
    }

    #[test]
    fn counts_heartbeats_and_strips_them() {
        let t = "@@MVH-HB 1 2.51@@\n[    3.1] kvm: x\r\n@@MVH-HB 2 3.52@@\n@@MVH-HB 3 4";
        assert_eq!(count_heartbeats(t), 3);
        assert_eq!(kernel_text(t), "[    3.1] kvm: x");
    }

    #[test]
    fn failure_lines() {
        assert_eq!(kernel_failure("[ 1.0] all fine\n"), None);
        assert_eq!(
            kernel_failure(
                "[   66.101] BUG: TASK stack guard page was hit at 0000 (stack is 0..1)\r\n\
                 [   66.102] Kernel panic - not syncing: Fatal exception\n\
                 [   66.103] ---[ end Kernel panic - not syncing: Fatal exception ]---\n"
            )
            .as_deref(),
            Some(
                "BUG: TASK stack guard page was hit at 0000 (stack is 0..1) \
                 (then: Kernel panic - not syncing: Fatal exception)"
            )
        );
        assert_eq!(
            kernel_failure("[ 5.5] Kernel panic - not syncing: sysrq triggered crash\n").as_deref(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
    }

    fn none(_: u64) -> Option<String> {
        None
    }

    #[test]
    fn classification() {
        let panic_log = "[ 9.0] Kernel panic - not syncing: sysrq triggered crash\n";
        // A panic wins whoever stopped the machine.
        for stop in [
            None,
            Some(Stop::Panicked),
            Some(Stop::NoInit { after: s(1) }),
        ] {
            assert_eq!(
                classify(stop.as_ref(), panic_log, "exit status: 0", "", &none).kind(),
                "outer-panic"
            );
        }
        let froze = Stop::Froze(Freeze {
            heartbeats: 3,
            silent: s(25),
            console_silent: s(26),
        });
        let f = classify(
            Some(&froze),
            "[ 1.0] watchdog: BUG: soft lockup",
            "signal: 9",
            "",
            &none,
        );
        assert_eq!(f.kind(), "outer-freeze");
        assert_eq!(
            f.to_string(),
            "outer machine froze: no heartbeat for 25 s (after 3) and no console output for 26 s"
        );
        assert_eq!(
            classify(
                Some(&Stop::Overran { limit: s(300) }),
                "",
                "signal: 9",
                "",
                &none
            )
            .kind(),
            "outer-overrun"
        );
        let e = classify(None, "", "exit status: 1", "", &none);
        assert_eq!(e.kind(), "qemu-exit");
        assert!(e.to_string().contains("exit status: 1"), "{e}");
        // Status 0 after the kernel powered off: QEMU ended normally, the report is missing.
        let e = classify(
            None,
            "[ 5.1] reboot: Power down\n",
            "exit status: 0",
            "",
            &none,
        );
        assert_eq!(e.kind(), "qemu-exit");
        // Status 0 without: the machine reset.
        let e = classify(None, "", "exit status: 0", RESET_LOG, &none);
        assert_eq!(e.kind(), "outer-reset");
        assert!(e.to_string().contains("QEMU logged a triple fault"), "{e}");
    }

    /// The shape of QEMU's `-d cpu_reset` log: a dump per CPU at start-up, then a triple
    /// fault and the dumps of the reset it causes (registers trimmed).
    const RESET_LOG: &str = "CPU Reset (CPU 0)\n\
        RAX=0000000000000000 RBX=0000000000000000\n\
        RIP=000000000000fff0 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
        CR0=60000010 CR2=0000000000000000 CR3=0000000000000000 CR4=00000000\n\
        Triple fault\n\
        CPU Reset (CPU 0)\n\
        RAX=0000000000000001 RBX=ffff888003c1a000\n\
        RIP=ffffffff81c0124a RFL=00010046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
        CR0=80050033 CR2=fffffe0000001ff8 CR3=0000000102a0e000 CR4=00350ef0\n\
        CPU Reset (CPU 1)\n\
        RIP=ffffffff81b3f5e0 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
        CR0=80050033 CR2=00007f0000000000 CR3=0000000004c10000 CR4=00350ef0\n";

    #[test]
    fn cpu_states_at_a_triple_fault() {
        let map = "ffffffff81000000 T _stext\nffffffff81b3f5c0 T default_idle\n\
                   ffffffff81c01200 T asm_exc_page_fault\nffffffff81c01300 d some_data\n";
        let sym = |a| symbolize(map, a);
        assert_eq!(
            reset_cpu_states(RESET_LOG, &sym),
            [
                "CPU 0: RIP=ffffffff81c0124a (asm_exc_page_fault+0x4a) CPL=0 CR0=80050033 \
                 CR3=0000000102a0e000 CR4=00350ef0",
                "CPU 1: RIP=ffffffff81b3f5e0 (default_idle+0x20) CPL=0 CR0=80050033 \
                 CR3=0000000004c10000 CR4=00350ef0"
            ]
        );
        // Far from any text symbol: no name.
        assert_eq!(symbolize(map, 0xffffffff90000000), None);
        assert_eq!(symbolize(map, 0x1000), None);
    }
}
