//! The virtio-blk rate limiter in a real guest, under microvm's seccomp filter: 8 MiB of
//! O_DIRECT reads from a disk limited to `bw=2M,bw-burst=512K` cannot take less than
//! (8 MiB - 512 KiB) / 2 MiB/s = 3.75 s (a loaded machine can only make it slower, so this
//! bound cannot flake), and every read completes (a throttled request waits, it never fails).
//! The same reads from an unlimited disk in the same guest are printed beside it, to show the
//! limiter, not the machine, set the pace.

use std::fs;
use std::time::Duration;

use microvm_tests::{kernel_artifacts, Arg, Harness, Run};

const IMAGE_SIZE: u64 = 16 << 20;
const READ: f64 = (8 << 20) as f64;
const RATE: f64 = (2 << 20) as f64;
const BURST: f64 = (512 << 10) as f64;

#[test]
fn a_bandwidth_limited_disk_reads_no_faster_than_its_limit() {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let dir = std::env::temp_dir();
    let imgs: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.join(format!("microvm-ratelimit-{}-{i}.img", std::process::id()));
            let f = fs::File::create(&p).expect("image");
            f.set_len(IMAGE_SIZE).expect("image size");
            p
        })
        .collect();
    let mut args = k.boot_args("console=ttyS0 reboot=k panic=1 microvm.test=ratelimit");
    args.push(Arg::s("--disk"));
    args.push(Arg::DiskFile {
        index: 0,
        suffix: ",bw=2M,bw-burst=512K".into(),
    });
    args.push(Arg::s("--disk"));
    args.push(Arg::disk_file(1));
    let mut run = Run::microvm(args);
    run.disks = imgs.clone();
    run.timeout = Duration::from_secs(150);
    let o = h
        .run(&run)
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    for p in &imgs {
        let _ = fs::remove_file(p);
    }
    assert!(
        o.stdout.contains("MICROVM-TEST-RESULT=PASS"),
        "{}",
        o.describe()
    );
    assert_eq!(o.status, Some(0), "{}", o.describe());
    assert!(
        !o.stderr.contains("forbidden system call"),
        "{}",
        o.describe()
    );
    let ms = |key: &str| -> f64 {
        o.value(key)
            .unwrap_or_else(|| panic!("no {key}\n{}", o.describe()))
            .trim()
            .parse()
            .expect("milliseconds")
    };
    let (limited, free) = (ms("rl-vda-ms"), ms("rl-vdb-ms"));
    let floor = (READ - BURST) / RATE * 1000.0;
    eprintln!(
        "ratelimit ({} path): 8 MiB at bw=2M,bw-burst=512K in {limited} ms ({:.0} KiB/s; \
         the limit allows at most {:.0} KiB/s over this read, floor {floor:.0} ms); \
         unlimited: {free} ms ({:.0} KiB/s)",
        o.path,
        READ / 1024.0 / (limited / 1000.0),
        READ / 1024.0 / (floor / 1000.0),
        READ / 1024.0 / (free.max(1.0) / 1000.0),
    );
    // /proc/uptime has 10 ms steps.
    assert!(limited + 10.0 >= floor, "{limited} ms < {floor} ms");
}
