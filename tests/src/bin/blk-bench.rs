//! virtio-blk throughput with `--restricted-dma` off vs on, both in ONE harness run (the
//! same outer machine on the nested path), with fio inside the guest.
//!
//! usage: blk-bench [--runtime SECONDS] [--pool SIZE] [--bounce K=V,...] [--cpus N]
//!                  [--iodepth N] [--engine uring|sync]
//!
//! fio (Debian's `fio`, dynamically linked against ~60 libraries, ~85 MB) is not in the
//! test initramfs: this program appends an uncompressed cpio with fio and its `ldd`
//! libraries to it (Linux unpacks concatenated archives) and runs
//! `resources/guest/tests/blk-bench.sh`: sequential 64 KiB and random 4 KiB reads and
//! writes, `--direct=1 --ioengine=psync` (`--iodepth N` > 1: libaio at that depth), one job
//! each, on a 128 MiB image (`--engine`: microvm's disk engine). Then it prints
//! MB/s and IOPS side by side with the ratio, and where the bounce time goes (statistics).

use std::fs;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use microvm_tests::fio::initramfs_with_fio;
use microvm_tests::{bounce_statistics, kernel_artifacts, microvm_binary, Arg, Harness, Run};

const JOBS: &[&str] = &["seq-read", "seq-write", "rand-read", "rand-write"];
const RUN_MARK: &str = "@@BLK-BENCH-RUN ";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = real_main() {
        eprintln!("blk-bench: error: {e:#}");
        std::process::exit(1);
    }
}

struct Opts {
    runtime: u32,
    pool: String,
    bounce: Option<String>,
    cpus: u32,
    iodepth: u32,
    engine: Option<String>,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        runtime: 4,
        pool: "64M".into(),
        bounce: None,
        cpus: 1,
        iodepth: 1,
        engine: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runtime" => o.runtime = val()?.parse().context("--runtime")?,
            "--pool" => o.pool = val()?,
            "--bounce" => o.bounce = Some(val()?),
            "--cpus" => o.cpus = val()?.parse().context("--cpus")?,
            "--iodepth" => o.iodepth = val()?.parse().context("--iodepth")?,
            "--engine" => o.engine = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "usage: blk-bench [--runtime SECONDS] [--pool SIZE] [--bounce K=V,...] \
                     [--cpus N] [--iodepth N] [--engine uring|sync]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a} (see --help)"),
        }
    }
    Ok(o)
}

/// One job's figures: read KiB/s, read IOPS, write KiB/s, write IOPS.
fn job_figures(text: &str, job: &str) -> Option<[f64; 4]> {
    let key = format!("bench-{job}=");
    let line = text
        .lines()
        .find_map(|l| l.find(&key).map(|i| &l[i + key.len()..]))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
}

