//! Records a trace through a direct `Dma`, replays it with `bounce-replay` against two configs.

use std::sync::Arc;

use bounce::{Dma, DmaDirection, DmaSource, TraceRecorder};
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
