//! How the outer machine is started, chosen by environment variables (defaults below), and
//! what it is (QEMU version, kernel, CPU model) for every report.
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `MICROVM_OUTER_QEMU` | `qemu-system-x86_64` | the QEMU binary (a name in `PATH` or a path) |
//! | `MICROVM_OUTER_CPU` | [`DEFAULT_CPU`] | QEMU's `-cpu` model and flags |
//! | `MICROVM_OUTER_TCG_THREAD` | `multi` | `-accel tcg,thread=multi` or `single` |
//! | `MICROVM_OUTER_SMP` | [`DEFAULT_SMP`] | the outer machine's vCPUs |
//! | `MICROVM_OUTER_MEMORY` | [`DEFAULT_MEMORY_MIB`] | the outer machine's RAM, MiB |
//! | `MICROVM_OUTER_APPEND` | (none) | extra outer kernel command-line options |
//! | `MICROVM_OUTER_KERNEL` | newest `/boot/vmlinuz-*-cloud-amd64` | the outer kernel ([`super::find_outer_kernel`]) |
//! | `MICROVM_OUTER_ATTEMPTS` | [`DEFAULT_ATTEMPTS`] | boots of the outer machine a run may take when the machine itself fails (see `nested::run`) |
//! | `MICROVM_OUTER_FREEZE_AFTER` | [`super::watch::FREEZE_AFTER`] | seconds without heartbeat and console output after which the machine counts as frozen |
//! | `MICROVM_NESTED_SLOTS` | host cores / outer vCPUs | outer machines at once, machine-wide ([`super::lock`]) |

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The `-cpu` the outer machine gets unless `MICROVM_OUTER_CPU` says otherwise: an EPYC
/// with emulated SVM and nested paging (so its kernel's `kvm-amd` works).
pub const DEFAULT_CPU: &str = "EPYC,+svm,+npt";
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// One vCPU: with two, about one nested guest boot in 100 triple-faulted at a random point
/// (QEMU's guests as microvm's); with one, none in 300 (tests/README.md). A single TCG vCPU
/// also leaves the host's other core to QEMU's I/O thread.
pub const DEFAULT_SMP: u32 = 1;
/// 5 GiB: microvm refuses a `--memory` beyond its host's RAM and swap, and a test boots a
/// 4 GiB guest (RAM above the 32-bit MMIO gap). QEMU backs the outer RAM lazily, so only what
/// the outer machine touches costs host memory.
pub const DEFAULT_MEMORY_MIB: u32 = 5120;

pub const ENV_QEMU: &str = "MICROVM_OUTER_QEMU";
pub const ENV_CPU: &str = "MICROVM_OUTER_CPU";
pub const ENV_TCG_THREAD: &str = "MICROVM_OUTER_TCG_THREAD";
pub const ENV_SMP: &str = "MICROVM_OUTER_SMP";
pub const ENV_MEMORY: &str = "MICROVM_OUTER_MEMORY";
pub const ENV_APPEND: &str = "MICROVM_OUTER_APPEND";
pub const ENV_ATTEMPTS: &str = "MICROVM_OUTER_ATTEMPTS";
pub const ENV_FREEZE_AFTER: &str = "MICROVM_OUTER_FREEZE_AFTER";

/// Boots a run may take when the outer machine itself fails (frozen, panicked, no report):
/// the residual failures of TCG's emulated SVM, recognised by their signature.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// The outer kernel's command line before [`OuterConfig::append`]. `oops=panic`: an oops in
/// the outer kernel ends the machine at once (reported as an outer kernel panic) instead of
/// leaving it half alive; `panic=1` with QEMU's `-no-reboot` makes a panic end QEMU.
/// The kernel's console is ttyS2, a file of kernel messages alone (user space writes to
/// ttyS0; see the outer init). `nokaslr`: the CPU states QEMU logs at a reset name their
/// functions from `/boot/System.map-<version>`.
pub const BASE_CMDLINE: &str =
    "console=ttyS2 quiet loglevel=3 panic=1 oops=panic nokaslr mitigations=off";

/// TCG's translation threads: one per vCPU (`multi`) or one for all (`single`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcgThread {
    Multi,
    Single,
}

impl TcgThread {
    pub fn name(self) -> &'static str {
        match self {
            TcgThread::Multi => "multi",
            TcgThread::Single => "single",
        }
    }
}

