//! Guest boot harness for microvm.
//!
//! Boots real guests on real KVM on two kinds of host, chosen by a probe
//! ([`probe::probe`]) and never silently skipped:
//! - **Direct**: `/dev/kvm` runs guest kernel code at hardware speed; the program runs
//!   on the host.
//! - **Nested**: `/dev/kvm` is missing or emulates (as on the project's development and
//!   CI machines); the program runs inside a QEMU TCG machine with emulated AMD SVM, whose
//!   Debian kernel provides a real KVM ([`nested`]).
//!
//! `MICROVM_TEST_PATH=direct|nested` forces a path.

pub mod artifacts;
pub mod bootstat;
pub mod cpio;
pub mod exec;
pub mod fio;
pub mod guestprog;
pub mod nested;
pub mod probe;
pub mod setup;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use artifacts::{
    debian_cloud_kernel, guest_initramfs, init32_initramfs, kernel_artifacts,
    kernel_variant_artifacts, microvm_binary, KernelArtifacts,
};
pub use exec::StdioMode;

/// Marker the guest init prints once user space runs.
pub const INIT_OK: &str = "MICROVM-INIT-OK";
/// Prefix of the guest test result line.
pub const TEST_RESULT: &str = "MICROVM-TEST-RESULT=";

/// Which way guests are booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Nested,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Nested => "nested",
        })
    }
}

/// The program to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// The `microvm` binary ([`microvm_binary`]).
    Microvm,
    /// Any host program (carried into the outer machine with its shared libraries).
    Host(PathBuf),
}

/// One argument of the program.
#[derive(Debug, Clone)]
pub enum Arg {
    /// Passed as is.
    Str(String),
    /// A host file: carried into the outer machine (same absolute path there).
    File(PathBuf),
    /// Disk `index` of [`Run::disks`] followed by `suffix` (e.g. `",readonly"`): the host
    /// image path on the direct path, `/dev/vdX` inside the outer machine.
    Disk { index: usize, suffix: String },
    /// Disk `index` of [`Run::disks`] as a regular file, followed by `suffix`: the host image
    /// on the direct path; on the nested path a copy of it in the outer machine's tmpfs
    /// (`/tmp/harness-disk<index>.img`), copied back into the host image after the program
    /// exits (so the program sees a regular file on both paths, as a real host passes it).
    DiskFile { index: usize, suffix: String },
}

impl Arg {
    pub fn s(s: impl Into<String>) -> Arg {
        Arg::Str(s.into())
    }
    pub fn file(p: impl Into<PathBuf>) -> Arg {
        Arg::File(p.into())
    }
    pub fn disk(index: usize) -> Arg {
        Arg::Disk {
            index,
            suffix: String::new(),
        }
    }
    pub fn disk_file(index: usize) -> Arg {
        Arg::DiskFile {
            index,
            suffix: String::new(),
        }
    }
}

/// One run of a program under the harness.
#[derive(Debug, Clone)]
pub struct Run {
    pub program: Program,
    pub args: Vec<Arg>,
    /// Extra host files the program needs (besides [`Arg::File`] arguments).
    pub files_to_carry: Vec<PathBuf>,
    /// Host disk images (raw): guest writes land in these files.
    pub disks: Vec<PathBuf>,
    /// Limit for the program itself (the outer machine's boot is extra).
    pub timeout: Duration,
    /// Strings whose first appearance on stdout is timed (see [`Outcome::marks`]).
    pub marks: Vec<String>,
    /// Stream the program's stdout to ours while it runs.
    pub echo: bool,
    /// The program's stdin, stdout and stderr: set up by the same code (`exec.rs`) where
    /// the program runs, on the host or inside the outer machine.
    pub stdio: StdioMode,
    /// Send this signal when this string first appears on stdout (timed where the program
    /// runs, as the marks are; see [`Outcome::signalled`]).
    pub signal_at_mark: Option<(String, i32)>,
}

impl Run {
    /// `/bin/sh -c SCRIPT sh ARGS...` (the script sees `args` as `$1`, `$2`, ...), 60 s timeout,
    /// nothing carried or attached: set those with struct update syntax.
    pub fn shell(script: impl Into<String>, args: Vec<Arg>) -> Run {
        let mut all = vec![Arg::s("-c"), Arg::s(script.into()), Arg::s("sh")];
        all.extend(args);
        Run {
            program: Program::Host("/bin/sh".into()),
            args: all,
            files_to_carry: Vec::new(),
            disks: Vec::new(),
            timeout: Duration::from_secs(60),
            marks: Vec::new(),
            echo: false,
            stdio: StdioMode::Null,
            signal_at_mark: None,
        }
    }

