//! `microvm --metrics PATH,interval=...` on a real guest (direct or nested path): the file gets
//! a JSON line per interval and one at exit, every counter in it only grows, and the device,
//! vCPU and bounce sections are filled in. The guest boots with a disk and
//! `--restricted-dma`, so the block device and the pools see traffic (the partition scan).

use std::time::Duration;

use microvm_tests::{kernel_artifacts, microvm_binary, Arg, Harness, Run};
use serde_json::Value;

const BEGIN: &str = "@@METRICS-BEGIN";
const END: &str = "@@METRICS-END";

/// Dotted paths of counters that must never go down from one line to the next.
const MONOTONIC: &[&str] = &[
    "seq",
    "uptime_ms",
    "vcpu_exits.io_in",
    "vcpu_exits.io_out",
    "vcpu_exits.mmio_read",
    "vcpu_exits.mmio_write",
    "vcpu_exits.hlt",
    "devices.0.total.notifications",
    "devices.0.total.chains",
    "devices.0.total.bytes_from_driver",
    "devices.0.total.bytes_to_driver",
    "devices.0.total.errors",
    "bounce.maps",
    "bounce.unmaps",
    "bounce.bytes_to_pool",
    "bounce.bytes_to_guest",
    "bounce.slots_used_hiwater",
    "bounce.pools_created",
    "bounce.transient_created",
    "bounce.lock_wait_ns",
    "bounce.failures.no_space",
    "bounce.conversions.modeled_ns",
    "bounce.conversions.startup.to_shared.pages",
];

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