/// How the outer machine is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OuterConfig {
    pub qemu: PathBuf,
    pub cpu: String,
    pub tcg_thread: TcgThread,
    pub smp: u32,
    pub memory_mib: u32,
    /// Extra kernel command-line options (after [`BASE_CMDLINE`], so they win).
    pub append: String,
    /// Boots of the outer machine a run may take when the machine itself fails.
    pub attempts: u32,
    /// No heartbeat and no console output this long: the machine froze.
    pub freeze_after: Duration,
}

impl OuterConfig {
    /// From the process environment.
    pub fn from_env() -> Result<OuterConfig> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From `get` (a variable's value, if set); empty values mean the default.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<OuterConfig> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let cpu = get(ENV_CPU).unwrap_or_else(|| DEFAULT_CPU.to_string());
        if cpu.contains(char::is_whitespace) {
            bail!("{ENV_CPU}={cpu:?}: a -cpu value has no spaces (e.g. EPYC,+svm,+npt,-xsave)");
        }
        let tcg_thread = match get(ENV_TCG_THREAD).as_deref() {
            None | Some("multi") => TcgThread::Multi,
            Some("single") => TcgThread::Single,
            Some(other) => bail!("{ENV_TCG_THREAD}={other}: expected multi or single"),
        };
        let smp = match get(ENV_SMP) {
            None => DEFAULT_SMP,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => bail!("{ENV_SMP}={v}: expected a number of vCPUs from 1 to 64"),
            },
        };
        let memory_mib = match get(ENV_MEMORY) {
            None => DEFAULT_MEMORY_MIB,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 512 => n,
                _ => bail!("{ENV_MEMORY}={v}: expected MiB, at least 512"),
            },
        };
        let attempts = match get(ENV_ATTEMPTS) {
            None => DEFAULT_ATTEMPTS,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=10).contains(&n) => n,
                _ => bail!("{ENV_ATTEMPTS}={v}: expected a number of boots from 1 to 10"),
            },
        };
        let freeze_after = match get(ENV_FREEZE_AFTER) {
            None => super::watch::FREEZE_AFTER,
            Some(v) => match v.parse::<u64>() {
                // Below a few seconds a loaded host's scheduling gaps would read as freezes.
                Ok(n) if (5..=600).contains(&n) => Duration::from_secs(n),
                _ => bail!("{ENV_FREEZE_AFTER}={v}: expected seconds from 5 to 600"),
            },
        };
        Ok(OuterConfig {
            attempts,
            freeze_after,
            memory_mib,
            qemu: PathBuf::from(get(ENV_QEMU).unwrap_or_else(|| DEFAULT_QEMU.to_string())),
            cpu,
            tcg_thread,
            smp,
            append: get(ENV_APPEND).unwrap_or_default(),
        })
    }

    /// `-accel`, `-cpu`, `-smp` and `-m` arguments.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-accel".into(),
            format!("tcg,thread={}", self.tcg_thread.name()),
            "-cpu".into(),
            self.cpu.clone(),
            "-smp".into(),
            self.smp.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
        ]
    }

    /// The outer kernel's whole command line.
    pub fn kernel_cmdline(&self) -> String {
        if self.append.is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {}", self.append)
        }
    }

    /// One line for reports: QEMU (version), accelerator, CPU, vCPUs, kernel, extra options.
    pub fn describe(&self, qemu_version: &str, kernel_version: &str) -> String {
        format!(
            "QEMU {qemu_version} ({}), -accel tcg,thread={} -cpu {} -smp {} -m {}, outer kernel {kernel_version}{}",
            self.qemu.display(),
            self.tcg_thread.name(),
            self.cpu,
            self.smp,
            self.memory_mib,
            if self.append.is_empty() {
                String::new()
            } else {
                format!(" with {:?}", self.append)
            }
        )
    }
}

/// `QEMU --version`'s version (e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`).
pub fn qemu_version(qemu: &Path) -> Result<String> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run {} --version: apt-get install qemu-system-x86 (or set {ENV_QEMU})",
                qemu.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version failed ({})", qemu.display(), out.status);
    }
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{} --version printed no version", qemu.display()))
}

