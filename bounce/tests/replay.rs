//! Records a trace through a direct `Dma`, replays it with `bounce-replay` against two configs.

use std::sync::Arc;

use bounce::{Dma, DmaDirection, DmaSource, TraceOp, TraceRecord, TraceRecorder};
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[test]
fn record_then_replay() {
    let dir = std::env::temp_dir().join(format!("bounce-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.jsonl");
    {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dma = Dma::direct(mem);
        dma.set_trace(Some(Arc::new(TraceRecorder::to_file(&path).unwrap())));
        let mut held = Vec::new();
        for i in 0..200u64 {
            let src = DmaSource {
                device: 1,
                queue: (i % 2) as u16,
            };
            let dir = if i % 3 == 0 {
                DmaDirection::ToDevice
            } else {
                DmaDirection::FromDevice
            };
            let mut b = dma
                .map(
                    src,
                    GuestAddress(i * 4096),
                    512 + (i as u32 % 8) * 1024,
                    dir,
                )
                .unwrap();
            if i % 5 == 1 {
                b.sync_for_cpu().unwrap();
            }
            held.push(b);
            if held.len() > 20 {
                held.remove(0).unmap().unwrap();
            }
        }
        drop(held);
        dma.set_trace(None);
    }
    for config in [
        "size=1M,lookup=list",
        "size=256K,areas=1,chunk=1M,lookup=tree",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bounce-replay"))
            .arg(&path)
            .args(["--config", config])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["records"], 440);
        assert_eq!(v["map_failures"], 0);
        assert_eq!(v["stats"]["maps"], 200);
        assert_eq!(v["stats"]["unmaps"], 200);
        assert_eq!(v["stats"]["syncs_for_cpu"], 40);
        assert_eq!(v["stats"]["slots_used"], 0);
    }
    // Maps that may block, throttled past 10 %: deferred, retried when woken, all mapped.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bounce-replay"))
        .arg(&path)
        .args(["--may-block", "--json", "--config"])
        .arg("size=256K,areas=1,exhaustion=throttle,throttle-high=10,throttle-low=5")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["deferred_maps"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        (&v["never_mapped"], &v["map_failures"]),
        (&0.into(), &0.into())
    );
    assert_eq!(v["stats"]["maps"], 200);
    assert_eq!(v["stats"]["unmaps"], 200);
    assert!(v["stats"]["blocking"]["throttle_blocked"].as_u64().unwrap() > 0);
    // A matrix: one table row per value.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bounce-replay"))
        .arg(&path)
        .args([
            "--config",
            "size=256K",
            "--vary",
            "exhaustion=fail|transient",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[1].starts_with("| fail |") && rows[2].starts_with("| transient |"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bounce-replay"))
        .arg(&path)
        .args(["--config", "nonsense=1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

fn replay(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bounce-replay"))
        .args(args)
        .output()
        .unwrap()
}

/// Writes a two-queue trace (version 2): queue 0 maps 4 KiB buffers with a `min_align_mask`
/// and partial syncs, queue 1 64 KiB ones; one map recorded as failed.
fn two_queue_trace(path: &std::path::Path) {
    let mut recs = Vec::new();
    let mut id = 0;
    for i in 0..100u64 {
        for q in 0..2u16 {
            id += 1;
            let len = if q == 0 { 4096 } else { 65536 };
            let base = TraceRecord {
                t_ns: i * 10_000,
                id,
                queue: q,
                thread: Some(1),
                addr: (i % 16) * 65536 + u64::from(q) * (1 << 20),
                len,
                dir: DmaDirection::FromDevice,
                min_align_mask: if q == 0 { 0xfff } else { 0 },
                ..Default::default()
            };
            recs.push(base.clone());
            if q == 0 {
                recs.push(TraceRecord {
                    op: TraceOp::SyncForCpu,
                    offset: Some(512),
                    sync_len: Some(1024),
                    ..base.clone()
                });
            }
            recs.push(TraceRecord {
                op: TraceOp::Unmap,
                t_ns: base.t_ns + 5_000,
                ..base
            });
        }
    }
    id += 1;
    recs.push(TraceRecord {
        t_ns: 1_000_000,
        id,
        len: 4096,
        dir: DmaDirection::ToDevice,
        error: Some("no_space".into()),
        ..Default::default()
    });
    bounce::write_trace(std::fs::File::create(path).unwrap(), &recs).unwrap();
}

#[test]
fn sweep_replays_every_cell_with_a_thread_per_queue() {
    let dir = std::env::temp_dir().join(format!("bounce-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("two.jsonl");
    two_queue_trace(&trace);
    let gz = dir.join("two.jsonl.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        e.write_all(&std::fs::read(&trace).unwrap()).unwrap();
        e.finish().unwrap();
    }
    let (csv, jsonl) = (dir.join("out.csv"), dir.join("out.jsonl"));
    let out = replay(&[
        gz.to_str().unwrap(),
        "--lanes",
        "queue",
        "--config",
        "areas=2",
        "--sweep",
        "size=256K,1M;exhaustion=fail,transient",
        "--repeat",
        "2",
        "--csv",
        csv.to_str().unwrap(),
        "--json-out",
        jsonl.to_str().unwrap(),
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---"))
        .collect();
    assert_eq!(rows.len(), 5, "{table}");
    assert!(
        rows[0].starts_with("| size | exhaustion | maps |"),
        "{table}"
    );
    assert!(rows[1].starts_with("| 256K | fail |") && rows[4].starts_with("| 1M | transient |"));
    // CSV: a header and a row per run (4 cells x 2), each as wide as the header.
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 9, "{csv}");
    let width = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == width));
    assert!(lines[1].starts_with("256K,fail,0,"));
    // JSON lines: per run, both queues on their own thread, latency histograms per operation.
    let runs: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 8);
    for v in &runs {
        assert_eq!(v["threads"], 2);
        assert!(v["cell"]["size"].as_str().is_some());
        // 200 maps replayed, plus the one recorded as failed (tried again: it maps now).
        assert_eq!(v["stats"]["maps"], 201, "{v}");
        assert_eq!(v["recorded_failed_maps"], 1);
        assert_eq!(v["latency_ns"]["map"]["count"], 201);
        assert_eq!(v["latency_ns"]["sync_for_cpu"]["count"], 100);
        let m = &v["latency_ns"]["map"];
        assert!(m["p50"].as_u64().unwrap() <= m["p99"].as_u64().unwrap());
        assert!(m["p99"].as_u64().unwrap() <= m["max"].as_u64().unwrap());
        // Partial syncs copy only their range.
        assert_eq!(v["stats"]["syncs_for_cpu"], 100);
        assert_eq!(
            v["stats"]["bytes_to_guest"],
            100 * (4096 + 1024) + 100 * 65536
        );
        assert_eq!(v["live_at_end"], 0);
        assert_eq!(v["skipped_records"], 0);
    }
    // One thread for everything, as before.
    let out = replay(&[trace.to_str().unwrap(), "--lanes", "one", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["threads"], 1);
    // By default a trace recorded by one thread replays on one (both queues, as recorded).
    let out = replay(&[trace.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["threads"], &v["lanes"]), (&1.into(), &"thread".into()));
    assert_eq!(v["recorded_threads"][0]["thread"], 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_sweep_specs_fail_before_anything_runs() {
    for (spec, want) in [
        ("size=1M,4Q", "sweep `size=4Q`"),
        ("sise=1M", "unknown swiotlb key `sise`"),
        ("size", "expected KEY=V1,V2"),
        ("size=1M;size=4M", "varied twice"),
    ] {
        // The trace does not exist: the spec is refused first.
        let out = replay(&["/nonexistent/trace.jsonl", "--sweep", spec]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{spec}: {err}");
    }
    let out = replay(&[
        "/nonexistent/trace.jsonl",
        "--vary",
        "size=1M",
        "--sweep",
        "size=4M",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("varied twice"));
}

/// The Linux tracepoint sample, converted by `bounce-trace-linux` and replayed.
#[test]
fn linux_tracepoints_convert_and_replay() {
    let dir = std::env::temp_dir().join(format!("bounce-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("linux.jsonl");
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/traces/linux-dma-sample.report"
    );
    let conv = std::process::Command::new(env!("CARGO_BIN_EXE_bounce-trace-linux"))
        .args([sample, "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    assert!(String::from_utf8_lossy(&conv.stderr).contains("14 records: 6 maps (1 failed)"));
    let o = replay(&[out.to_str().unwrap(), "--config", "size=1M", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"], 14);
    assert_eq!(v["recorded_failed_maps"], 1);
    // 6 maps, and the one that failed in the guest tried again (it maps here).
    assert_eq!(v["stats"]["maps"], 7);
    assert_eq!(v["stats"]["unmaps"], 7);
    assert_eq!(v["stats"]["syncs_for_cpu"], 1);
    assert_eq!(
        (&v["skipped_records"], &v["live_at_end"]),
        (&0.into(), &0.into())
    );
    // Two devices' CPU 0 and CPU 1: three queues, three threads.
    assert_eq!(v["threads"], 3);
    std::fs::remove_dir_all(&dir).ok();
}

/// An unmap recorded on another queue (a Linux trace's CPU) goes to its map's thread.
#[test]
fn unmaps_follow_their_map_across_queues() {
    let dir = std::env::temp_dir().join(format!("bounce-xq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xq.jsonl");
    let mut recs = Vec::new();
    for id in 1..=50u64 {
        let map = TraceRecord {
            id,
            queue: (id % 2) as u16,
            addr: id * 4096,
            len: 4096,
            dir: DmaDirection::ToDevice,
            ..Default::default()
        };
        recs.push(map.clone());
        recs.push(TraceRecord {
            op: TraceOp::Unmap,
            queue: 1 - map.queue,
            ..map
        });
    }
    bounce::write_trace(std::fs::File::create(&path).unwrap(), &recs).unwrap();
    let out = replay(&[path.to_str().unwrap(), "--config", "size=1M", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["threads"], 2);
    assert_eq!(
        (&v["skipped_records"], &v["live_at_end"]),
        (&0.into(), &0.into())
    );
    assert_eq!(v["stats"]["unmaps"], 50);
    std::fs::remove_dir_all(&dir).ok();
}