#[test]
fn metrics_file_gets_monotonic_lines_over_a_guest_boot() {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let microvm = microvm_binary().expect("microvm binary");
    let img = std::env::temp_dir().join(format!("microvm-metrics-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let out = format!("/tmp/microvm-metrics-{}.jsonl", std::process::id());
    let q = microvm_tests::sh_quote;
    let script = format!(
        "rm -f {out}; {} --kernel {} --initrd {} --cpus 2 --disk \"$1\" --restricted-dma=1M \
         --bounce convert=snp --metrics {out},interval=100ms --cmdline {} 2>&1; \
         echo \"status=$?\"; echo {BEGIN}; cat {out}; echo {END}; rm -f {out}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&k.initramfs.to_string_lossy()),
        q("console=ttyS0 reboot=k panic=1 microvm.test=boot"),
    );
    let run = Run {
        files_to_carry: vec![microvm, k.bzimage.clone(), k.initramfs.clone()],
        disks: vec![img.clone()],
        timeout: Duration::from_secs(180),
        ..Run::shell(script, vec![Arg::disk_file(0)])
    };
    let o = h.run(&run);
    let _ = std::fs::remove_file(&img);
    let o = o.expect("harness run");
    let text = o.stdout.replace('\r', "");
    assert!(text.contains("status=0"), "{}", o.describe());
    assert!(
        text.contains("MICROVM-TEST-RESULT=PASS"),
        "{}",
        o.describe()
    );
    let body = text
        .split_once(BEGIN)
        .and_then(|(_, r)| r.split_once(END))
        .map(|(b, _)| b)
        .unwrap_or_else(|| panic!("no metrics in the output:\n{}", o.describe()));
    let lines: Vec<Value> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    eprintln!(
        "{} metrics lines ({} path); last: {}",
        lines.len(),
        h.path(),
        lines.last().map(|l| l.to_string()).unwrap_or_default()
    );
    assert!(lines.len() >= 2, "{} lines:\n{body}", lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"].as_u64(), Some(i as u64), "line {i}");
        assert_eq!(l["final"].as_bool(), Some(i == lines.len() - 1), "line {i}");
        assert_eq!(l["interval_ms"].as_u64(), Some(100));
        assert_eq!(l["vcpus"].as_array().map(Vec::len), Some(2));
        assert!(l["vmm"]["rss_kib"].as_u64().unwrap_or(0) > 0, "line {i}");
    }
    for w in lines.windows(2) {
        for p in MONOTONIC {
            let (a, b) = (get(&w[0], p), get(&w[1], p));
            let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) else {
                panic!("{p} missing or not a number: {a} / {b}");
            };
            assert!(b >= a, "{p} went down: {a} -> {b} (seq {})", w[1]["seq"]);
        }
    }
    let last = lines.last().unwrap();
    assert_eq!(last["devices"][0]["kind"], "block");
    assert!(get(last, "devices.0.total.chains").as_u64().unwrap() > 0);
    assert!(
        get(last, "devices.0.total.bytes_to_driver")
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(get(last, "vcpu_exits.mmio_write").as_u64().unwrap() > 0);
    assert!(get(last, "bounce.maps").as_u64().unwrap() > 0);
    assert!(get(last, "bounce.pools")
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    assert!(
        get(last, "bounce.conversions.startup.to_shared.pages")
            .as_u64()
            .unwrap()
            > 0
    );
}

/// `--metrics-socket` under the default seccomp filters: curl (carried into the outer machine on
/// the nested path) scrapes the socket every 300 ms while a guest boots and powers off.
#[test]
fn metrics_socket_serves_prometheus_text_during_a_guest_boot() {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let microvm = microvm_binary().expect("microvm binary");
    let curl = std::path::PathBuf::from("/usr/bin/curl");
    assert!(
        curl.is_file(),
        "this test needs curl (apt-get install curl)"
    );
    let img = std::env::temp_dir().join(format!("microvm-metrics-sock-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let sock = format!("/tmp/microvm-metrics-{}.sock", std::process::id());
    let q = microvm_tests::sh_quote;
    let script = format!(
        "{} --kernel {} --initrd {} --disk \"$1\" --restricted-dma=1M --metrics-socket {sock} \
         --cmdline {} >/tmp/mvm.out 2>&1 & pid=$!; n=0; \
         while kill -0 $pid 2>/dev/null; do \
           if [ -S {sock} ] && \"$2\" -s --http0.9 --unix-socket {sock} http://x/ >/tmp/scrape.new; \
           then n=$((n+1)); mv /tmp/scrape.new /tmp/scrape.last; fi; sleep 0.3; \
         done; wait $pid; echo \"status=$?\"; cat /tmp/mvm.out; echo \"scrapes=$n\"; \
         echo {BEGIN}; cat /tmp/scrape.last; echo {END}; rm -f {sock}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&k.initramfs.to_string_lossy()),
        q("console=ttyS0 reboot=k panic=1 microvm.test=boot"),
    );
    let run = Run {
        files_to_carry: vec![microvm, k.bzimage.clone(), k.initramfs.clone()],
        disks: vec![img.clone()],
        timeout: Duration::from_secs(180),
        ..Run::shell(script, vec![Arg::disk_file(0), Arg::file(&curl)])
    };
    let o = h.run(&run);
    let _ = std::fs::remove_file(&img);
    let o = o.expect("harness run");
    let text = o.stdout.replace('\r', "");
    assert!(text.contains("status=0"), "{}", o.describe());
    let scrapes: u32 = o
        .value("scrapes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(scrapes >= 1, "no scrape succeeded:\n{}", o.describe());
    let body = text
        .split_once(BEGIN)
        .and_then(|(_, r)| r.split_once(END))
        .map(|(b, _)| b)
        .unwrap_or("");
    eprintln!(
        "{scrapes} scrapes ({} path); the last has {} lines",
        h.path(),
        body.lines().count()
    );
    for want in [
        "microvm_uptime_ms ",
        "microvm_vcpu_exits_io_out ",
        "microvm_vcpus_mmio_write{vcpus=\"0\"} ",
        "microvm_devices_total_chains{devices=\"0\",kind=\"block\"} ",
        "microvm_bounce_slots_total 512",
        "microvm_bounce_pools_slots_used{pools=\"0\",kind=\"initial\"} ",
    ] {
        assert!(
            body.contains(want),
            "{want:?} missing in the scrape:\n{body}"
        );
    }
    assert!(
        !text.contains("socket-left"),
        "the socket was not removed at exit"
    );
}
