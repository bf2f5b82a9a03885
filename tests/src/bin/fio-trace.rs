//! Records a DMA trace (`--dma-trace`) of a guest running fio on virtio-blk with
//! `--restricted-dma`, through the harness (direct or nested path), and copies it out.
//!
//! usage: fio-trace OUT.jsonl [--runtime SECONDS] [--pool SIZE] [--bounce K=V,...] [--cpus N]
//!                  [--engine uring|sync]
//!
//! fio (Debian's, with its `ldd` libraries) is appended to the test initramfs
//! ([`microvm_tests::fio`], as for `blk-bench`); the guest script is
//! `resources/guest/tests/fio-trace.sh`. The guest runs, on a 128 MiB image, one after
//! the other: random 4 KiB reads and writes (60 % reads), libaio, iodepth 32, 2 jobs (one per
//! vCPU, so both virtio-blk queues carry requests); sequential 64 KiB reads; sequential 64 KiB
//! writes (libaio, iodepth 8, 1 job); `--direct=1` throughout, each job `--runtime` seconds.
//! The trace is written by microvm into a second disk image given as a regular file
//! (`Arg::disk_file`: on the nested path a copy in the outer machine's tmpfs, copied back into
//! the host image when microvm exits), then cut at its first NUL byte into OUT.
//! `--engine` is microvm's disk engine, passed as `--disk PATH,engine=E`: `uring` by default,
//! asked for explicitly so that a host without io_uring fails the run instead of falling back
//! to `sync` (one request at a time) unnoticed.
//! It prints fio's figures (emulated on the nested path: only the trace matters) and microvm's
//! bounce statistics of the run.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::{bounce_statistics, fio, kernel_artifacts, microvm_binary, Arg, Harness, Run};

const DONE: &str = "@@FIO-TRACE-DONE";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = real_main() {
        eprintln!("fio-trace: error: {e:#}");
        std::process::exit(1);
    }
}

struct Opts {
    out: PathBuf,
    runtime: u32,
    pool: String,
    bounce: Option<String>,
    cpus: u32,
    engine: String,
}

fn parse() -> Result<Opts> {
    let mut out = None;
    let mut o = Opts {
        out: PathBuf::new(),
        runtime: 8,
        pool: "64M".into(),
        bounce: None,
        cpus: 2,
        engine: "uring".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runtime" => o.runtime = val()?.parse().context("--runtime")?,
            "--pool" => o.pool = val()?,
            "--bounce" => o.bounce = Some(val()?),
            "--cpus" => o.cpus = val()?.parse().context("--cpus")?,
            "--engine" => match val()?.as_str() {
                e @ ("uring" | "sync") => o.engine = e.to_string(),
                e => bail!("--engine {e}: expected uring or sync"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: fio-trace OUT.jsonl [--runtime SECONDS] [--pool SIZE] \
                     [--bounce K=V,...] [--cpus N] [--engine uring|sync]"
                );
                std::process::exit(0);
            }
            _ if out.is_none() && !a.starts_with('-') => out = Some(PathBuf::from(a)),
            _ => bail!("unknown argument {a} (see --help)"),
        }
    }
    o.out = out.context("the output file is required (see --help)")?;
    Ok(o)
}

fn real_main() -> Result<()> {
    let o = parse()?;
    let h = Harness::detect()?;
    let k = kernel_artifacts()?;
    let initrd = fio::initramfs_with_fio(&k.initramfs)?;
    let microvm = microvm_binary()?;
    let pid = std::process::id();
    let img = std::env::temp_dir().join(format!("fio-trace-{pid}.img"));
    fs::File::create(&img)?.set_len(128 << 20)?;
    let trace_img = std::env::temp_dir().join(format!("fio-trace-{pid}.trace"));
    fs::File::create(&trace_img)?.set_len(128 << 20)?;

    let q = microvm_tests::sh_quote;
    let mut cmd = format!(
        "{} --kernel {} --initrd {} --memory 1024 --cpus {} --disk \"$1\",engine={} \
         --dma-trace \"$2\" --restricted-dma={} --cmdline {}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&initrd.to_string_lossy()),
        o.cpus,
        o.engine,
        o.pool,
        q(&format!(
            "console=ttyS0 reboot=k panic=1 microvm.test=fio-trace bench.runtime={}",
            o.runtime
        )),
    );
    if let Some(b) = &o.bounce {
        cmd.push_str(&format!(" --bounce {}", q(b)));
    }
    let script = format!("{cmd} 2>&1; echo \"status=$?\"");
    let run = Run {
        files_to_carry: vec![microvm.clone(), k.bzimage.clone(), initrd.clone()],
        disks: vec![img.clone(), trace_img.clone()],
        timeout: Duration::from_secs(300 + 3 * 4 * u64::from(o.runtime)),
        marks: vec![DONE.to_string()],
        echo: true,
        ..Run::shell(script, vec![Arg::disk_file(0), Arg::disk_file(1)])
    };
    eprintln!(
        "fio-trace: {} path, disk engine {}, fio {} s per job, --restricted-dma={} {}",
        h.path(),
        o.engine,
        o.runtime,
        o.pool,
        o.bounce.as_deref().unwrap_or("")
    );
    let out = h.run(&run);
    let _ = fs::remove_file(&img);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = fs::remove_file(&trace_img);
            return Err(e);
        }
    };
    let mut data = fs::read(&trace_img)?;
    let _ = fs::remove_file(&trace_img);
    if let Some(end) = data.iter().position(|&b| b == 0) {
        data.truncate(end);
    }
    let text = out.stdout.replace('\r', "");
    if !text.contains(DONE) || !text.contains("status=0") {
        bail!("the guest did not finish:\n{}", out.describe());
    }
    if data.is_empty() {
        bail!("the trace is empty:\n{}", out.describe());
    }
    fs::write(&o.out, &data).with_context(|| format!("{}", o.out.display()))?;
    println!(
        "fio-trace: {} bytes, {} lines -> {}",
        data.len(),
        data.iter().filter(|&&b| b == b'\n').count(),
        o.out.display()
    );
    for l in text.lines().filter(|l| l.contains("fio-trace-")) {
        println!("{}", l.trim());
    }
    match bounce_statistics(&text) {
        Some(s) => println!("bounce statistics of the run: {s}"),
        None => println!("no bounce statistics in the output"),
    }
    Ok(())
}
