//! The nested path: run a program inside a QEMU TCG machine with emulated AMD SVM,
//! whose Debian kernel gets a real `/dev/kvm` from `kvm-amd`.
//!
//! The outer machine boots from two concatenated cpio archives: a cached base
//! (busybox, kernel modules, `/init`) and a per-run part (the program and every file it
//! needs, at the same absolute paths as on the host, plus `/run.sh`). `/run.sh` runs the
//! program under `harness-exec`, which writes a JSON [`ExecReport`] to the second serial
//! port (a host file); the first serial port (QEMU's stdout) shows the console live.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::artifacts::{cache_dir, harness_exec_binary, repo_root};
use crate::cpio::CpioWriter;
use crate::exec::{ExecReport, StdioMode};

pub mod config;
pub mod lock;
pub(crate) mod outer_image;
mod qemu;
pub mod watch;

pub use config::{qemu_version, OuterConfig};
use lock::Slot;
pub use outer_image::{base_initramfs, find_outer_kernel, shared_libraries, OuterKernel};
use outer_image::{resolve_modules, BUSYBOX};
use qemu::run_outer;
use watch::{classify, kernel_failure, kernel_panicked};
pub use watch::{OuterError, OuterFailure};

/// Extra time for the outer machine to boot and power off, on top of the run's timeout.
const OUTER_SLACK: Duration = Duration::from_secs(180);

/// One program run inside the outer machine.
#[derive(Debug, Clone)]
pub struct NestedSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Host files to carry (at the same absolute paths). Executables bring their libraries.
    pub carry: Vec<PathBuf>,
    /// Host disk images attached as /dev/vda, /dev/vdb, ...
    pub disks: Vec<PathBuf>,
    pub timeout: Duration,
    pub marks: Vec<String>,
    pub echo: bool,
    /// The program's stdin, stdout and stderr, set up by `harness-exec` inside the outer
    /// machine (a terminal there is a pty of the outer machine's devpts).
    pub stdio: StdioMode,
    pub signal_at_mark: Option<(String, i32)>,
    /// Shell lines run in the outer machine before the program (see
    /// [`crate::Harness::run_with_setup`]).
    pub setup: Vec<String>,
    /// Indices of `disks` the program gets as regular files ([`disk_file_path`]): copied
    /// from /dev/vdX before the program, back to it (fsync'ed) after.
    pub disk_files: Vec<usize>,
}

/// The file where every rerun of a failed outer machine is recorded, beside the runs: a test
/// runner shows a passing test's stderr to no one, and a rerun must not go unseen
/// (`resources/test.sh` lists it after nextest).
pub fn reruns_log() -> PathBuf {
    repo_root()
        .join("build")
        .join("runs")
        .join("outer-reruns.log")
}

fn record_rerun(line: &str) {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let written = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(reruns_log())
        .and_then(|mut f| {
            // The test harness names each test's thread after the test (a program's own main
            // thread is "main").
            let test = std::thread::current()
                .name()
                .filter(|&n| n != "main")
                .map(|n| format!("{n}: "))
                .unwrap_or_default();
            writeln!(f, "unix time {since}: {test}{line}")
        });
    if let Err(e) = written {
        eprintln!(
            "harness: cannot record the rerun in {}: {e}",
            reruns_log().display()
        );
    }
}

/// Where [`crate::Arg::DiskFile`] `index` lives inside the outer machine.
pub fn disk_file_path(index: usize) -> String {
    format!("/tmp/harness-disk{index}.img")
}

fn vd(index: usize) -> String {
    format!("/dev/vd{}", (b'a' + index as u8) as char)
}

