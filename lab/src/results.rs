//! Results: one row per cell, appended to `results.jsonl` and `results.csv` as each cell ends,
//! and read back to resume a sweep or make a report.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const JSONL: &str = "results.jsonl";
pub const CSV: &str = "results.csv";

#[derive(Debug, Error)]
pub enum ResultsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Json {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Csv { path: String, source: csv::Error },
}

/// One cell's outcome. Flat, so that the CSV has the same columns as the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub cell_id: String,
    pub sweep: String,
    pub rep: u32,
    /// `ok`; `failed`: the cell ran but fio or microvm failed (a result: e.g. the pool
    /// configuration cannot serve the I/O); `lost`: no output for it (a timeout or a harness
    /// failure ended its batch first). See `error`.
    pub status: String,
    pub error: String,
    /// `direct` or `nested`.
    pub path: String,
    pub pool: String,
    pub pool_bytes: u64,
    pub growth: String,
    pub exhaustion: String,
    pub convert: String,
    pub lookup: String,
    pub areas: u32,
    pub cpus: u8,
    pub guest_swiotlb: bool,
    pub workload: String,
    pub rw: String,
    pub bs: String,
    pub iodepth: u32,
    pub engine: String,
    pub runtime_s: u32,
    pub read_kib_s: f64,
    pub read_iops: f64,
    pub read_clat_us: f64,
    pub write_kib_s: f64,
    pub write_iops: f64,
    pub write_clat_us: f64,
    /// microvm's exit status.
    pub microvm_status: i32,
    /// From the last metrics line.
    pub metrics_lines: u64,
    pub bounce_maps: u64,
    pub bounce_failures: u64,
    /// The failures by kind, `kind=n` joined by spaces (e.g. `atomic_pool_exhausted=1`).
    pub bounce_failure_kinds: String,
    pub slots_total: u64,
    pub slots_used_hiwater: u64,
    pub transient_created: u64,
    pub extensions: u64,
    pub lock_wait_ns: u64,
    /// Modeled conversion time by payer (ns).
    pub conv_io_path_ns: u64,
    pub conv_background_ns: u64,
    pub conv_startup_ns: u64,
    pub blk_requests: u64,
    pub blk_errors: u64,
    pub vcpu_exits: u64,
    pub rss_kib: u64,
    /// The cell's metrics file, relative to the results directory.
    pub metrics_file: String,
    pub unix_time: u64,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// Total throughput (read + write), KiB/s.
    pub fn kib_s(&self) -> f64 {
        self.read_kib_s + self.write_kib_s
    }

    pub fn iops(&self) -> f64 {
        self.read_iops + self.write_iops
    }
}

/// Appends rows to both files, creating them (the CSV with its header) when new.
pub struct Writer {
    dir: PathBuf,
    jsonl: File,
    csv: csv::Writer<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Cuts a last line that an interruption left without its newline.
fn drop_partial_line(path: &Path) -> Result<(), ResultsError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if data.is_empty() || data.ends_with(b"\n") {
        return Ok(());
    }
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    log::warn!(
        "{}: dropping an unfinished last line ({} bytes) from an interrupted run",
        path.display(),
        data.len() - keep
    );
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(keep as u64).map_err(io(path))?;
    Ok(())
}

impl Writer {
    pub fn open(dir: &Path) -> Result<Writer, ResultsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let jp = dir.join(JSONL);
        drop_partial_line(&jp)?;
        drop_partial_line(&dir.join(CSV))?;
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jp)
            .map_err(io(&jp))?;
        let cp = dir.join(CSV);
        let new = std::fs::metadata(&cp).map(|m| m.len() == 0).unwrap_or(true);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cp)
            .map_err(io(&cp))?;
        let csv = csv::WriterBuilder::new().has_headers(new).from_writer(f);
        Ok(Writer {
            dir: dir.to_path_buf(),
            jsonl,
            csv,
        })
    }

    /// Appends `row` and flushes both files (a sweep killed after this keeps the row).
    pub fn append(&mut self, row: &Row) -> Result<(), ResultsError> {
        let jp = self.dir.join(JSONL);
        let mut line = serde_json::to_string(row).map_err(|source| ResultsError::Json {
            path: jp.display().to_string(),
            line: 0,
            source,
        })?;
        line.push('\n');
        self.jsonl.write_all(line.as_bytes()).map_err(io(&jp))?;
        self.jsonl.flush().map_err(io(&jp))?;
        let cp = self.dir.join(CSV);
        let csv_err = |source| ResultsError::Csv {
            path: cp.display().to_string(),
            source,
        };
        self.csv.serialize(row).map_err(csv_err)?;
        self.csv.flush().map_err(io(&cp))?;
        Ok(())
    }
}

