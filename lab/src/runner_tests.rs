use super::*;
use crate::spec::Spec;

const SPEC: &str = r#"
name = "t"
runtime_s = 2
disk_size = "16M"
[matrix]
pool = ["off", "1M"]
convert = ["snp"]
[[workload]]
name = "rr"
rw = "randread"
bs = "4k"
engine = "psync"
"#;

/// A fio --minimal line with read figures in fields 7, 8, 16 and write in 48, 49, 57.
fn terse(read: [f64; 3], write: [f64; 3]) -> String {
    let mut f = vec!["0".to_string(); 130];
    f[0] = "3".into();
    f[2] = "lab".into();
    for (i, v) in [
        (7, read[0]),
        (8, read[1]),
        (16, read[2]),
        (48, write[0]),
        (49, write[1]),
        (57, write[2]),
    ] {
        f[i - 1] = v.to_string();
    }
    f.join(";")
}

fn metrics_line(seq: u64, maps: u64, last: bool) -> String {
    format!(
        "{{\"seq\":{seq},\"final\":{last},\"uptime_ms\":{},\"vmm\":{{\"rss_kib\":9000}},\
         \"vcpu_exits\":{{\"io_out\":5,\"mmio_write\":7}},\"devices\":[{{\"kind\":\"block\",\
         \"total\":{{\"chains\":{maps},\"errors\":1}}}}],\"bounce\":{{\"maps\":{maps},\
         \"slots_total\":512,\"slots_used\":3,\"slots_used_hiwater\":40,\
         \"failures\":{{\"no_space\":2,\"cap_reached\":1}},\"conversions\":{{\"io_path\":\
         {{\"to_shared\":{{\"ns\":10}},\"to_private\":{{\"ns\":5}}}},\"background\":\
         {{\"to_shared\":{{\"ns\":100}},\"to_private\":{{\"ns\":0}}}}}}}}}}",
        seq * 250
    )
}

fn batch_output() -> String {
    format!(
        "@@LAB-ENV kernel=6.1 cpus=2 fio=fio-3.33\n\
         @@LAB-CELL-BEGIN 0\r\nboot...\r\nlab-fio={}\r\nMICROVM-TEST-RESULT=PASS\r\n\
         @@LAB-STATUS 0\n@@LAB-METRICS-BEGIN\n{}\n{}\n@@LAB-METRICS-END\n@@LAB-CELL-END 0\n\
         @@LAB-CELL-BEGIN 1\nlab-fio=FAILED fio: io_u error on file /dev/vda: Input/output error\n\
         @@LAB-STATUS 0\n@@LAB-METRICS-BEGIN\n@@LAB-METRICS-END\n@@LAB-CELL-END 1\n\
         @@LAB-CELL-BEGIN 2\nboot... (cut off by a timeout)",
        terse([4000.0, 1000.0, 950.5], [0.0, 0.0, 0.0]),
        metrics_line(0, 10, false),
        metrics_line(1, 20, true)
    )
}

#[test]
fn a_batch_output_splits_into_cells() {
    let out = split_output(&batch_output());
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(out[&0].status, Some(0));
    assert_eq!(out[&0].metrics.lines().count(), 2);
    assert!(!out[&0].console.contains('\r'));
    assert_eq!(out[&1].metrics, "");
}

#[test]
fn rows_from_cell_outputs() {
    let spec = Spec::parse(SPEC, "s").unwrap();
    let cells = spec.cells();
    let out = split_output(&batch_output());
    let r = row(&spec, &cells[1], out.get(&0), "nested", "metrics/x.jsonl");
    assert_eq!(r.status, "ok", "{}", r.error);
    assert_eq!(
        (r.read_kib_s, r.read_iops, r.read_clat_us),
        (4000.0, 1000.0, 950.5)
    );
    assert_eq!(
        (r.pool.as_str(), r.pool_bytes, r.convert.as_str()),
        ("1M", 1 << 20, "snp")
    );
    assert_eq!(
        (r.bounce_maps, r.bounce_failures, r.slots_used_hiwater),
        (20, 3, 40)
    );
    assert_eq!((r.conv_io_path_ns, r.conv_background_ns), (15, 100));
    assert_eq!(
        (r.blk_requests, r.blk_errors, r.vcpu_exits, r.rss_kib),
        (20, 1, 12, 9000)
    );
    assert_eq!(
        (r.metrics_lines, r.metrics_file.as_str()),
        (2, "metrics/x.jsonl")
    );
    let r = row(&spec, &cells[1], out.get(&1), "nested", "m");
    assert_eq!(r.status, "failed");
    assert!(r.error.contains("Input/output error"), "{}", r.error);
    assert_eq!(r.metrics_file, "");
    let r = row(&spec, &cells[0], out.get(&2), "nested", "m");
    assert_eq!(r.status, "lost");
    assert!(r.error.contains("no output"));
    assert_eq!(r.pool_bytes, 0);
}

