//! Boot-time comparison: the same kernel + initramfs booted under microvm and under
//! `qemu-system-x86_64 -M microvm -enable-kvm`, alternately, inside ONE harness run (so
//! both see the same machine: on the nested path, the same outer machine).
//!
//! Both are timed the same way, from process start to the guest's `MICROVM-INIT-OK`
//! line on the console (measured by `harness-exec` next to the program); microvm's own
//! `Guest-boot-time` log line is shown too. Prints the ratio; asserts nothing about it.
//!
//! Boots that never print the line are counted per VMM at the end (the nested path's early
//! triple faults: are they microvm's or the machine's?).
//!
//! usage: boot-compare [--runs N] [--cpus N] [--only qemu|microvm] [--kernel bzImage|vmlinux] [--show]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::artifacts::harness_exec_binary;
use microvm_tests::exec::ExecReport;
use microvm_tests::{
    guest_boot_time_ms, kernel_artifacts, microvm_binary, Arg, Harness, Program, Run, INIT_OK,
};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 microvm.test=boot";
const QEMU_FILES: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = real_main() {
        eprintln!("boot-compare: error: {e:#}");
        std::process::exit(1);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn which(prog: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("{prog} not found in PATH: apt-get install qemu-system-x86"))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn real_main() -> Result<()> {
    let mut runs = 3usize;
    let mut cpus = 1u8;
    let mut only: Option<String> = None;
    let mut kernel_kind = "bzImage".to_string();
    let mut show = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse().context("--runs: not a number")?,
            "--cpus" => cpus = args.next().context("--cpus N")?.parse().context("--cpus: not a number")?,
            "--only" => only = Some(args.next().context("--only qemu|microvm")?),
            "--show" => show = true,
            "--kernel" => kernel_kind = args.next().context("--kernel bzImage|vmlinux")?,
            _ => bail!("unknown argument {a} (usage: boot-compare [--runs N] [--cpus N] [--only qemu|microvm] [--kernel bzImage|vmlinux] [--show])"),
        }
    }
    let want = |w: &str| only.as_deref().is_none_or(|o| o == w);

    let harness = Harness::detect()?;
    println!(
        "boot-compare: path={} ({})",
        harness.path(),
        harness.reason()
    );
    let k = kernel_artifacts()?;
    let kernel = match kernel_kind.as_str() {
        "bzImage" => k.bzimage.clone(),
        "vmlinux" => k.vmlinux.clone(),
        other => bail!("--kernel {other}: expected bzImage or vmlinux"),
    };
    let helper = harness_exec_binary()?;
    let mut carry: Vec<PathBuf> = vec![kernel.clone(), k.initramfs.clone(), helper.clone()];
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
    if cmds.is_empty() {
        bail!("--only must be qemu or microvm");
    }

    // One shell script runs all boots, alternating, each under harness-exec, and prints
    // each JSON report on a line "BOOT-REPORT <name> <json>".
    let mut script = String::from("set -u\n");
    for i in 0..runs {
        for (name, cmd) in &cmds {
            script.push_str(&format!(
                "rm -f /tmp/r.json; {h} --report /tmp/r.json --timeout-ms 120000 --mark {m} -- {cmd} >/dev/null 2>&1; \
                 printf 'BOOT-REPORT {name} {i} '; tail -n 1 /tmp/r.json\n",
                h = sh_quote(&helper.display().to_string()),
                m = INIT_OK,
            ));
        }
    }
    let run = Run {
        program: Program::Host("/bin/sh".into()),
        args: vec![Arg::s("-c"), Arg::Str(script)],
        files_to_carry: carry,
        disks: vec![],
        timeout: Duration::from_secs(150 * (runs * cmds.len()) as u64),
        marks: vec![],
        echo: false,
        stdio: microvm_tests::StdioMode::Null,
        signal_at_mark: None,
    };
    let out = harness.run(&run)?;
    if let Some(outer) = &out.outer {
        println!("boot-compare: outer machine booted in {:.2?}", outer.boot);
    }
    let mut console_ms: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut failed: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut vmm_log_ms = Vec::new();
    for line in out.stdout.lines() {
        let Some(rest) = line.strip_prefix("BOOT-REPORT ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(name), Some(i), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rep: ExecReport = serde_json::from_str(json.trim())
            .with_context(|| format!("bad report for {name} run {i}: {json}"))?;
        let key = if name == "qemu" { "qemu" } else { "microvm" };
        if show {
            println!(
                "----- {name} run {i} stdout -----\n{}\n----- stderr -----\n{}",
                rep.stdout, rep.stderr
            );
        }
        match rep.marks.get(INIT_OK) {
            Some(ms) => {
                println!(
                    "{name:8} run {i}: {INIT_OK} after {ms:8.1} ms, exit {:?} after {:8.1} ms",
                    rep.status, rep.elapsed_ms
                );
                console_ms.entry(key).or_default().push(*ms);
            }
            None => {
                *failed.entry(key).or_default() += 1;
                println!(
                    "{name:8} run {i}: NO {INIT_OK} (status {:?}, timed out {}); stdout tail:\n{}\nstderr tail:\n{}",
                    rep.status,
                    rep.timed_out,
                    tail(&rep.stdout),
                    tail(&rep.stderr)
                );
            }
        }
        if name == "microvm" {
            let logged =
                guest_boot_time_ms(&rep.stderr).or_else(|| guest_boot_time_ms(&rep.stdout));
            if let Some(ms) = logged {
                println!("microvm  run {i}: Guest-boot-time logged by microvm: {ms:.1} ms");
                vmm_log_ms.push(ms);
            }
        }
    }
    if out.status != Some(0) {
        println!(
            "boot-compare: the script ended with {:?}; stderr:\n{}",
            out.status, out.stderr
        );
    }
    for (name, _) in &cmds {
        let ok = console_ms.get(name).map_or(0, |v| v.len());
        let bad = failed.get(name).copied().unwrap_or(0);
        println!(
            "boot-compare: {name}: {ok} boots reached {INIT_OK}, {bad} did not ({cpus} vCPUs)"
        );
    }
    let q = median(console_ms.get("qemu").cloned().unwrap_or_default());
    let m = median(console_ms.get("microvm").cloned().unwrap_or_default());
    println!("boot-compare: median console time to {INIT_OK}: qemu {q:?} ms, microvm {m:?} ms ({} path, {kernel_kind})", out.path);
    if let Some(v) = median(vmm_log_ms) {
        println!("boot-compare: median Guest-boot-time logged by microvm: {v:.1} ms");
    }
    let missing: Vec<&str> = cmds
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !console_ms.contains_key(n))
        .collect();
    if !missing.is_empty() {
        bail!("no successful boot for: {}", missing.join(", "));
    }
    if let (Some(q), Some(m)) = (q, m) {
        println!("boot-compare: ratio microvm/qemu = {:.2}", m / q);
    }
    Ok(())
}

fn tail(s: &str) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(15)..].join("\n")
}
