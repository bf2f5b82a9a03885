//! Boot-time comparison and boot-failure census: the same kernel + initramfs booted under
//! microvm and under `qemu-system-x86_64 -M microvm -enable-kvm`, alternately, inside ONE
//! harness run (so both see the same machine: on the nested path, the same outer machine).
//!
//! Both are timed the same way, from process start to the guest's `MICROVM-INIT-OK` line on
//! the console; microvm's own `Guest-boot-time` log line is shown too. Every boot is
//! classified ([`microvm_tests::bootstat`]: reached init, triple fault, guest panic,
//! timeout, other) and whether its guest warned `XSAVE consistency problem` is noted. The
//! boots run in a loop of this same program inside the outer machine (`--inner`), which
//! prints one `BOOT-RECORD <json>` line per boot as it ends; they reach us live, so when
//! the outer machine panics or freezes (reported as such by the harness, within seconds)
//! the boots it finished still count. Nothing here can wait forever: each boot has
//! `--boot-timeout`, and the harness stops a frozen outer machine.
//!
//! Prints, per VMM, the counts by kind, the median and 90th percentile of the time to
//! `MICROVM-INIT-OK`, and one `boot-compare: table |...|` line (the tests/README.md table's
//! columns). Exits 1 when the outer machine failed, a VMM never booted, or records are
//! missing; boot failures alone are counted, not fatal (this is a census).
//!
//! usage: boot-compare [--runs N] [--cpus N] [--only qemu|microvm] [--kernel bzImage|vmlinux]
//!        [--boot-timeout SECONDS] [--show]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::bootstat::{parse_records, BootKind, BootRecord, Summary, RECORD_PREFIX};
use microvm_tests::exec::{execute, ExecSpec, StdioMode};
use microvm_tests::nested::config::TcgThread;
use microvm_tests::nested::{OuterConfig, OuterError};
use microvm_tests::{
    kernel_artifacts, microvm_binary, sh_quote, Arg, Harness, Program, Run, INIT_OK,
};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 microvm.test=boot";
/// The firmware `-M microvm` loads, where Debian's QEMU 7.2 (/usr/share/qemu) and 10.0
/// (/usr/share/seabios for SeaBIOS's images) keep it; the ones present are carried.
const QEMU_FILES: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/seabios/bios-microvm.bin",
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/kvmvapic.bin",
];
const USAGE: &str = "usage: boot-compare [--runs N] [--cpus N] [--only qemu|microvm] \
                     [--kernel bzImage|vmlinux] [--boot-timeout SECONDS] [--show]";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let inner = std::env::args().nth(1).as_deref() == Some("--inner");
    let r = if inner { inner_main() } else { real_main() };
    if let Err(e) = r {
        eprintln!("boot-compare: error: {e:#}");
        std::process::exit(1);
    }
}

fn which(prog: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("{prog} not found in PATH: apt-get install qemu-system-x86"))
}

/// Where the boots run (inside the outer machine on the nested path):
/// `--inner BOOT_TIMEOUT_MS RUNS SHOW -- NAME COMMAND [NAME COMMAND]...`.
fn inner_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [timeout_ms, runs, show, sep, rest @ ..] = args.as_slice() else {
        bail!("--inner: expected BOOT_TIMEOUT_MS RUNS SHOW -- NAME COMMAND...");
    };
    if sep != "--" || rest.is_empty() || rest.len() % 2 != 0 {
        bail!("--inner: expected -- NAME COMMAND [NAME COMMAND]...");
    }
    let timeout = Duration::from_millis(timeout_ms.parse().context("--inner: timeout")?);
    let runs: usize = runs.parse().context("--inner: runs")?;
    let show = show == "1";
    for i in 0..runs {
        for pair in rest.chunks(2) {
            let (name, cmd) = (&pair[0], &pair[1]);
            let rep = execute(&ExecSpec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), cmd.into()],
                timeout,
                marks: vec![INIT_OK.to_string()],
                echo_stdout: false,
                stdio: StdioMode::Null,
                signal_at_mark: None,
            })?;
            if show {
                println!(
                    "----- {name} run {i} stdout -----\n{}\n----- stderr -----\n{}",
                    rep.stdout, rep.stderr
                );
            }
            let rec = BootRecord::new(name, i, &rep);
            println!("{RECORD_PREFIX}{}", serde_json::to_string(&rec)?);
        }
    }
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