/// Every row of `dir/results.jsonl` in file order (none if the file does not exist). A last
/// line cut short by an interruption is skipped with a warning.
pub fn load(dir: &Path) -> Result<Vec<Row>, ResultsError> {
    let p = dir.join(JSONL);
    let f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&p)(e)),
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io(&p))?;
    let mut rows = Vec::new();
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(l) {
            Ok(r) => rows.push(r),
            Err(e) if i + 1 == n => {
                log::warn!("{} line {}: cut short ({e}); ignored", p.display(), i + 1)
            }
            Err(source) => {
                return Err(ResultsError::Json {
                    path: p.display().to_string(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(rows)
}

/// The latest row of each cell (a failed cell re-run on resume is recorded again).
pub fn latest(rows: &[Row]) -> BTreeMap<String, Row> {
    let mut m = BTreeMap::new();
    for r in rows {
        m.insert(r.cell_id.clone(), r.clone());
    }
    m
}

/// Cells already done: their latest row is `ok` or `failed` (the cell ran), or only `ok` with
/// `retry_failed`. `lost` cells (no output) always run again.
pub fn done(rows: &[Row], retry_failed: bool) -> std::collections::BTreeSet<String> {
    latest(rows)
        .into_iter()
        .filter(|(_, r)| r.ok() || (r.status == "failed" && !retry_failed))
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lab-results-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn row(id: &str, status: &str) -> Row {
        Row {
            cell_id: id.into(),
            status: status.into(),
            pool: "1M".into(),
            read_iops: 12.5,
            workload: "w, with a comma".into(),
            ..Row::default()
        }
    }

    #[test]
    fn rows_round_trip_through_jsonl_and_csv() {
        let d = tmp("rt");
        let mut w = Writer::open(&d).unwrap();
        w.append(&row("a", "ok")).unwrap();
        drop(w);
        // Reopening appends without a second header.
        let mut w = Writer::open(&d).unwrap();
        w.append(&row("b", "failed")).unwrap();
        let rows = load(&d).unwrap();
        assert_eq!(rows, vec![row("a", "ok"), row("b", "failed")]);
        let mut r = csv::Reader::from_path(d.join(CSV)).unwrap();
        let back: Vec<Row> = r.deserialize().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, rows);
        let text = std::fs::read_to_string(d.join(CSV)).unwrap();
        assert_eq!(text.matches("cell_id").count(), 1, "{text}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resume_skips_cells_that_ran_and_reruns_lost_ones() {
        let d = tmp("resume");
        let mut w = Writer::open(&d).unwrap();
        w.append(&row("a", "ok")).unwrap();
        w.append(&row("b", "failed")).unwrap();
        w.append(&row("c", "lost")).unwrap();
        w.append(&row("c", "ok")).unwrap();
        w.append(&row("e", "lost")).unwrap();
        drop(w);
        // An interrupted write leaves half a line at the end.
        let mut f = OpenOptions::new().append(true).open(d.join(JSONL)).unwrap();
        f.write_all(b"{\"cell_id\":\"d\",\"sta").unwrap();
        let rows = load(&d).unwrap();
        assert_eq!(rows.len(), 5);
        let all = done(&rows, false);
        assert!(all.contains("a") && all.contains("b") && all.contains("c") && !all.contains("e"));
        let retry = done(&rows, true);
        assert!(retry.contains("a") && !retry.contains("b") && retry.contains("c"));
        assert_eq!(latest(&rows)["c"].status, "ok");
        assert!(load(&tmp("none")).unwrap().is_empty());
        // Resuming cuts the half line before appending.
        let mut w = Writer::open(&d).unwrap();
        w.append(&row("d", "ok")).unwrap();
        let rows = load(&d).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[5].cell_id, "d");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error() {
        let d = tmp("bad");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(JSONL), "garbage\n{}\n").unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
