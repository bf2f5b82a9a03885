//! Soak, on demand (not in CI: `#[ignore]`, ~11 minutes of the nested machine):
//!
//! ```sh
//! cargo nextest run -p microvm-tests --test soak --run-ignored only --no-capture
//! ```
//!
//! A guest (`resources/guest/tests/soak.sh`) runs block, net and rng I/O at once for
//! `SOAK_SECS` (600) seconds under `--restricted-dma`; where microvm runs, a background job
//! sends it SIGUSR1 every second (statistics) and samples its RSS (`VmRSS`) and open fd
//! count from /proc every [`SAMPLE_EVERY`] seconds. Asserted: no failed request, microvm exits
//! 0, every SIGUSR1 got its statistics line, its open fds do not grow, and its resident
//! memory beyond guest RAM (the Rss of its mappings smaller than guest RAM, from
//! /proc/PID/smaps) grows by at most [`OVERHEAD_GROWTH_KIB`] from the first sample after
//! [`WARMUP_SECS`] to the last. RSS itself includes guest RAM as the guest touches it, so it is reported
//! (start, max, end), not held flat.

use std::time::Duration;

use microvm_tests::{kernel_artifacts, Arg, Harness, Run};

const SAMPLE_EVERY: u32 = 5;
/// Guest RAM (`--memory 256`), in KiB: mappings at least this large are guest RAM (or merged
/// with it) and left out of the "beyond guest RAM" sum.
const GUEST_KIB: u64 = 256 << 10;
const WARMUP_SECS: u64 = 60;
/// Samples from this time on show set-up finished (every fd opened).
const SETTLE_SECS: u64 = 10;
/// Growth allowed of the resident memory beyond guest RAM after the warm-up (KiB).
const OVERHEAD_GROWTH_KIB: u64 = 4096;

