//! Runs the cells of a sweep through the test harness, several per harness run (on the nested
//! path one outer machine boots `batch` guests one after the other), and turns each cell's
//! share of the output into a [`Row`].
//!
//! A batch is one shell script run where microvm runs (the host, or the outer machine): for
//! each cell it runs microvm with the cell's options, `--metrics` to a scratch file and the
//! fio workload on the kernel command line, then prints the exit status and the metrics file
//! between markers. Results arrive when the batch's harness run ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::results::Row;
use crate::spec::{parse_size, Cell, Spec};

const CELL_BEGIN: &str = "@@LAB-CELL-BEGIN ";
const CELL_END: &str = "@@LAB-CELL-END ";
const STATUS: &str = "@@LAB-STATUS ";
const METRICS_BEGIN: &str = "@@LAB-METRICS-BEGIN";
const METRICS_END: &str = "@@LAB-METRICS-END";
pub const ENV_MARK: &str = "@@LAB-ENV ";
/// Where a cell's metrics go while it runs (in the outer machine on the nested path).
const SCRATCH: &str = "/tmp/microvm-lab-metrics.jsonl";

/// What a batch script needs from the host.
pub struct Inputs {
    pub microvm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The tap of net workloads, and its two ends' addresses (`lab-net.sh` has the guest's).
pub const TAP: &str = "mvlab0";
const TAP_HOST: &str = "10.0.3.1";

/// The kernel command line of a cell: the test init runs `lab-fio.sh` (or `lab-net.sh`) with
/// its parameters.
pub fn cmdline(spec: &Spec, cell: &Cell) -> String {
    let w = &cell.workload;
    if w.is_net() {
        return format!(
            "console=ttyS0 reboot=k panic=1 microvm.test=lab-net lab.dir={} lab.bytes={}",
            w.direction,
            w.net_bytes()
        );
    }
    format!(
        "console=ttyS0 reboot=k panic=1 microvm.test=lab-fio lab.rw={} lab.bs={} \
         lab.iodepth={} lab.engine={} lab.runtime={} lab.size={}",
        w.rw,
        w.bs,
        w.iodepth,
        w.engine,
        spec.runtime_s,
        spec.disk_bytes()
    )
}

/// The script of one batch; `$1` is the disk image.
pub fn batch_script(spec: &Spec, inputs: &Inputs, cells: &[(usize, &Cell)]) -> String {
    let mut s = format!("echo \"{ENV_MARK}kernel $(uname -r), $(nproc) CPUs\"\n");
    for (i, cell) in cells {
        let mut args = vec![
            "--kernel".to_string(),
            inputs.kernel.display().to_string(),
            "--initrd".into(),
            inputs.initrd.display().to_string(),
            "--memory".into(),
            spec.memory_mib.to_string(),
        ];
        args.extend(cell.config.microvm_args(&spec.matrix.bounce_extra));
        if cell.workload.is_net() {
            args.push("--net".into());
            args.push(format!("tap={TAP}"));
        }
        args.push("--metrics".into());
        args.push(format!("{SCRATCH},interval={}", spec.metrics_interval));
        args.push("--cmdline".into());
        args.push(cmdline(spec, cell));
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        s.push_str(&format!(
            "echo '{CELL_BEGIN}{i}'\nrm -f {SCRATCH}\n{} {} --disk \"$1\" 2>&1\n\
             echo \"{STATUS}$?\"\necho '{METRICS_BEGIN}'\ncat {SCRATCH} 2>/dev/null\n\
             echo '{METRICS_END}'\necho '{CELL_END}{i}'\n",
            quote(&inputs.microvm.display().to_string()),
            args.join(" ")
        ));
    }
    s
}

/// Time a batch may take: a boot allowance per cell beside fio's runtime.
pub fn batch_timeout(spec: &Spec, cells: usize) -> Duration {
    Duration::from_secs(60 + cells as u64 * (90 + 2 * u64::from(spec.runtime_s)))
}

/// More time for the net cells of a batch (`lab-net.sh` bounds its transfer at 300 s).
pub fn net_allowance(cells: &[(usize, &Cell)]) -> Duration {
    Duration::from_secs(330 * cells.iter().filter(|c| c.1.workload.is_net()).count() as u64)
}