fn real_main() -> Result<()> {
    let mut runs = 3usize;
    let mut cpus = 1u8;
    let mut only: Option<String> = None;
    let mut kernel_kind = "bzImage".to_string();
    let mut show = false;
    let mut boot_timeout = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .context("--runs N")?
                    .parse()
                    .context("--runs: not a number")?
            }
            "--cpus" => {
                cpus = args
                    .next()
                    .context("--cpus N")?
                    .parse()
                    .context("--cpus: not a number")?
            }
            "--only" => only = Some(args.next().context("--only qemu|microvm")?),
            "--show" => show = true,
            "--kernel" => kernel_kind = args.next().context("--kernel bzImage|vmlinux")?,
            "--boot-timeout" => {
                boot_timeout = Duration::from_secs(
                    args.next()
                        .context("--boot-timeout SECONDS")?
                        .parse()
                        .context("--boot-timeout: not a number of seconds")?,
                )
            }
            _ => bail!("unknown argument {a} ({USAGE})"),
        }
    }
    if let Some(o) = only.as_deref().filter(|o| !["qemu", "microvm"].contains(o)) {
        bail!("--only {o}: expected qemu or microvm");
    }
    let want = |w: &str| only.as_deref().is_none_or(|o| o == w);

    let harness = Harness::detect()?;
    println!(
        "boot-compare: path={} ({})",
        harness.path(),
        harness.reason()
    );
    if let Some(m) = harness.outer_machine() {
        println!("boot-compare: outer machine: {m}");
    }
    let k = kernel_artifacts()?;
    let kernel = match kernel_kind.as_str() {
        "bzImage" => k.bzimage.clone(),
        "vmlinux" => k.vmlinux.clone(),
        other => bail!("--kernel {other}: expected bzImage or vmlinux"),
    };
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let mut carry: Vec<PathBuf> = vec![kernel.clone(), k.initramfs.clone()];
    let mut cmds: Vec<(&str, String)> = Vec::new();
    if want("qemu") {
        let qemu = which("qemu-system-x86_64")?;
        carry.push(qemu.clone());
        carry.extend(QEMU_FILES.iter().map(PathBuf::from).filter(|p| p.exists()));
        let mut c = vec![
            qemu.display().to_string(),
            "-M".into(),
            "microvm".into(),
            "-enable-kvm".into(),
            "-cpu".into(),
            "host".into(),
            "-m".into(),
            "256".into(),
            "-smp".into(),
            cpus.to_string(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            kernel.display().to_string(),
        ];
        c.extend(["-initrd".into(), k.initramfs.display().to_string()]);
        c.extend(["-append".into(), CMDLINE.into()]);
        cmds.push((
            "qemu",
            c.iter().map(|s| sh_quote(s)).collect::<Vec<_>>().join(" "),
        ));
    }
    if want("microvm") {
        let microvm = microvm_binary()?;
        carry.push(microvm.clone());
        let c = [
            microvm.display().to_string(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            k.initramfs.display().to_string(),
            "--memory".into(),
            "256".into(),
            "--cpus".into(),
            cpus.to_string(),
            "--cmdline".into(),
            CMDLINE.into(),
        ];
        cmds.push((
            "microvm",
            c.iter().map(|s| sh_quote(s)).collect::<Vec<_>>().join(" "),
        ));
    }

    let mut inner_args = vec![
        Arg::s("--inner"),
        Arg::s(boot_timeout.as_millis().to_string()),
        Arg::s(runs.to_string()),
        Arg::s(if show { "1" } else { "0" }),
        Arg::s("--"),
    ];
    for (name, cmd) in &cmds {
        inner_args.push(Arg::s(*name));
        inner_args.push(Arg::s(cmd.clone()));
    }
    let planned = runs * cmds.len();
    let run = Run {
        program: Program::Host(me),
        args: inner_args,
        files_to_carry: carry,
        disks: vec![],
        timeout: (boot_timeout + Duration::from_secs(5)) * planned as u32 + Duration::from_secs(30),
        marks: vec![],
        // The records reach us (and the outer console) as each boot ends.
        echo: true,
        stdio: StdioMode::Null,
        signal_at_mark: None,
    };
    let (records, outer_failure, failed_attempts) = match harness.run(&run) {
        Ok(out) => {
            if let Some(outer) = &out.outer {
                println!(
                    "boot-compare: outer machine booted in {:.2?}, ran {:.1?}; its CPU: {}",
                    outer.boot,
                    outer.total,
                    outer.cpu.as_deref().unwrap_or("(not reported)")
                );
                if let Some(l) = &outer.kernel_said {
                    println!("boot-compare: the outer kernel logged: {l}");
                }
            }
            if out.status != Some(0) {
                println!(
                    "boot-compare: the boot loop ended with status {:?} (timed out: {}); stderr:\n{}",
                    out.status, out.timed_out, out.stderr
                );
            }
            let attempts = out
                .outer
                .as_ref()
                .map(|o| o.failed_attempts.clone())
                .unwrap_or_default();
            (parse_records(&out.stdout), None, attempts)
        }
        Err(e) => match e.downcast_ref::<OuterError>() {
            Some(oe) => {
                println!("boot-compare: {e:#}");
                (parse_records(&oe.console), Some(oe.failure.clone()), vec![])
            }
            None => return Err(e),
        },
    };

    for r in records.iter().filter(|r| r.kind != BootKind::Init) {
        println!(
            "boot-compare: {} run {}: {} (status {:?}, signal {:?}, after {:.0} ms)\n{}",
            r.vmm,
            r.run,
            r.kind.name(),
            r.status,
            r.signal,
            r.elapsed_ms,
            r.tail
        );
    }
    for a in &failed_attempts {
        println!(
            "boot-compare: an outer machine attempt failed before the boots and was retried: {a}"
        );
    }
    let outer = match &outer_failure {
        None => "ok".to_string(),
        Some(f) => format!("{} after {} of {planned} boots", f.kind(), records.len()),
    };
    let machine = match harness.outer_machine() {
        None => "direct".to_string(),
        Some(_) => {
            let c = OuterConfig::from_env()?;
            match c.tcg_thread {
                TcgThread::Multi => c.cpu,
                TcgThread::Single => format!("{} thread=single", c.cpu),
            }
        }
    };
    let mut missing = Vec::new();
    for (name, _) in &cmds {
        let s = Summary::of(records.iter().filter(|r| r.vmm == *name));
        let kinds = BootKind::ALL
            .iter()
            .map(|k| format!("{} {}", s.count(*k), k.name()))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "boot-compare: {name}: {} boots ({cpus} vCPUs): {kinds}; XSAVE warning in {}; \
             {INIT_OK} median {} ms, p90 {} ms",
            s.boots,
            s.xsave_warnings,
            fmt_ms(s.median_ms),
            fmt_ms(s.p90_ms)
        );
        println!(
            "boot-compare: table | {name} | {} | {cpus} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            machine,
            s.boots,
            s.count(BootKind::Init),
            s.count(BootKind::TripleFault),
            s.count(BootKind::GuestPanic),
            s.count(BootKind::Timeout),
            s.count(BootKind::Other),
            s.xsave_warnings,
            outer,
            fmt_ms(s.median_ms),
            fmt_ms(s.p90_ms)
        );
        if s.count(BootKind::Init) == 0 {
            missing.push(*name);
        }
    }
    let q = Summary::of(records.iter().filter(|r| r.vmm == "qemu")).median_ms;
    let m = Summary::of(records.iter().filter(|r| r.vmm == "microvm")).median_ms;
    if let (Some(q), Some(m)) = (q, m) {
        println!(
            "boot-compare: ratio microvm/qemu = {:.2} ({} path, {kernel_kind})",
            m / q,
            harness.path()
        );
    }
    let logged: Vec<f64> = records.iter().filter_map(|r| r.vmm_boot_ms).collect();
    if let Some(v) = microvm_tests::bootstat::percentile(&logged, 50.0) {
        println!("boot-compare: median Guest-boot-time logged by microvm: {v:.1} ms");
    }
    if let Some(f) = outer_failure {
        bail!(
            "the outer machine failed ({f}) after {} of {planned} boots",
            records.len()
        );
    }
    if records.len() != planned {
        bail!("{} boot records for {planned} boots", records.len());
    }
    if !missing.is_empty() {
        bail!("no successful boot for: {}", missing.join(", "));
    }
    Ok(())
}
