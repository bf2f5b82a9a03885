//! Records a DMA trace (`--dma-trace`) of a guest running fio on virtio-blk with
//! `--restricted-dma`, through the harness (direct or nested path), and copies it out.
//!
//! usage: fio-trace OUT.jsonl [--runtime SECONDS] [--pool SIZE] [--bounce K=V,...] [--cpus N]
//!                  [--engine uring|sync]
//!
//! fio (Debian's, with its `ldd` libraries) and the guest script (`fio-trace.sh`, below) are
//! appended to the test initramfs as an uncompressed cpio, as `blk-bench` does (the same
//! code, copied: blk-bench is left as it is). The guest runs, on a 128 MiB image, one after
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
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::cpio::CpioWriter;
use microvm_tests::{
    artifacts::cache_dir, bounce_statistics, kernel_artifacts, microvm_binary, nested, Arg,
    Harness, Program, Run,
};

const FIO: &str = "/usr/bin/fio";
const DONE: &str = "@@FIO-TRACE-DONE";

/// The guest side: `fio-trace-JOB=READ_IOPS WRITE_IOPS` per job, from fio's terse output.
const SCRIPT: &str = r#"#!/bin/sh
# fio-trace (tests/src/bin/fio-trace.rs): fio on /dev/vda while microvm records a DMA trace.
RUNTIME=8
for word in $(cat /proc/cmdline); do case "$word" in bench.runtime=*) RUNTIME=${word#bench.runtime=} ;; esac; done
run() {
    name=$1; shift
    echo "fio-trace-start $name uptime=$(cut -d' ' -f1 /proc/uptime)"
    out=$(fio --name="$name" --filename=/dev/vda --size=64M --direct=1 --ioengine=libaio \
        --runtime="$RUNTIME" --time_based --group_reporting --minimal "$@" 2>/tmp/fio.err) \
        || { echo "fio-trace-$name=FAILED $(cat /tmp/fio.err)"; exit 1; }
    echo "fio-trace-$name=$(echo "$out" | awk -F';' '{print $8, $49}')"
}
run rand-4k --rw=randrw --rwmixread=60 --bs=4k --iodepth=32 --numjobs=2
run seq-read-64k --rw=read --bs=64k --iodepth=8
run seq-write-64k --rw=write --bs=64k --iodepth=8
echo "@@FIO-TRACE-DONE"
"#;

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

/// The test initramfs with fio, its libraries and the guest script appended (cached by the
/// inputs' sizes and times and the script).
fn trace_initrd(base: &Path) -> Result<PathBuf> {
    if !Path::new(FIO).is_file() {
        bail!("{FIO} missing: apt-get install fio");
    }
    let mut files = vec![PathBuf::from(FIO)];
    files.extend(nested::shared_libraries(Path::new(FIO))?);
    let mut key = format!("{}{SCRIPT}", base.display());
    for f in &files {
        let m = fs::metadata(f).with_context(|| format!("{}", f.display()))?;
        key.push_str(&format!(
            "{}:{}:{:?};",
            f.display(),
            m.len(),
            m.modified().ok()
        ));
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let out = cache_dir()?.join(format!("fio-trace-initrd-{:016x}.img", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = out.with_extension("tmp");
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    let base_bytes = fs::read(base)?;
    w.write_all(&base_bytes)?;
    // Linux reads an uncompressed cpio after a compressed one only at a 4-byte offset.
    w.write_all(&vec![0u8; (4 - base_bytes.len() % 4) % 4])?;
    let mut c = CpioWriter::new(w);
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let name = f.to_string_lossy().trim_start_matches('/').to_string();
        let mut d = Path::new(&name).parent();
        let mut chain = Vec::new();
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(p.to_string_lossy().to_string());
            d = p.parent();
        }
        for p in chain.into_iter().rev() {
            if dirs.insert(p.clone()) {
                c.dir(&p)?;
            }
        }
        let real = f.canonicalize()?;
        c.host_file(&name, &real)?;
    }
    c.file("tests/fio-trace.sh", 0o755, SCRIPT.as_bytes())?;
    c.finish()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    fs::rename(&tmp, &out)?;
    Ok(out)
}

fn real_main() -> Result<()> {
    let o = parse()?;
    let h = Harness::detect()?;
    let k = kernel_artifacts()?;
    let initrd = trace_initrd(&k.initramfs)?;
    let microvm = microvm_binary()?;
    let pid = std::process::id();
    let img = std::env::temp_dir().join(format!("fio-trace-{pid}.img"));
    fs::File::create(&img)?.set_len(128 << 20)?;
    let trace_img = std::env::temp_dir().join(format!("fio-trace-{pid}.trace"));
    fs::File::create(&trace_img)?.set_len(128 << 20)?;

    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
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
        program: Program::Host("/bin/sh".into()),
        args: vec![
            Arg::s("-c"),
            Arg::s(script),
            Arg::s("sh"),
            Arg::disk_file(0),
            Arg::disk_file(1),
        ],
        files_to_carry: vec![microvm.clone(), k.bzimage.clone(), initrd.clone()],
        disks: vec![img.clone(), trace_img.clone()],
        timeout: Duration::from_secs(300 + 3 * 4 * u64::from(o.runtime)),
        marks: vec![DONE.to_string()],
        echo: true,
        stdio: microvm_tests::StdioMode::Null,
        signal_at_mark: None,
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