/// Shell lines run where microvm runs before a batch with net cells: the tap at
/// 10.0.3.1/24, busybox httpd on it serving `/down-<bytes>.bin` for each download size and
/// `/cgi-bin/sink` (counts and discards a POST body); nothing for a batch without.
pub fn net_setup(cells: &[(usize, &Cell)]) -> Vec<String> {
    let mut sizes: Vec<u64> = cells
        .iter()
        .filter(|c| c.1.workload.is_net() && c.1.workload.direction == "down")
        .map(|c| c.1.workload.net_bytes())
        .collect();
    if !cells.iter().any(|c| c.1.workload.is_net()) {
        return Vec::new();
    }
    sizes.sort_unstable();
    sizes.dedup();
    let mut v: Vec<String> = vec![
        format!("busybox ip link del {TAP} 2>/dev/null; true"),
        format!("busybox tunctl -t {TAP} >/dev/null"),
        format!("busybox ip addr add {TAP_HOST}/24 dev {TAP}"),
        format!("busybox ip link set {TAP} up"),
        "rm -rf /tmp/mvlab && mkdir -p /tmp/mvlab/cgi-bin".into(),
    ];
    for n in sizes {
        v.push(format!("head -c {n} /dev/zero > /tmp/mvlab/down-{n}.bin"));
    }
    v.push(
        r#"cat > /tmp/mvlab/cgi-bin/sink <<'CGI'
#!/bin/sh
n=$(head -c "${CONTENT_LENGTH:-0}" | wc -c)
echo 'Content-type: text/plain'
echo
echo "sink-bytes=$n"
CGI"#
            .into(),
    );
    v.push("chmod +x /tmp/mvlab/cgi-bin/sink".into());
    v.push(format!(
        "busybox httpd -f -p {TAP_HOST}:8080 -h /tmp/mvlab &"
    ));
    v.push("sleep 0.5".into());
    v
}

/// One cell's share of a batch's output.
#[derive(Debug, Default, PartialEq)]
pub struct CellOutput {
    /// microvm's output and the guest console.
    pub console: String,
    pub status: Option<i32>,
    pub metrics: String,
}

/// Splits a batch's output by cell index; a cell cut off (a timeout) has no entry.
pub fn split_output(text: &str) -> std::collections::BTreeMap<usize, CellOutput> {
    let text = text.replace('\r', "");
    let mut out = std::collections::BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(b) = rest.find(CELL_BEGIN) {
        let after = &rest[b + CELL_BEGIN.len()..];
        let Some((idx, body)) = after.split_once('\n') else {
            break;
        };
        let Ok(i) = idx.trim().parse::<usize>() else {
            rest = body;
            continue;
        };
        let end = format!("{CELL_END}{i}");
        let Some(e) = body.find(&end) else {
            break;
        };
        let section = &body[..e];
        rest = &body[e + end.len()..];
        let (before, metrics) = match section.split_once(METRICS_BEGIN) {
            Some((a, m)) => (a, m.split_once(METRICS_END).map_or(m, |(m, _)| m)),
            None => (section, ""),
        };
        let status = before
            .lines()
            .find_map(|l| l.find(STATUS).map(|i| &l[i + STATUS.len()..]))
            .and_then(|v| v.trim().parse().ok());
        out.insert(
            i,
            CellOutput {
                console: before.to_string(),
                status,
                metrics: metrics.trim_start_matches('\n').to_string(),
            },
        );
    }
    out
}

/// fio's terse (v3) figures: read KiB/s, IOPS, mean completion latency (us), then write.
fn fio_figures(console: &str) -> Result<[f64; 6], String> {
    let line = console
        .lines()
        .find_map(|l| l.find("lab-fio=").map(|i| &l[i + 8..]))
        .ok_or("no fio result in the guest output")?;
    if let Some(e) = line.strip_prefix("FAILED") {
        return Err(format!("fio failed:{e}"));
    }
    let f: Vec<&str> = line.trim().split(';').collect();
    let num = |i: usize| -> Result<f64, String> {
        f.get(i - 1)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("fio terse field {i} missing in {line:?}"))
    };
    Ok([num(7)?, num(8)?, num(16)?, num(48)?, num(49)?, num(57)?])
}