fn real_main() -> Result<()> {
    let o = parse()?;
    let h = Harness::detect()?;
    let k = kernel_artifacts()?;
    let initrd = initramfs_with_fio(&k.initramfs)?;
    let microvm = microvm_binary()?;
    let img = std::env::temp_dir().join(format!("blk-bench-{}.img", std::process::id()));
    fs::File::create(&img)?.set_len(128 << 20)?;

    let q = microvm_tests::sh_quote;
    let base = format!(
        "{} --kernel {} --initrd {} --memory 1024 --cpus {} --disk \"$1\"{} --cmdline {}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&initrd.to_string_lossy()),
        o.cpus,
        o.engine
            .as_ref()
            .map(|e| format!(",engine={e}"))
            .unwrap_or_default(),
        q(&format!(
            "console=ttyS0 reboot=k panic=1 microvm.test=blk-bench bench.runtime={} \
             bench.iodepth={}",
            o.runtime, o.iodepth
        )),
    );
    let mut on = format!("--restricted-dma={}", o.pool);
    if let Some(b) = &o.bounce {
        on.push_str(&format!(" --bounce {}", q(b)));
    }
    let script = format!(
        "echo '{RUN_MARK}off'; {base} 2>&1; echo \"status=$?\"; \
         echo '{RUN_MARK}on'; {base} {on} 2>&1; echo \"status=$?\""
    );
    let run = Run {
        files_to_carry: vec![microvm.clone(), k.bzimage.clone(), initrd.clone()],
        disks: vec![img.clone()],
        timeout: Duration::from_secs(120 + 2 * 4 * u64::from(o.runtime) * 3),
        ..Run::shell(script, vec![Arg::disk_file(0)])
    };
    eprintln!(
        "blk-bench: {} path, fio {} s per job, pool {} {}",
        h.path(),
        o.runtime,
        o.pool,
        o.bounce.as_deref().unwrap_or("")
    );
    let out = h.run(&run);
    let _ = fs::remove_file(&img);
    let out = out?;
    let text = out.stdout.replace('\r', "");
    let (off, on_text) = match (
        text.find(&format!("{RUN_MARK}off")),
        text.find(&format!("{RUN_MARK}on")),
    ) {
        (Some(a), Some(b)) if a < b => (&text[a..b], &text[b..]),
        _ => bail!("runs missing in the output:\n{}", out.describe()),
    };
    let mut table = Vec::new();
    for job in JOBS {
        let (Some(a), Some(b)) = (job_figures(off, job), job_figures(on_text, job)) else {
            bail!(
                "fio figures for {job} missing.\n--- off ---\n{}\n--- on ---\n{}",
                tail(off, 30),
                tail(on_text, 30)
            );
        };
        table.push((job, a, b));
    }
    let engine = if o.iodepth > 1 {
        format!("libaio --iodepth={}", o.iodepth)
    } else {
        "psync".to_string()
    };
    println!(
        "virtio-blk, fio --direct=1 --ioengine={engine}, 1 job, {} s each, 128 MiB image, disk \
         engine {} ({} path{})",
        o.runtime,
        o.engine.as_deref().unwrap_or("default"),
        h.path(),
        if h.path() == microvm_tests::PathKind::Nested {
            ": KVM inside a QEMU TCG machine, absolute figures are emulated; compare ratios only"
        } else {
            ""
        }
    );
    println!(
        "restricted-dma on: --restricted-dma={}{}",
        o.pool,
        o.bounce
            .as_ref()
            .map(|b| format!(" --bounce {b}"))
            .unwrap_or_default()
    );
    println!(
        "{:<11} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
        "job", "MB/s off", "MB/s on", "on/off", "IOPS off", "IOPS on", "on/off"
    );
    for (job, a, b) in &table {
        let (i, j) = if job.ends_with("read") {
            (0, 1)
        } else {
            (2, 3)
        };
        let mb = |kib: f64| kib * 1024.0 / 1e6;
        println!(
            "{:<11} {:>10.2} {:>10.2} {:>7.3} {:>10.0} {:>10.0} {:>7.3}",
            job,
            mb(a[i]),
            mb(b[i]),
            ratio(b[i], a[i]),
            a[j],
            b[j],
            ratio(b[j], a[j])
        );
    }
    match bounce_statistics(on_text) {
        Some(s) => {
            let g = |k: &str| s[k].as_u64().unwrap_or(0);
            let maps = g("maps").max(1);
            println!("bounce statistics of the 'on' run (all four jobs plus boot):");
            println!(
                "  copied guest->pool {:.1} MiB, pool->guest {:.1} MiB ({:.0} B/map)",
                g("bytes_to_pool") as f64 / 1048576.0,
                g("bytes_to_guest") as f64 / 1048576.0,
                (g("bytes_to_pool") + g("bytes_to_guest")) as f64 / maps as f64
            );
            println!(
                "  maps {} unmaps {}; lookups {} steps {} ({:.2}/lookup)",
                g("maps"),
                g("unmaps"),
                g("lookups"),
                g("lookup_steps"),
                g("lookup_steps") as f64 / g("lookups").max(1) as f64
            );
            println!(
                "  lock wait {:.3} ms ({} contended); extensions {}, transient pools {}, pools {}",
                g("lock_wait_ns") as f64 / 1e6,
                g("lock_contended"),
                g("extensions"),
                g("transient_created"),
                g("pools_created")
            );
            println!("  conversions {}", s["conversions"]);
            println!("  failures {}", s["failures"]);
        }
        None => println!("no bounce statistics in the 'on' run output"),
    }
    for (what, t) in [("off", off), ("on", on_text)] {
        if !t.contains("status=0") {
            println!(
                "warning: microvm '{what}' run did not exit 0:\n{}",
                tail(t, 10)
            );
        }
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}
