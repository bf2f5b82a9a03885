//! Boot a guest under microvm the same way the tests do (direct or nested path,
//! chosen by the harness probe), stream its console, exit with microvm's status.
//!
//! usage: guest-run [MICROVM ARGS]...
//! Without `--kernel`, the resources/ kernel (bzImage) and initramfs are built if needed
//! and used. File arguments of `--kernel`, `--initrd` and `--disk` are carried into the
//! outer machine on the nested path (disks become /dev/vdX there).
//! When stdin is a terminal, it becomes the guest's console on either path (a shell with
//! `microvm.exit=shell` is usable; on the nested path QEMU's escape key Ctrl-A is in between:
//! Ctrl-A x ends everything, Ctrl-A Ctrl-A sends one Ctrl-A).
//! Environment: MICROVM_TEST_PATH=direct|nested, GUEST_RUN_TIMEOUT=SECONDS (default 300, or
//! 3600 for an interactive console).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use microvm_tests::{kernel_artifacts, Arg, Harness, Run, StdioMode};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("guest-run: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> Result<i32> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let interactive = std::io::stdin().is_terminal();
    let timeout = match std::env::var("GUEST_RUN_TIMEOUT") {
        Ok(v) => Duration::from_secs(
            v.parse()
                .context("GUEST_RUN_TIMEOUT: not a number of seconds")?,
        ),
        Err(_) if interactive => Duration::from_secs(3600),
        Err(_) => Duration::from_secs(300),
    };
    let mut args = Vec::new();
    let mut disks = Vec::new();
    let mut has_kernel = false;
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        match flag.as_str() {
            "--kernel" | "--initrd" | "--disk" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().with_context(|| format!("{flag} needs a value"))?,
                };
                args.push(Arg::s(flag.clone()));
                if flag == "--disk" {
                    let (path, opts) = match value.split_once(',') {
                        Some((p, o)) => (p.to_string(), format!(",{o}")),
                        None => (value.clone(), String::new()),
                    };
                    disks.push(PathBuf::from(path));
                    args.push(Arg::Disk {
                        index: disks.len() - 1,
                        suffix: opts,
                    });
                } else {
                    has_kernel |= flag == "--kernel";
                    args.push(Arg::file(value));
                }
            }
            _ => args.push(Arg::Str(a)),
        }
    }
    if !has_kernel {
        let k = kernel_artifacts()?;
        eprintln!(
            "guest-run: no --kernel given: using {} and {}",
            k.bzimage.display(),
            k.initramfs.display()
        );
        args.splice(
            0..0,
            [
                Arg::s("--kernel"),
                Arg::File(k.bzimage),
                Arg::s("--initrd"),
                Arg::File(k.initramfs),
            ],
        );
    }
    let harness = Harness::detect()?;
    println!("guest-run: path={} ({})", harness.path(), harness.reason());
    let mut run = Run::microvm(args);
    run.disks = disks;
    run.timeout = timeout;
    run.echo = true;
    if interactive {
        run.stdio = StdioMode::Console;
        if harness.path() == microvm_tests::PathKind::Nested {
            println!(
                "guest-run: starting the outer machine; this terminal is the guest's console \
                 once microvm runs (Ctrl-A x ends everything, Ctrl-A Ctrl-A sends Ctrl-A)"
            );
        }
    }
    let out = harness.run(&run)?;
    if !out.stderr.is_empty() {
        eprint!("{}", out.stderr);
    }
    if let Some(outer) = &out.outer {
        eprintln!(
            "guest-run: outer machine booted in {:?}, total {:?}, {} heartbeats; its CPU: {}",
            outer.boot,
            outer.total,
            outer.heartbeats,
            outer.cpu.as_deref().unwrap_or("(not reported)")
        );
    }
    if let Some(t) = out.marks.get(microvm_tests::INIT_OK) {
        eprintln!("guest-run: {} after {:?}", microvm_tests::INIT_OK, t);
    }
    eprintln!(
        "guest-run: microvm ended: status={:?} signal={:?} timed_out={} after {:?}",
        out.status, out.signal, out.timed_out, out.elapsed
    );
    Ok(match (out.status, out.timed_out) {
        (Some(code), false) => code,
        _ => 124,
    })
}