/// `lab-net=<dir> <bytes> <seconds>`: bytes moved and seconds taken.
fn net_figures(console: &str) -> Result<(u64, f64), String> {
    let line = console
        .lines()
        .find_map(|l| l.find("lab-net=").map(|i| &l[i + 8..]))
        .ok_or("no transfer result in the guest output")?;
    if let Some(e) = line.strip_prefix("FAILED") {
        return Err(format!("transfer failed:{e}"));
    }
    let f: Vec<&str> = line.split_whitespace().collect();
    let bytes: u64 = f
        .get(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad lab-net line {line:?}"))?;
    let secs: f64 = f
        .get(2)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad lab-net line {line:?}"))?;
    // /proc/uptime has 10 ms steps: a transfer inside one step has no figure.
    if secs < 0.01 {
        return Err(format!(
            "transfer of {bytes} bytes took under 10 ms (the guest clock's resolution): use a larger size"
        ));
    }
    Ok((bytes, secs))
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.').fold(v, |v, k| &v[k]).as_u64().unwrap_or(0)
}

fn conv_ns(b: &Value, payer: &str) -> u64 {
    u(b, &format!("conversions.{payer}.to_shared.ns"))
        + u(b, &format!("conversions.{payer}.to_private.ns"))
}

/// The row of a cell from its output (`None`: the cell never ran to its end marker).
pub fn row(
    spec: &Spec,
    cell: &Cell,
    out: Option<&CellOutput>,
    path: &str,
    metrics_file: &str,
) -> Row {
    let c = &cell.config;
    let w = &cell.workload;
    let mut r = Row {
        cell_id: cell.id(),
        sweep: spec.name.clone(),
        rep: cell.rep,
        path: path.into(),
        pool: c.pool.clone(),
        pool_bytes: if c.bounced() {
            parse_size(&c.pool).unwrap_or(0)
        } else {
            0
        },
        growth: c.growth.clone(),
        exhaustion: c.exhaustion.clone(),
        convert: c.convert.clone(),
        lookup: c.lookup.clone(),
        areas: c.areas,
        cpus: c.cpus,
        guest_swiotlb: c.guest_swiotlb,
        workload: w.name.clone(),
        rw: w.rw.clone(),
        bs: w.bs.clone(),
        iodepth: w.iodepth,
        engine: w.engine.clone(),
        runtime_s: spec.runtime_s,
        microvm_status: -1,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Row::default()
    };
    let Some(out) = out else {
        r.status = "lost".into();
        r.error = "no output: the batch ended before this cell (timeout or harness failure)".into();
        return r;
    };
    r.microvm_status = out.status.unwrap_or(-1);
    let lines: Vec<Value> = out
        .metrics
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    r.metrics_lines = lines.len() as u64;
    if !lines.is_empty() {
        r.metrics_file = metrics_file.into();
    }
    if let Some(last) = lines.last() {
        let b = &last["bounce"];
        r.bounce_maps = u(b, "maps");
        if let Some(f) = b["failures"].as_object() {
            r.bounce_failures = f.values().filter_map(Value::as_u64).sum();
            r.bounce_failure_kinds = f
                .iter()
                .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| format!("{k}={n}")))
                .collect::<Vec<_>>()
                .join(" ");
        }
        r.slots_total = u(b, "slots_total");
        r.slots_used_hiwater = u(b, "slots_used_hiwater");
        r.transient_created = u(b, "transient_created");
        r.extensions = u(b, "extensions");
        r.lock_wait_ns = u(b, "lock_wait_ns");
        r.conv_io_path_ns = conv_ns(b, "io_path");
        r.conv_background_ns = conv_ns(b, "background");
        r.conv_startup_ns = conv_ns(b, "startup");
        if let Some(devs) = last["devices"].as_array() {
            for d in devs.iter().filter(|d| d["kind"] == "block") {
                r.blk_requests += u(d, "total.chains");
                r.blk_errors += u(d, "total.errors");
            }
        }
        r.vcpu_exits = last["vcpu_exits"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
        r.rss_kib = u(last, "vmm.rss_kib");
    }
    if w.is_net() {
        r.rw = format!("net-{}", w.direction);
        r.bs = w.size.clone();
        r.engine = "tap".into();
    }
    let figures = if w.is_net() {
        net_figures(&out.console).map(|(bytes, secs)| {
            let kib_s = bytes as f64 / 1024.0 / secs;
            if w.direction == "down" {
                [kib_s, 0.0, 0.0, 0.0, 0.0, 0.0]
            } else {
                [0.0, 0.0, 0.0, kib_s, 0.0, 0.0]
            }
        })
    } else {
        fio_figures(&out.console)
    };
    match figures {
        Ok(f) => {
            [r.read_kib_s, r.read_iops, r.read_clat_us] = [f[0], f[1], f[2]];
            [r.write_kib_s, r.write_iops, r.write_clat_us] = [f[3], f[4], f[5]];
            if r.microvm_status == 0 {
                r.status = "ok".into();
            } else {
                r.status = "failed".into();
                r.error = format!("microvm exited with status {}", r.microvm_status);
            }
        }
        Err(e) => {
            r.status = "failed".into();
            // The guest's last lines, not microvm's log lines (the statistics are in the row).
            let tail: Vec<String> = out
                .console
                .lines()
                .filter(|l| !l.contains(" microvm") && !l.contains("@@LAB") && !l.trim().is_empty())
                .rev()
                .take(3)
                .map(|l| l.chars().take(160).collect())
                .collect();
            r.error = format!(
                "{e}; microvm status {}; last lines: {}",
                r.microvm_status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
    }
    r
}

/// The metrics file name of cell `i` inside the results directory.
pub fn metrics_name(i: usize, cell: &Cell) -> String {
    let w = cell.workload.name.as_str();
    let c = &cell.config;
    format!(
        "metrics/{i:04}-{}-{}-{}-{}-{w}-rep{}.jsonl.gz",
        c.pool, c.exhaustion, c.convert, c.growth, cell.rep
    )
}

/// Saves a cell's metrics lines (if any) under `dir`, gzipped (a line is ~3 KB of JSON that
/// compresses ~20x).
pub fn save_metrics(dir: &Path, name: &str, metrics: &str) -> std::io::Result<()> {
    use std::io::Write;
    if metrics.trim().is_empty() {
        return Ok(());
    }
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut gz =
        flate2::write::GzEncoder::new(std::fs::File::create(p)?, flate2::Compression::default());
    gz.write_all(metrics.as_bytes())?;
    gz.finish()?;
    Ok(())
}

/// A metrics file's text (gzipped or not).
pub fn read_metrics(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s)?;
        Ok(s)
    } else {
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