/// What the outer machine did besides running the program.
#[derive(Debug, Clone)]
pub struct OuterInfo {
    /// Host time from QEMU start to the outer machine running /run.sh.
    pub boot: Duration,
    /// Host time from QEMU start to QEMU exit.
    pub total: Duration,
    /// What the outer machine's user space wrote on its console (ttyS0).
    pub console: String,
    /// What the outer kernel wrote on its console (ttyS2).
    pub kernel_log: String,
    /// What the setup lines printed (up to the program's exit).
    pub setup_output: String,
    /// The machine: QEMU version, accelerator, CPU model, vCPUs, kernel
    /// ([`OuterConfig::describe`]).
    pub machine: String,
    /// The CPU as the outer kernel saw it: model name, SVM/AVX/XSAVE flags, whether it
    /// warned `XSAVE consistency problem`, its `x86/fpu:` lines.
    pub cpu: Option<String>,
    /// A BUG/oops line the outer kernel logged although the run finished.
    pub kernel_said: Option<String>,
    /// Outer machine boots that failed before /run.sh and were retried (their failures).
    pub failed_attempts: Vec<String>,
    /// Heartbeats the outer init sent (one a second).
    pub heartbeats: u64,
}

fn shell_quote(s: &[u8]) -> String {
    crate::sh_quote(&String::from_utf8_lossy(s))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run `spec` inside a fresh outer machine.
pub fn run(spec: &NestedSpec) -> Result<(ExecReport, OuterInfo)> {
    let kernel = find_outer_kernel()?;
    let base = base_initramfs(&kernel)?;
    let helper = harness_exec_binary()?;

    let nonce = format!(
        "{}-{}-{}",
        std::process::id(),
        RUN_COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let run_dir = repo_root().join("build").join("runs").join(&nonce);
    fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let initrd = run_dir.join("initrd.cpio");
    let report_file = run_dir.join("ttyS1.log");

    // Per-run initramfs: base + carried files + /run.sh.
    {
        let mut out = BufWriter::new(
            fs::File::create(&initrd)
                .with_context(|| format!("cannot create {}", initrd.display()))?,
        );
        let mut base_f =
            fs::File::open(&base).with_context(|| format!("cannot open {}", base.display()))?;
        let mut buf = Vec::new();
        base_f.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        let mut w = CpioWriter::new(out);
        let mut carried = BTreeSet::new();
        let mut to_carry: Vec<PathBuf> = vec![helper.clone(), spec.program.clone()];
        to_carry.extend(spec.carry.iter().cloned());
        for f in &to_carry {
            let abs = f.canonicalize().with_context(|| {
                format!(
                    "file to carry into the outer machine is missing: {}",
                    f.display()
                )
            })?;
            // Carry both the given path and, if a symlink, keep the given name.
            let mut paths = vec![(f.clone(), abs.clone())];
            for lib in shared_libraries(&abs)? {
                let real = lib
                    .canonicalize()
                    .with_context(|| format!("cannot resolve {}", lib.display()))?;
                paths.push((lib, real));
            }
            for (name, real) in paths {
                let name = if name.is_absolute() {
                    name
                } else {
                    std::env::current_dir()?.join(name)
                };
                if carried.insert(name.clone()) {
                    w.host_file(&name.to_string_lossy(), &real)?;
                }
            }
        }
        // The program sees the caller's RUST_LOG, as it would on the direct path.
        let env = std::env::var("RUST_LOG")
            .map(|v| format!("RUST_LOG={} ", shell_quote(v.as_bytes())))
            .unwrap_or_default();
        let mut cmd = format!(
            "{env}{} --report /dev/ttyS1 --timeout-ms {}",
            shell_quote(helper.as_os_str().as_bytes()),
            spec.timeout.as_millis()
        );
        if spec.echo {
            cmd.push_str(" --echo");
        }
        cmd.push_str(&format!(" --stdio {}", spec.stdio.name()));
        if let Some((mark, sig)) = &spec.signal_at_mark {
            cmd.push_str(&format!(
                " --signal-at-mark {sig} {}",
                shell_quote(mark.as_bytes())
            ));
        }
        for m in &spec.marks {
            cmd.push_str(&format!(" --mark {}", shell_quote(m.as_bytes())));
        }
        cmd.push_str(" -- ");
        cmd.push_str(&shell_quote(spec.program.as_os_str().as_bytes()));
        for a in &spec.args {
            cmd.push(' ');
            cmd.push_str(&shell_quote(a.as_bytes()));
        }
        if spec.stdio == StdioMode::Console {
            // The outer init's stdin is /dev/null (ttyS0 is its output only); an interactive
            // program reads what is typed into QEMU's stdin, which arrives on ttyS0.
            cmd.push_str(" </dev/ttyS0");
        }
        let script = format!(
            "#!/bin/sh\necho \"@@MVH-OUTER-READY uptime=$(cut -d' ' -f1 /proc/uptime)@@\"\ncd /tmp\n{}{cmd}\n{}",
            {
                let mut p = String::new();
                for &i in &spec.disk_files {
                    p.push_str(&format!(
                        "dd if={} of={} bs=1M 2>/dev/null || {{ echo 'harness: cannot copy {} to {}'; exit 1; }}\n",
                        vd(i), disk_file_path(i), vd(i), disk_file_path(i)
                    ));
                }
                p.push_str(&crate::setup::outer_script_prologue(&spec.setup));
                p
            },
            {
                let mut e = String::new();
                for &i in &spec.disk_files {
                    e.push_str(&format!(
                        "dd if={} of={} bs=1M conv=notrunc,fsync 2>/dev/null || echo 'harness: cannot copy {} back to {}'\n",
                        disk_file_path(i), vd(i), disk_file_path(i), vd(i)
                    ));
                }
                e.push_str(&crate::setup::outer_script_epilogue(&spec.setup));
                e
            },
        );
        w.file("run.sh", 0o755, script.as_bytes())?;
        w.finish()?
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", initrd.display(), e.error()))?;
    }

    let config = OuterConfig::from_env()?;
    let machine = config.describe(&qemu_version(&config.qemu)?, &kernel.version);
    let kernel_file = run_dir.join("ttyS2.log");
    let qemu_log = run_dir.join("qemu-reset.log");
    let mut qemu = Command::new(&config.qemu);
    qemu.args(config.qemu_args())
        .args(["-nographic", "-no-reboot", "-net", "none"])
        // Thread names ("CPU 0/TCG") for the report on a frozen machine; each CPU's state
        // when it is reset (after a triple fault: where it was) for one that reset itself.
        .args(["-name", "outer,debug-threads=on", "-d", "cpu_reset", "-D"])
        .arg(&qemu_log)
        // ttyS0: user space's console; ttyS1: the heartbeat and harness-exec's report;
        // ttyS2: the kernel's console, its messages alone (see watch.rs).
        .args(["-serial", "mon:stdio"])
        .arg("-serial")
        .arg(format!("file:{}", report_file.display()))
        .arg("-serial")
        .arg(format!("file:{}", kernel_file.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(config.kernel_cmdline());
    for d in &spec.disks {
        if !d.is_file() {
            bail!("disk image {} does not exist", d.display());
        }
        qemu.arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", d.display()));
    }
    // An interactive session: what is typed reaches the outer console (QEMU puts a terminal in
    // raw mode), where harness-exec hands it to the program as its stdin.
    qemu.stdin(if spec.stdio == StdioMode::Console {
        Stdio::inherit()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec only prctl, which is async-signal-safe. QEMU dies with
    // the thread that started it: a harness killed by a signal (a test runner's timeout, a
    // ^C) does not leave the outer machine running on both cores after the lock is gone.
    unsafe {
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let what = format!(
        "outer machine ({machine}) running {}",
        spec.program.display()
    );
    let _slot = Slot::acquire(
        &lock::slot_dir(&cache_dir()?),
        lock::slots(config.smp)?,
        &what,
    )?;
    let limit = spec.timeout + OUTER_SLACK;
    // The disks as the test made them: a rerun after the program started (and perhaps wrote
    // to them) begins from these again.
    let originals = save_disks(&spec.disks, &run_dir)?;
    let mut failed_attempts = Vec::new();
    let mut attempt = 0;
    let (a, report, failed) = loop {
        attempt += 1;
        let _ = fs::remove_file(&report_file);
        let _ = fs::remove_file(&kernel_file);
        let _ = fs::remove_file(&qemu_log);
        log::info!("starting outer machine: {qemu:?}");
        let a = run_outer(
            &mut qemu,
            &config,
            spec.echo,
            [&report_file, &kernel_file],
            limit,
        )?;
        let report_text = fs::read_to_string(&report_file).unwrap_or_default();
        let report = report_text
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .find_map(|l| serde_json::from_str::<ExecReport>(l.trim()).ok());
        let started = a.boot.is_some();
        let failed = report.is_none() || a.stop.is_some() || kernel_panicked(&a.kernel_log);
        // Once the program has started, a rerun must not change what it sees: its disks are
        // restored below; no person at its terminal, no output already shown.
        let rerun_ok = !started || (spec.stdio != StdioMode::Console && !spec.echo);
        let setup_failed = started && crate::setup::failed_output(&a.console).is_some();
        if failed && rerun_ok && !setup_failed && attempt < config.attempts {
            // harness-exec reports every outcome of the program (its status, a signal, its
            // own timeout); no report, a frozen or a panicked outer kernel is the outer
            // machine's failure (QEMU TCG's emulated SVM), recognised by those signatures and
            // never by the program's result. It is said here and kept in
            // OuterInfo::failed_attempts; the last allowed failure (`MICROVM_OUTER_ATTEMPTS`) is an error.
            let failure = classify_attempt(&a, &qemu_log, &kernel);
            let why = format!(
                "outer machine attempt {attempt} failed {} ({failure}, after {:.1?}); rerunning",
                if started {
                    "while the program ran"
                } else {
                    "before /run.sh"
                },
                a.total
            );
            eprintln!("harness: {why}");
            log::warn!("{why}; console tail:\n{}", tail(&a.console, 10));
            record_rerun(&format!("{}: {why}", spec.program.display()));
            failed_attempts.push(failure.to_string());
            if started {
                restore_disks(&originals, &spec.disks)?;
            }
            continue;
        }
        break (a, report, failed);
    };
    let qemu_err = quiet_qemu_stderr(&a.qemu_err);
    let kernel_said = kernel_failure(&a.kernel_log);
    if failed && a.stop.is_none() {
        if let Some(out) = crate::setup::failed_output(&a.console) {
            bail!("{what}: the setup lines failed before the program started:\n{out}");
        }
    }
    let report = match report {
        Some(r) if !failed => r,
        _ => {
            let failure = classify_attempt(&a, &qemu_log, &kernel);
            let kernel_said =
                kernel_said.filter(|_| !matches!(failure, OuterFailure::KernelPanic { .. }));
            let detail = format!(
                "{what}: {failure}{} after {:.1?} (outer boot {}; {} heartbeats{}). \
                 {}Outer console's last lines:\n{}\nOuter kernel's last messages:\n{}\nqemu stderr: {}",
                kernel_said
                    .as_deref()
                    .map(|l| format!(" (its kernel logged: {l})"))
                    .unwrap_or_default(),
                a.total,
                if a.boot.is_some() {
                    "reached /run.sh"
                } else {
                    "never reached /run.sh"
                },
                a.heartbeats,
                if failed_attempts.is_empty() {
                    String::new()
                } else {
                    format!("; earlier attempts: {}", failed_attempts.join("; "))
                },
                a.qemu_activity
                    .as_deref()
                    .map(|q| format!("QEMU before it was killed: {q}.\n"))
                    .unwrap_or_default(),
                tail(&a.console, 30),
                tail(&a.kernel_log, 40),
                qemu_err.trim()
            );
            return Err(OuterError {
                failure,
                ran: a.total,
                kernel_said,
                console: a.console,
                kernel_log: a.kernel_log,
                detail,
            }
            .into());
        }
    };
    if let Some(line) = &kernel_said {
        eprintln!("harness: warning: the outer kernel logged during the run: {line}");
    }
    if std::env::var_os("MICROVM_KEEP_RUNS").is_none() {
        let _ = fs::remove_dir_all(&run_dir);
    }
    Ok((
        report,
        OuterInfo {
            boot: a.boot.unwrap_or(a.total),
            total: a.total,
            setup_output: crate::setup::output_from_console(&a.console),
            cpu: outer_cpu_line(&a.console),
            machine,
            kernel_said,
            failed_attempts,
            heartbeats: a.heartbeats,
            console: a.console,
            kernel_log: a.kernel_log,
        },
    ))
}

/// Copies of `disks` in `dir` (`disk-N.orig`), for [`restore_disks`]: the tests' images are
/// 1-64 MiB, so a plain copy per run costs little.
fn save_disks(disks: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let copy = dir.join(format!("disk-{i}.orig"));
            fs::copy(d, &copy).with_context(|| {
                format!("cannot keep a copy of disk {} for a rerun", d.display())
            })?;
            Ok(copy)
        })
        .collect()
}

/// Puts each disk back as [`save_disks`] found it.
fn restore_disks(originals: &[PathBuf], disks: &[PathBuf]) -> Result<()> {
    for (copy, d) in originals.iter().zip(disks) {
        fs::copy(copy, d)
            .with_context(|| format!("cannot restore disk {} for a rerun", d.display()))?;
    }
    Ok(())
}

/// How an attempt that gave no report failed ([`watch::classify`]), RIPs named from the
/// outer kernel's System.map beside its vmlinuz (the outer kernel runs with `nokaslr`).
fn classify_attempt(a: &qemu::Attempt, qemu_log: &Path, kernel: &OuterKernel) -> OuterFailure {
    let log = fs::read_to_string(qemu_log).unwrap_or_default();
    let map = fs::read_to_string(
        kernel
            .vmlinuz
            .with_file_name(format!("System.map-{}", kernel.version)),
    )
    .unwrap_or_default();
    let symbol = |addr| watch::symbolize(&map, addr);
    classify(a.stop.as_ref(), &a.kernel_log, &a.status, &log, &symbol)
}

/// The `@@MVH-OUTER-CPU ...@@` line the outer init prints (model, flags, XSAVE state).
fn outer_cpu_line(console: &str) -> Option<String> {
    const TAG: &str = "@@MVH-OUTER-CPU ";
    let start = console.find(TAG)? + TAG.len();
    let rest = &console[start..];
    Some(
        rest[..rest.find("@@").unwrap_or(rest.len())]
            .trim()
            .to_string(),
    )
}

/// QEMU's stderr without its warnings about CPU features TCG lacks (always printed).
fn quiet_qemu_stderr(s: &str) -> String {
    s.lines()
        .filter(|l| !l.contains("TCG doesn't support requested feature"))
        .collect::<Vec<_>>()
        .join("\n")
}
/// Check that the nested path has what it needs (the error says what to install) and
/// describe the outer machine it will start ([`OuterConfig::describe`]).
pub fn check_prerequisites() -> Result<String> {
    let config = OuterConfig::from_env()?;
    let version = qemu_version(&config.qemu)?;
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static");
    }
    let kernel = find_outer_kernel()?;
    resolve_modules(&kernel)?;
    if let Some(w) = config::qemu_warning(&version) {
        eprintln!("harness: warning: {w}");
    }
    Ok(config.describe(&version, &kernel.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_outer_cpu_line() {
        let console = "SeaBIOS\n@@MVH-OUTER-CPU AMD EPYC Processor | svm npt | xsave-warning=no | x87 FPU will use FXSAVE;@@\n@@MVH-OUTER-READY uptime=2.1@@\n";
        assert_eq!(
            outer_cpu_line(console).as_deref(),
            Some("AMD EPYC Processor | svm npt | xsave-warning=no | x87 FPU will use FXSAVE;")
        );
        assert_eq!(outer_cpu_line("no line"), None);
    }
}