/// A warning for an outer QEMU known to be unstable here: below 10, as measured with
/// bookworm's 7.2 (tests/README.md, "The outer machine's QEMU"). The harness prints it.
pub fn qemu_warning(version: &str) -> Option<String> {
    let major: u32 = version.split('.').next()?.trim().parse().ok()?;
    (major < 10).then(|| {
        format!(
            "the outer machine's QEMU is {version}: with bookworm's 7.2 the outer machine \
             froze within a few dozen 2-vCPU guest boots (and every nested guest warns \
             \"XSAVE consistency problem\": its SVM lets XSETBV through); \
             resources/install-deps.sh installs 10.0 from bookworm-backports \
             (tests/README.md, \"The outer machine's QEMU\")"
        )
    })
}

fn parse_qemu_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(" version "))?;
    let v = line[line.find(" version ")? + " version ".len()..].trim();
    (!v.is_empty()).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<OuterConfig> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OuterConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_without_variables() -> Result<()> {
        let c = cfg(&[])?;
        assert_eq!(c.qemu, PathBuf::from("qemu-system-x86_64"));
        assert_eq!(c.cpu, DEFAULT_CPU);
        assert_eq!(c.tcg_thread, TcgThread::Multi);
        assert_eq!(c.smp, 1);
        assert_eq!(
            c.qemu_args(),
            [
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                DEFAULT_CPU,
                "-smp",
                "1",
                "-m",
                "5120"
            ]
        );
        assert_eq!(c.kernel_cmdline(), BASE_CMDLINE);
        assert_eq!(c.attempts, DEFAULT_ATTEMPTS);
        assert_eq!(c.freeze_after, super::super::watch::FREEZE_AFTER);
        // Empty means default too.
        assert_eq!(cfg(&[(ENV_CPU, " "), (ENV_SMP, "")])?, c);
        Ok(())
    }

    #[test]
    fn variables_choose_everything() -> Result<()> {
        let c = cfg(&[
            (ENV_QEMU, "/opt/qemu10/bin/qemu-system-x86_64"),
            (ENV_CPU, "EPYC,+svm,+npt,-xsave"),
            (ENV_TCG_THREAD, "single"),
            (ENV_SMP, "1"),
            (ENV_MEMORY, "3072"),
            (ENV_APPEND, "loglevel=7 nokaslr"),
            (ENV_ATTEMPTS, "1"),
            (ENV_FREEZE_AFTER, "8"),
        ])?;
        assert_eq!(c.attempts, 1);
        assert_eq!(c.freeze_after, Duration::from_secs(8));
        assert_eq!(
            c.qemu_args(),
            [
                "-accel",
                "tcg,thread=single",
                "-cpu",
                "EPYC,+svm,+npt,-xsave",
                "-smp",
                "1",
                "-m",
                "3072"
            ]
        );
        assert_eq!(
            c.kernel_cmdline(),
            format!("{BASE_CMDLINE} loglevel=7 nokaslr")
        );
        let d = c.describe("10.0.2", "6.12.0-0-cloud-amd64");
        assert!(
            d.contains("QEMU 10.0.2 (/opt/qemu10/bin/qemu-system-x86_64)"),
            "{d}"
        );
        assert!(
            d.contains("-cpu EPYC,+svm,+npt,-xsave -smp 1 -m 3072"),
            "{d}"
        );
        assert!(d.contains("\"loglevel=7 nokaslr\""), "{d}");
        Ok(())
    }

    #[test]
    fn rejects_bad_values() {
        for (k, v) in [
            (ENV_TCG_THREAD, "many"),
            (ENV_SMP, "0"),
            (ENV_SMP, "two"),
            (ENV_MEMORY, "256"),
            (ENV_CPU, "EPYC, +svm"),
            (ENV_ATTEMPTS, "0"),
            (ENV_FREEZE_AFTER, "1"),
            (ENV_FREEZE_AFTER, "soon"),
        ] {
            let e = cfg(&[(k, v)]).expect_err("must be rejected");
            assert!(format!("{e:#}").contains(k), "{e:#}");
        }
    }

    #[test]
    fn parses_qemu_version_lines() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n"
            )
            .as_deref(),
            Some("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")
        );
        assert_eq!(parse_qemu_version("nothing useful"), None);
    }

    #[test]
    fn warns_about_old_qemu_only() {
        let w = qemu_warning("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)").expect("7.2 warns");
        assert!(w.contains("install-deps.sh"), "{w}");
        assert_eq!(
            qemu_warning("10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            None
        );
        assert_eq!(qemu_warning("11.1.0"), None);
        assert_eq!(qemu_warning("unknown"), None);
    }
}