    /// `microvm` with these arguments, 120 s timeout, timing [`INIT_OK`].
    pub fn microvm(args: Vec<Arg>) -> Run {
        Run {
            program: Program::Microvm,
            args,
            files_to_carry: Vec::new(),
            disks: Vec::new(),
            timeout: Duration::from_secs(120),
            marks: vec![INIT_OK.to_string()],
            echo: false,
            stdio: StdioMode::Null,
            signal_at_mark: None,
        }
    }
}

/// What happened to a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// Exit code (None if killed by a signal or the timeout).
    pub status: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Program wall time (measured where it ran: inside the outer machine if nested).
    pub elapsed: Duration,
    /// Time from program start to each mark's first appearance on stdout.
    pub marks: BTreeMap<String, Duration>,
    /// When the signal of [`Run::signal_at_mark`] was sent (from program start), if it was.
    pub signalled: Option<Duration>,
    pub path: PathKind,
    /// Nested path only: outer machine boot time (host clock) and its console.
    pub outer: Option<nested::OuterInfo>,
    /// What the setup lines ([`Harness::run_with_setup`]) printed, including their
    /// background jobs until the program exited; empty without setup.
    pub setup_output: String,
}

impl Outcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// A description for assertion messages: status and the tails of stdout/stderr.
    pub fn describe(&self) -> String {
        let tail = |s: &str| {
            let l: Vec<&str> = s.lines().collect();
            l[l.len().saturating_sub(25)..].join("\n")
        };
        format!(
            "path={} status={:?} signal={:?} timed_out={} elapsed={:?}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.path,
            self.status,
            self.signal,
            self.timed_out,
            self.elapsed,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Panics (naming `what`) if microvm panicked or a seccomp filter stopped it: Rust's panic
    /// message or microvm's SIGSYS report in stdout or stderr (on a terminal, microvm's stderr
    /// arrives in stdout). microvm's own "guest panicked" log line is neither.
    pub fn assert_microvm_not_stopped(&self, what: &str) {
        for text in [&self.stdout, &self.stderr] {
            assert!(
                !text.contains("panicked at"),
                "{what}: microvm panicked\n{}",
                self.describe()
            );
            assert!(
                !text.contains("microvm: seccomp:"),
                "{what}: a seccomp filter stopped microvm\n{}",
                self.describe()
            );
        }
    }

    /// Value of the first stdout line `KEY=VALUE` (as printed by the guest test scripts).
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.stdout.lines().find_map(|l| {
            let l = l.trim_end_matches('\r');
            l.find(&prefix)
                .filter(|&i| i == 0 || !l.as_bytes()[i - 1].is_ascii_alphanumeric())
                .map(|i| l[i + prefix.len()..].to_string())
        })
    }
}

/// `s` as one single-quoted shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Chosen path plus why.
#[derive(Debug, Clone)]
pub struct Harness {
    path: PathKind,
    reason: String,
    /// Nested path: the outer machine ([`nested::OuterConfig::describe`]).
    outer: Option<String>,
}

static DETECTED: OnceLock<std::result::Result<Harness, String>> = OnceLock::new();

impl Harness {
    /// Choose the path (once per process): `MICROVM_TEST_PATH`, else the KVM probe.
    /// Fails, with the reason, if the chosen path cannot work here.
    pub fn detect() -> Result<Harness> {
        let r = DETECTED.get_or_init(|| Self::detect_uncached().map_err(|e| format!("{e:#}")));
        match r {
            Ok(h) => Ok(h.clone()),
            Err(e) => bail!("{e}"),
        }
    }