fn setup_lines() -> Vec<String> {
    let sampler = format!(
        "(p=; while [ -z \"$p\" ]; do p=$(pidof microvm); sleep 0.05; done; \
         while ! ls -l /proc/$p/fd 2>/dev/null | grep -q signalfd; do sleep 0.05; done; \
         t=0; while kill -0 $p 2>/dev/null; do \
           if [ $((t % {SAMPLE_EVERY})) -eq 0 ]; then \
             echo \"SOAK-SAMPLE t=$t rss_kib=$(awk '/^VmRSS/{{print $2}}' /proc/$p/status) \
             nonguest_kib=$(awk '/^Size:/{{big=($2>={GUEST_KIB})}} /^Rss:/{{if(!big)s+=$2}} END{{print s+0}}' /proc/$p/smaps) fds=$(ls /proc/$p/fd | wc -l)\"; \
           fi; kill -USR1 $p 2>/dev/null; sleep 1; t=$((t + 1)); done) &"
    );
    [
        "busybox ip link del mvtap0 2>/dev/null; true",
        "busybox tunctl -t mvtap0 >/dev/null",
        "busybox ip addr add 10.0.2.1/24 dev mvtap0",
        "busybox ip link set mvtap0 up",
        "rm -rf /tmp/mvsoak && mkdir -p /tmp/mvsoak",
        "head -c 1048576 /dev/urandom > /tmp/mvsoak/small.bin",
        "sha256sum /tmp/mvsoak/small.bin | cut -d' ' -f1 > /tmp/mvsoak/small.sha256",
        "busybox httpd -f -p 10.0.2.1:8080 -h /tmp/mvsoak &",
        "sleep 0.5",
        &sampler,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: u64,
    rss_kib: u64,
    nonguest_kib: u64,
    fds: u64,
}

fn parse_samples(text: &str) -> Vec<Sample> {
    let field = |l: &str, k: &str| -> Option<u64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    text.lines()
        .filter(|l| l.contains("SOAK-SAMPLE"))
        .filter_map(|l| {
            Some(Sample {
                t: field(l, "t=")?,
                rss_kib: field(l, "rss_kib=")?,
                nonguest_kib: field(l, "nonguest_kib=")?,
                fds: field(l, "fds=")?,
            })
        })
        .collect()
}

fn start_max_end(v: &[u64]) -> (u64, u64, u64) {
    (
        v.first().copied().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

#[test]
#[ignore = "on demand: holds the nested machine ~11 minutes (tests/README.md, Soak)"]
fn ten_minutes_of_block_net_and_rng_io_with_statistics_every_second() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let image = std::env::temp_dir().join(format!("microvm-soak-{}.img", std::process::id()));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .expect("create image");
    let mut args = k.boot_args(format!(
        "console=ttyS0 reboot=k panic=1 microvm.test=soak soak.secs={secs}"
    ));
    args.extend(
        [
            "--cpus",
            "2",
            "--memory",
            "256",
            "--rng",
            "--net",
            "tap=mvtap0",
            "--restricted-dma=16M",
            "--disk",
        ]
        .map(Arg::s),
    );
    args.push(Arg::disk_file(0));
    let mut run = Run::microvm(args);
    run.disks = vec![image.clone()];
    run.timeout = Duration::from_secs(secs + 240);
    let o = h
        .run_with_setup(&run, &setup_lines())
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    let _ = std::fs::remove_file(&image);
    let d = o.describe();
    for l in o.stdout.lines().filter(|l| l.contains("SOAK-")) {
        eprintln!("{}", l.trim_end_matches('\r'));
    }
    let samples = parse_samples(&o.setup_output);
    for s in &samples {
        eprintln!(
            "soak sample: t={}s rss={} KiB beyond-guest-ram={} KiB fds={}",
            s.t, s.rss_kib, s.nonguest_kib, s.fds
        );
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
    let over: Vec<u64> = samples.iter().map(|s| s.nonguest_kib).collect();
    let reports = o.stderr.matches("bounce statistics:").count();
    eprintln!(
        "soak: path={} {:.0}s, status {:?}, {} samples, RSS KiB start/max/end {:?}, fds start/max/end {:?}, \
         statistics reports {reports}, RSS beyond guest RAM KiB start/max/end {:?}",
        o.path,
        o.elapsed.as_secs_f64(),
        o.status,
        samples.len(),
        start_max_end(&rss),
        start_max_end(&fds),
        start_max_end(&over),
    );
    assert!(!o.stderr.contains("panicked at"), "microvm panicked\n{d}");
    assert_eq!(o.value("SOAK-FAILURES").as_deref(), Some("0"), "{d}");
    assert_eq!(
        o.value("MICROVM-TEST-RESULT").as_deref(),
        Some("PASS"),
        "{d}"
    );
    assert_eq!(o.status, Some(0), "{d}");
    let want_samples = (secs / u64::from(SAMPLE_EVERY)) as usize / 2;
    assert!(
        samples.len() >= want_samples,
        "{} samples, want at least {want_samples}\n{}",
        samples.len(),
        o.setup_output
    );
    // Set-up opens fds after the signalfd the sampler waits for: compare from SETTLE_SECS.
    let settled: Vec<u64> = samples
        .iter()
        .filter(|s| s.t >= SETTLE_SECS)
        .map(|s| s.fds)
        .collect();
    let (fd_min, fd_max) = (
        settled.iter().copied().min().unwrap_or(0),
        settled.iter().copied().max().unwrap_or(0),
    );
    assert!(fd_max <= fd_min + 2, "open fds grew: {fds:?}");
    // One SIGUSR1 a second, each answered with a statistics line (the one at exit as well).
    assert!(
        reports as u64 >= secs / 2,
        "{reports} statistics reports in {secs} s"
    );
    let warm = samples
        .iter()
        .find(|s| s.t >= WARMUP_SECS)
        .or(samples.last())
        .map_or(0, |s| s.nonguest_kib);
    let end = *over.last().unwrap_or(&0);
    assert!(
        end <= warm + OVERHEAD_GROWTH_KIB,
        "memory beyond guest RAM grew from {warm} KiB (after {WARMUP_SECS} s) to {end} KiB"
    );
}
