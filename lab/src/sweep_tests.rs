use super::*;
use crate::report;

const SPEC: &str = r#"
name = "fake"
runtime_s = 2
disk_size = "16M"
batch = 3
[matrix]
pool = ["off", "256K", "1M"]
exhaustion = ["fail", "transient"]
convert = ["snp"]
[[workload]]
name = "rr"
rw = "randread"
bs = "4k"
engine = "psync"
[[workload]]
name = "seq"
rw = "read"
bs = "1m"
engine = "psync"
"#;

/// Answers every batch as the guests would, with figures that depend only on the cell: a
/// deterministic stand-in for the harness.
struct Fake {
    batches: usize,
}

fn terse(kib_s: f64, iops: f64, clat: f64) -> String {
    let mut f = vec!["0".to_string(); 130];
    f[0] = "3".into();
    f[6] = kib_s.to_string();
    f[7] = iops.to_string();
    f[15] = clat.to_string();
    f.join(";")
}

impl Backend for Fake {
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    fn path(&self) -> (String, String) {
        ("direct".into(), "fake backend".into())
    }

    fn run_batch(&mut self, _spec: &Spec, batch: &[(usize, &Cell)]) -> Result<String> {
        self.batches += 1;
        let mut s = String::from("@@LAB-ENV kernel fake, 2 CPUs\n");
        for (i, c) in batch {
            let pool_kib = crate::spec::parse_size(&c.config.pool).unwrap_or(0) >> 10;
            let kib_s = 1000.0
                + pool_kib as f64
                + if c.workload.name == "seq" {
                    5000.0
                } else {
                    0.0
                };
            let m: Vec<String> = (0..3)
                .map(|k| {
                    format!(
                        "{{\"seq\":{k},\"final\":{},\"uptime_ms\":{},\"bounce\":{{\"maps\":{},\
                         \"slot_bytes\":2048,\"slots_used\":{},\"slots_used_hiwater\":{}}}}}",
                        k == 2,
                        k * 500,
                        100 * (k + 1),
                        k * (pool_kib / 64),
                        2 * (pool_kib / 64)
                    )
                })
                .collect();
            s.push_str(&format!(
                "@@LAB-CELL-BEGIN {i}\nlab-fio={}\n@@LAB-STATUS 0\n@@LAB-METRICS-BEGIN\n{}\n\
                 @@LAB-METRICS-END\n@@LAB-CELL-END {i}\n",
                terse(kib_s, kib_s / 4.0, 250.0),
                m.join("\n")
            ));
        }
        Ok(s)
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lab-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet(out: &Path, cells: Vec<usize>) -> Options {
    Options {
        out: Some(out.to_path_buf()),
        cells,
        quiet: true,
        ..Options::default()
    }
}

/// The rows as a report compares them: without the time they were written or where the
/// metrics file lies.
fn normalized(dirs: &[PathBuf]) -> Vec<results::Row> {
    let (rows, _) = report::load_merged(dirs).unwrap();
    let mut v: Vec<results::Row> = results::latest(&rows).into_values().collect();
    for r in &mut v {
        r.unix_time = 0;
        r.metrics_file = Path::new(&r.metrics_file)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    v
}

/// report.md from its first plot on (the environment differs: wall times, jobs).
fn body(md: &Path) -> String {
    let t = std::fs::read_to_string(md).unwrap();
    t[t.find("## Throughput").unwrap()..].to_string()
}

#[test]
fn cells_run_as_separate_jobs_merge_into_the_same_report_as_one_run() {
    let root = tmp("merge");
    let spec_path = root.join("spec.toml");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(&spec_path, SPEC).unwrap();
    let spec = Spec::load(&spec_path).unwrap();
    let n = spec.cells().len();
    assert_eq!(n, 10);
    let chosen = [2usize, 7];

    // One run of both cells.
    let both = root.join("both");
    let mut fake = Fake { batches: 0 };
    sweep(&spec_path, quiet(&both, chosen.to_vec()), &mut fake).unwrap();
    assert_eq!(fake.batches, 1);
    assert_eq!(results::load(&both).unwrap().len(), 2);

    // Each cell as its own job, in its own directory, as --emit's scripts run them.
    let jobs = root.join("jobs");
    for i in chosen {
        let mut fake = Fake { batches: 0 };
        let dir = jobs.join(crate::emit::cell_dir(i));
        sweep(&spec_path, quiet(&dir, vec![i]), &mut fake).unwrap();
        assert_eq!(fake.batches, 1);
        assert_eq!(results::load(&dir).unwrap().len(), 1);
    }

    let merged = normalized(&[jobs.join("cells")]);
    assert_eq!(merged.len(), 2);
    assert_eq!(merged, normalized(std::slice::from_ref(&both)));
    let ids: Vec<String> = chosen.iter().map(|&i| spec.cells()[i].id()).collect();
    assert!(merged.iter().all(|r| ids.contains(&r.cell_id) && r.ok()));

    // The reports: the same plots and table.
    let r1 = root.join("report-one");
    let r2 = root.join("report-merged");
    let md1 = report::report(&[both], &r1, &[]).unwrap();
    let md2 = report::report(&[jobs.join("cells")], &r2, &[]).unwrap();
    assert_eq!(body(&md1), body(&md2));
    let merged_md = std::fs::read_to_string(&md2).unwrap();
    assert!(
        merged_md.contains("sum over 2 results directories"),
        "{merged_md}"
    );
    let mut svgs = 0;
    for e in std::fs::read_dir(&r1).unwrap() {
        let name = e.unwrap().file_name();
        if name.to_string_lossy().ends_with(".svg") {
            svgs += 1;
            assert_eq!(
                std::fs::read(r1.join(&name)).unwrap(),
                std::fs::read(r2.join(&name)).unwrap(),
                "{name:?}"
            );
        }
    }
    assert!(svgs >= 3, "{svgs} plots");
    // Listing the job directories one by one merges the same way.
    let dirs: Vec<PathBuf> = chosen
        .iter()
        .map(|&i| jobs.join(crate::emit::cell_dir(i)))
        .collect();
    assert_eq!(normalized(&dirs), merged);

    // A job run again finds its cell done and runs nothing.
    let mut fake = Fake { batches: 0 };
    sweep(&spec_path, quiet(&dirs[0], vec![2]), &mut fake).unwrap();
    assert_eq!(fake.batches, 0);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_cell_out_of_range_is_an_error_before_anything_runs() {
    let root = tmp("range");
    std::fs::create_dir_all(&root).unwrap();
    let spec_path = root.join("spec.toml");
    std::fs::write(&spec_path, SPEC).unwrap();
    let mut fake = Fake { batches: 0 };
    let e = sweep(&spec_path, quiet(&root.join("o"), vec![10]), &mut fake)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--cell 10") && e.contains("0..=9"), "{e}");
    assert_eq!(fake.batches, 0);
    std::fs::remove_dir_all(&root).unwrap();
}