    fn detect_uncached() -> Result<Harness> {
        let forced = std::env::var("MICROVM_TEST_PATH").ok();
        let (path, reason) = match forced.as_deref() {
            Some("direct") => (PathKind::Direct, "forced by MICROVM_TEST_PATH".to_string()),
            Some("nested") => (PathKind::Nested, "forced by MICROVM_TEST_PATH".to_string()),
            Some(other) => bail!("MICROVM_TEST_PATH={other}: expected 'direct' or 'nested'"),
            None => {
                let p = probe::probe();
                let path = if p.is_hardware_speed() {
                    PathKind::Direct
                } else {
                    PathKind::Nested
                };
                (path, format!("probe: {p}"))
            }
        };
        let outer = match path {
            PathKind::Direct => {
                if !std::path::Path::new("/dev/kvm").exists() {
                    bail!("direct path chosen ({reason}) but /dev/kvm does not exist");
                }
                None
            }
            PathKind::Nested => Some(nested::check_prerequisites().with_context(|| {
                format!("nested path chosen ({reason}) but it cannot work on this machine")
            })?),
        };
        let h = Harness {
            path,
            reason,
            outer,
        };
        eprintln!("harness: path={} ({})", h.path, h.reason);
        log::info!("harness: path={} ({})", h.path, h.reason);
        if let Some(m) = &h.outer {
            eprintln!("harness: outer machine: {m}");
            log::info!("harness: outer machine: {m}");
        }
        Ok(h)
    }

    /// A harness for a given path (no probe).
    pub fn with_path(path: PathKind) -> Harness {
        Harness {
            path,
            reason: "chosen by the caller".into(),
            outer: None,
        }
    }

    pub fn path(&self) -> PathKind {
        self.path
    }

    /// Why this path was chosen (probe measurement or override).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Nested path (from [`Harness::detect`]): the outer machine it starts (QEMU version,
    /// `-accel`, `-cpu`, `-smp`, outer kernel, extra command line).
    pub fn outer_machine(&self) -> Option<&str> {
        self.outer.as_deref()
    }

    /// Run a program on the chosen path.
    pub fn run(&self, run: &Run) -> Result<Outcome> {
        self.run_with_setup(run, &[])
    }

    /// Run `setup` (shell lines, `sh`, as root) where the program runs, then the program:
    /// on the host for the direct path, inside the outer machine for the nested path (e.g.
    /// create the tap a `--net tap=NAME` needs, start a server with `&`). The lines run
    /// in their own process group, stdin from /dev/null, output in
    /// [`Outcome::setup_output`]; background jobs keep running during the program and are
    /// killed (SIGKILL to the group) after it on the direct path, end with the outer
    /// machine on the nested path. A non-zero exit of the lines fails the run before the
    /// program starts. Files they need must be carried ([`Run::files_to_carry`]).
    pub fn run_with_setup(&self, run: &Run, setup: &[String]) -> Result<Outcome> {
        let program = match &run.program {
            Program::Microvm => microvm_binary()?,
            Program::Host(p) => p.clone(),
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut carry = run.files_to_carry.clone();
        let mut disk_files = Vec::new();
        for a in &run.args {
            match a {
                Arg::Str(s) => args.push(s.into()),
                Arg::File(p) => {
                    // Absolute: the file is carried to this path, and the program may run
                    // in another directory (the outer machine's /tmp).
                    let p = std::path::absolute(p)
                        .with_context(|| format!("cannot resolve {}", p.display()))?;
                    carry.push(p.clone());
                    args.push(p.into());
                }
                Arg::Disk { index, suffix } | Arg::DiskFile { index, suffix } => {
                    let disk = run.disks.get(*index).with_context(|| {
                        format!(
                            "Arg::Disk({index}) but the run has {} disks",
                            run.disks.len()
                        )
                    })?;
                    let mut s = match self.path {
                        PathKind::Direct => disk.as_os_str().to_os_string(),
                        PathKind::Nested => {
                            if *index >= 26 {
                                bail!("at most 26 disks on the nested path");
                            }
                            if matches!(a, Arg::DiskFile { .. }) {
                                disk_files.push(*index);
                                nested::disk_file_path(*index).into()
                            } else {
                                format!("/dev/vd{}", (b'a' + *index as u8) as char).into()
                            }
                        }
                    };
                    s.push(suffix);
                    args.push(s);
                }
            }
        }
        let to_dur = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1000.0);
        let (report, outer, setup_output) = match self.path {
            PathKind::Direct => {
                let started = Instant::now();
                let bg = if setup.is_empty() {
                    None
                } else {
                    Some(setup::DirectSetup::start(setup)?)
                };
                let rep = exec::execute(&exec::ExecSpec {
                    program: program.clone(),
                    args,
                    timeout: run.timeout,
                    marks: run.marks.clone(),
                    echo_stdout: run.echo,
                    stdio: run.stdio,
                    signal_at_mark: run.signal_at_mark.clone(),
                });
                let setup_output = bg.map(setup::DirectSetup::finish).unwrap_or_default();
                log::debug!("direct run took {:?}", started.elapsed());
                (rep?, None, setup_output)
            }
            PathKind::Nested => {
                let (rep, outer) = nested::run(&nested::NestedSpec {
                    program: program.clone(),
                    args,
                    carry,
                    disks: run.disks.clone(),
                    timeout: run.timeout,
                    marks: run.marks.clone(),
                    echo: run.echo,
                    stdio: run.stdio,
                    signal_at_mark: run.signal_at_mark.clone(),
                    setup: setup.to_vec(),
                    disk_files,
                })?;
                let setup_output = outer.setup_output.clone();
                (rep, Some(outer), setup_output)
            }
        };
        Ok(Outcome {
            stdout: report.stdout,
            stderr: report.stderr,
            status: report.status,
            signal: report.signal,
            timed_out: report.timed_out,
            elapsed: to_dur(report.elapsed_ms),
            marks: report
                .marks
                .into_iter()
                .map(|(k, v)| (k, to_dur(v)))
                .collect(),
            signalled: report.signalled_ms.map(to_dur),
            path: self.path,
            outer,
            setup_output,
        })
    }
}

