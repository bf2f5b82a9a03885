use super::*;
use crate::results::Writer;

fn fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let mut w = Writer::open(dir).unwrap();
    let mut n = 0;
    for (pool, bytes) in [
        ("off", 0u64),
        ("256K", 256 << 10),
        ("1M", 1 << 20),
        ("4M", 4 << 20),
    ] {
        for exhaustion in ["fail", "transient"] {
            if bytes == 0 && exhaustion == "transient" {
                continue;
            }
            for workload in ["rr4k", "seq1m"] {
                n += 1;
                let failed = pool == "256K" && exhaustion == "fail" && workload == "seq1m";
                let metrics_file = format!("metrics/{n}.jsonl");
                if bytes > 0 {
                    let p = dir.join(&metrics_file);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    let lines: Vec<String> = (0..5)
                        .map(|i| {
                            format!(
                                "{{\"seq\":{i},\"uptime_ms\":{},\"bounce\":{{\"slot_bytes\":2048,\"slots_used\":{}}}}}",
                                i * 250,
                                i * 10 * (bytes >> 18)
                            )
                        })
                        .collect();
                    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
                }
                w.append(&Row {
                    cell_id: format!("{pool}|{exhaustion}|{workload}"),
                    sweep: "fixture".into(),
                    status: if failed { "failed" } else { "ok" }.into(),
                    error: if failed {
                        "fio failed: Input/output error".into()
                    } else {
                        String::new()
                    },
                    pool: pool.into(),
                    pool_bytes: bytes,
                    growth: "linux".into(),
                    exhaustion: exhaustion.into(),
                    convert: "snp".into(),
                    lookup: "list".into(),
                    cpus: 1,
                    workload: workload.into(),
                    read_kib_s: if failed {
                        0.0
                    } else {
                        1000.0 + bytes as f64 / 1024.0
                    },
                    read_iops: 250.0,
                    read_clat_us: 900.0,
                    metrics_lines: if bytes > 0 { 5 } else { 0 },
                    metrics_file: if bytes > 0 {
                        metrics_file
                    } else {
                        String::new()
                    },
                    conv_background_ns: bytes * 10,
                    conv_startup_ns: bytes * 20,
                    bounce_maps: 100,
                    ..Row::default()
                })
                .unwrap();
            }
        }
    }
    let env = Environment {
        path: "nested".into(),
        host_cpu: "Test CPU".into(),
        wall_s: 42.0,
        cells_run: n,
        ..Environment::default()
    };
    std::fs::write(dir.join(ENV_FILE), serde_json::to_vec(&env).unwrap()).unwrap();
}

#[test]
fn a_report_from_a_fixture_has_every_plot_and_the_table() {
    let dir = std::env::temp_dir().join(format!("lab-report-{}", std::process::id()));
    fixture(&dir);
    let md_path = report(std::slice::from_ref(&dir), &dir, &[]).unwrap();
    let md = std::fs::read_to_string(&md_path).unwrap();
    for f in [
        "throughput-rr4k.svg",
        "throughput-seq1m.svg",
        "conversions.svg",
        "occupancy-rr4k.svg",
        "occupancy-seq1m.svg",
    ] {
        assert!(md.contains(&format!("]({f})")), "{f} not embedded:\n{md}");
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
        assert!(svg.contains("</svg>"), "{f}");
    }
    let t = std::fs::read_to_string(dir.join("throughput-rr4k.svg")).unwrap();
    assert!(
        t.contains("exhaustion=fail") && t.contains("no bouncing"),
        "legend"
    );
    let o = std::fs::read_to_string(dir.join("occupancy-rr4k.svg")).unwrap();
    assert!(o.contains("slots in use (KiB"));
    assert!(md.contains("| path | nested"));
    assert!(md.contains("Test CPU"));
    assert!(md.contains("42 s for 14 cells"), "{md}");
    assert!(md.contains("14 cells (13 ok, 1 failed)"), "{md}");
    assert!(md.contains("Input/output error"));
    assert_eq!(md.matches("| linux | ").count(), 14);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_results_directory_is_an_error() {
    let dir = std::env::temp_dir().join(format!("lab-report-empty-{}", std::process::id()));
    let e = report(std::slice::from_ref(&dir), &dir, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no results"), "{e}");
}

#[test]
fn size_ticks() {
    assert_eq!(size_label(8.0), "256K");
    assert_eq!(size_label(10.0), "1M");
    assert_eq!(size_label(12.0), "4M");
    assert_eq!(size_label(20.0), "1G");
    assert_eq!(size_label(10.5), "");
}

#[test]
fn a_report_with_replays_embeds_their_cdfs() {
    let dir = std::env::temp_dir().join(format!("lab-report-cdf-{}", std::process::id()));
    fixture(&dir);
    let replay = dir.join("replay.jsonl");
    std::fs::write(
        &replay,
        "{\"config_given\":\"size=1M\",\"cell\":{},\"latency_ns\":{\"map\":{\"count\":10,\
         \"quantiles\":[[0.0,80],[0.5,100],[0.99,900],[1.0,5000]]},\"unmap\":{\"count\":10,\
         \"quantiles\":[[0.0,50],[0.5,60],[0.99,300],[1.0,2000]]}}}\n",
    )
    .unwrap();
    let md = report(std::slice::from_ref(&dir), &dir, &[replay]).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("## Map latency in replays"), "{md}");
    for f in ["cdf-map.svg", "cdf-unmap.svg"] {
        assert!(md.contains(&format!("]({f})")), "{f} not embedded:\n{md}");
        assert!(dir.join(f).exists());
    }
    assert!(!dir.join("cdf-sync_for_cpu.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