#[test]
fn the_batch_script_runs_each_cell_with_its_options() {
    let spec = Spec::parse(SPEC, "s").unwrap();
    let cells = spec.cells();
    let inputs = Inputs {
        microvm: "/b/microvm".into(),
        kernel: "/k/bzImage".into(),
        initrd: "/k/initrd".into(),
    };
    let batch: Vec<(usize, &Cell)> = cells.iter().enumerate().collect();
    let s = batch_script(&spec, &inputs, &batch);
    assert!(s.contains("echo '@@LAB-CELL-BEGIN 0'") && s.contains("echo '@@LAB-CELL-END 1'"));
    assert!(s.contains("'--restricted-dma=1M' '--bounce' 'growth=linux,exhaustion=transient,convert=snp,lookup=list'"), "{s}");
    assert!(s.contains("'/tmp/microvm-lab-metrics.jsonl,interval=250ms'"));
    assert!(s.contains(
        "lab.rw=randread lab.bs=4k lab.iodepth=1 lab.engine=psync lab.runtime=2 lab.size=16777216"
    ));
    assert_eq!(
        s.matches("--restricted-dma").count(),
        1,
        "the baseline does not bounce"
    );
    assert!(batch_timeout(&spec, 2) > Duration::from_secs(2 * 2));
    assert_eq!(
        metrics_name(3, &cells[1]),
        "metrics/0003-1M-transient-snp-linux-rr-rep0.jsonl.gz"
    );
}

#[test]
fn metrics_files_are_saved_gzipped_and_read_back() {
    let dir = std::env::temp_dir().join(format!("lab-metrics-{}", std::process::id()));
    let text = format!(
        "{}\n{}\n",
        metrics_line(0, 1, false),
        metrics_line(1, 2, true)
    );
    save_metrics(&dir, "metrics/a.jsonl.gz", &text).unwrap();
    let raw = std::fs::read(dir.join("metrics/a.jsonl.gz")).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b]);
    assert!(raw.len() < text.len());
    assert_eq!(read_metrics(&dir.join("metrics/a.jsonl.gz")).unwrap(), text);
    std::fs::write(dir.join("plain.jsonl"), &text).unwrap();
    assert_eq!(read_metrics(&dir.join("plain.jsonl")).unwrap(), text);
    save_metrics(&dir, "metrics/empty.jsonl.gz", "\n").unwrap();
    assert!(!dir.join("metrics/empty.jsonl.gz").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

const NET_SPEC: &str = r#"
name = "n"
[matrix]
pool = ["off", "1M"]
[[workload]]
name = "down"
kind = "net"
direction = "down"
size = "8M"
[[workload]]
name = "up"
kind = "net"
direction = "up"
size = "8M"
"#;

#[test]
fn net_cells_use_the_tap_and_report_throughput() {
    let spec = Spec::parse(NET_SPEC, "s").unwrap();
    let cells = spec.cells();
    assert_eq!(cells.len(), 4);
    let inputs = Inputs {
        microvm: "/b/microvm".into(),
        kernel: "/k/bzImage".into(),
        initrd: "/k/initrd".into(),
    };
    let batch: Vec<(usize, &Cell)> = cells.iter().enumerate().collect();
    let s = batch_script(&spec, &inputs, &batch);
    assert_eq!(s.matches("'--net' 'tap=mvlab0'").count(), 4, "{s}");
    assert!(s.contains("microvm.test=lab-net lab.dir=down lab.bytes=8388608"));
    assert!(s.contains("microvm.test=lab-net lab.dir=up lab.bytes=8388608"));
    let setup = net_setup(&batch).join("\n");
    assert!(setup.contains("busybox tunctl -t mvlab0"));
    // One file per download size, however many cells download it.
    assert_eq!(setup.matches("> /tmp/mvlab/down-8388608.bin").count(), 1);
    assert!(setup.contains("cgi-bin/sink") && setup.contains("busybox httpd"));
    assert!(net_setup(&batch[..0]).is_empty());
    assert!(net_allowance(&batch) >= Duration::from_secs(4 * 300));

    let out = split_output(
        "@@LAB-CELL-BEGIN 0\nlab-net=down 8388608 2.5\n@@LAB-STATUS 0\n@@LAB-CELL-END 0\n\
         @@LAB-CELL-BEGIN 1\nlab-net=up 8388608 4\n@@LAB-STATUS 0\n@@LAB-CELL-END 1\n\
         @@LAB-CELL-BEGIN 2\nlab-net=FAILED no reply from 10.0.3.1\n@@LAB-STATUS 0\n@@LAB-CELL-END 2\n",
    );
    let r = row(&spec, &cells[0], out.get(&0), "nested", "m");
    assert_eq!(r.status, "ok", "{}", r.error);
    assert_eq!(
        (r.rw.as_str(), r.bs.as_str(), r.engine.as_str()),
        ("net-down", "8M", "tap")
    );
    assert_eq!((r.read_kib_s, r.write_kib_s), (8192.0 / 2.5, 0.0));
    let r = row(&spec, &cells[1], out.get(&1), "nested", "m");
    assert_eq!((r.read_kib_s, r.write_kib_s), (0.0, 2048.0));
    let r = row(&spec, &cells[2], out.get(&2), "nested", "m");
    assert_eq!(r.status, "failed");
    assert!(r.error.contains("no reply"), "{}", r.error);
}