/// The last `bounce statistics: {json}` line microvm logged (stderr), parsed
/// (`bounce::StatsSnapshot` as JSON); None if there is none (e.g. `--restricted-dma` off).
pub fn bounce_statistics(stderr: &str) -> Option<serde_json::Value> {
    stderr.lines().rev().find_map(|l| {
        let rest = &l[l.find("bounce statistics: ")? + "bounce statistics: ".len()..];
        serde_json::from_str(rest.trim()).ok()
    })
}

/// Parse microvm's `Guest-boot-time` log line (e.g. `Guest-boot-time = 123456 us 123 ms`):
/// the first number followed by a unit `us` or `ms`, in milliseconds.
pub fn guest_boot_time_ms(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("Guest-boot-time"))?;
    let after = &line[line.find("Guest-boot-time")? + "Guest-boot-time".len()..];
    let words: Vec<&str> = after
        .split(|c: char| c.is_whitespace() || c == '=' || c == ':' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(num) = w.strip_suffix("ms") {
            if let Ok(v) = num.parse() {
                return Some(v);
            }
        }
        if let Ok(v) = w.parse::<f64>() {
            match words.get(i + 1) {
                Some(n) if n.starts_with("ms") => return Some(v),
                Some(n) if n.starts_with("us") => return Some(v / 1000.0),
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_time_lines() {
        assert_eq!(
            guest_boot_time_ms("x\n[INFO] Guest-boot-time = 123.4 ms (cpu 5 ms)\n"),
            Some(123.4)
        );
        assert_eq!(guest_boot_time_ms("Guest-boot-time: 87ms"), Some(87.0));
        assert_eq!(
            guest_boot_time_ms("[INFO vmm] Guest-boot-time =  12345 us 12 ms"),
            Some(12.345)
        );
        assert_eq!(guest_boot_time_ms("Guest-boot-time = 12345 s"), None);
        assert_eq!(guest_boot_time_ms("nothing"), None);
    }

    #[test]
    fn parses_bounce_statistics() {
        let e = "[INFO vmm] x\n[2026 INFO vmm::metrics] bounce statistics: {\"maps\":3,\"failures\":{\"no_space\":1}}\n";
        let v = bounce_statistics(e).expect("parsed");
        assert_eq!(v["maps"], 3);
        assert_eq!(v["failures"]["no_space"], 1);
        assert!(bounce_statistics("bounce statistics: none (--restricted-dma is off)").is_none());
    }

    #[test]
    fn outcome_values() {
        let o = Outcome {
            stdout: "a\r\nnproc=2\r\ncpus-online=0-1\nxnproc=9\n".into(),
            stderr: String::new(),
            status: Some(0),
            signal: None,
            timed_out: false,
            elapsed: Duration::ZERO,
            marks: BTreeMap::new(),
            signalled: None,
            path: PathKind::Direct,
            outer: None,
            setup_output: String::new(),
        };
        assert_eq!(o.value("nproc").as_deref(), Some("2"));
        assert_eq!(o.value("cpus-online").as_deref(), Some("0-1"));
        assert_eq!(o.value("missing"), None);
    }
}
