//! What the VMM itself costs, and `--metrics`: counters over time as JSON lines.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bounce::{Dma, QueueCounters, QueueCountersSnapshot, StatsSnapshot, TraceRecorder};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpu::{ExitCounters, ExitSnapshot};

/// /proc/self/smaps, opened during set-up (the main thread's seccomp filter allows no open) and
/// read from the start whenever needed.
pub struct Smaps(Option<File>);

impl Smaps {
    pub fn open() -> Smaps {
        Smaps(File::open("/proc/self/smaps").ok())
    }

    fn read(&mut self) -> Option<String> {
        let f = self.0.as_mut()?;
        f.seek(SeekFrom::Start(0)).ok()?;
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        Some(s)
    }
}

/// Logs the process's resident memory outside guest RAM (from /proc/self/smaps), and how much
/// of it is bounce pools (in a confidential VM those would be guest memory made shared).
pub fn log_memory_overhead(smaps: &mut Smaps, mem: &GuestMemoryMmap, dma: &Dma) {
    let Some(smaps) = smaps.read() else {
        log::warn!("cannot read /proc/self/smaps: no memory overhead figure");
        return;
    };
    // Guest RAM's resident pages from mincore, not from smaps: the kernel may merge a guest
    // region's mapping with a neighbouring anonymous one, and smaps then has no line for it.
    let guest_kib: u64 = mem
        .iter()
        .map(|r| resident_kib(r.as_ptr(), r.len() as usize))
        .sum();
    let total_kib: u64 = smaps
        .lines()
        .filter_map(|l| l.strip_prefix("Rss:"))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let pools_kib = dma.stats().map_or(0, |s| s.shared_bytes >> 10);
    log::info!(
        "VMM resident memory beyond guest RAM: {} KiB, of which bounce pools {} KiB (guest RAM resident: {} KiB)",
        total_kib.saturating_sub(guest_kib),
        pools_kib,
        guest_kib
    );
}

/// KiB of `[addr, addr + len)` (page-aligned, mapped) resident in memory.
fn resident_kib(addr: *const u8, len: usize) -> u64 {
    const PAGE: usize = 4096;
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: mincore reads the page tables of a mapping we own (a guest memory region, page-
    // aligned, `len` bytes) and writes one byte per page into `vec`, which has that many.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * (PAGE as u64 / 1024)
}

/// What `--restricted-dma` and `--dma-trace` produce: statistics and a trace to flush.
#[derive(Clone)]
pub struct DmaReport {
    pub dma: Dma,
    pub trace: Option<Arc<TraceRecorder>>,
}

impl DmaReport {
    /// Logs the bounce statistics (when bouncing) as one JSON line and flushes the DMA trace.
    pub fn log(&self) {
        if let Some(stats) = self.dma.stats() {
            match serde_json::to_string(&stats) {
                Ok(json) => log::info!("bounce statistics: {json}"),
                Err(e) => log::warn!("cannot serialize bounce statistics: {e}"),
            }
        }
        if let Some(trace) = &self.trace {
            if let Err(e) = trace.flush() {
                log::warn!("cannot flush the DMA trace: {e}");
            }
            if trace.errors() > 0 {
                log::warn!("DMA trace: {} records could not be written", trace.errors());
            }
        }
    }
}

/// `--metrics PATH[,interval=DURATION]`: where and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub path: PathBuf,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    1000
}

/// The shortest interval accepted: a line costs a statistics snapshot and one `write`.
pub const MIN_INTERVAL_MS: u64 = 10;

impl MetricsConfig {
    /// Parses `PATH[,interval=DURATION]` (DURATION: `250ms`, `1s`, `2m`; a bare number is
    /// seconds).
    pub fn parse(s: &str) -> anyhow::Result<MetricsConfig> {
        let mut parts = s.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let Some(path) = path else {
            anyhow::bail!("--metrics {s:?}: expected PATH[,interval=DURATION]");
        };
        let mut cfg = MetricsConfig {
            path: path.into(),
            interval_ms: default_interval_ms(),
        };
        for opt in parts {
            match opt.split_once('=') {
                Some(("interval", v)) => {
                    cfg.interval_ms =
                        parse_duration_ms(v).map_err(|e| anyhow::anyhow!("--metrics {s:?}: {e}"))?
                }
                _ => anyhow::bail!(
                    "--metrics {s:?}: unknown option {opt:?} (expected interval=DURATION)"
                ),
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.interval_ms < MIN_INTERVAL_MS {
            anyhow::bail!(
                "metrics interval {} ms is below the minimum of {MIN_INTERVAL_MS} ms",
                self.interval_ms
            );
        }
        Ok(())
    }
}

/// `250ms`, `1s`, `1.5s`, `2m`, or a bare number of seconds, in milliseconds.
pub fn parse_duration_ms(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else {
        (v, 1e3)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {v:?} is not a number with ms, s or m"))?;
    if !n.is_finite() || n < 0.0 || n * scale > u64::MAX as f64 {
        return Err(format!("duration {v:?} is out of range"));
    }
    Ok((n * scale).round() as u64)
}

/// One virtio device's queue counters, for the metrics lines.
pub struct DeviceCounters {
    pub index: usize,
    /// `block`, `net`, `rng`.
    pub kind: &'static str,
    pub queues: Vec<Arc<QueueCounters>>,
}

/// What a metrics line reports, gathered at set-up.
pub struct Sources {
    pub dma: Dma,
    pub devices: Vec<DeviceCounters>,
    pub vcpus: Vec<Arc<ExitCounters>>,
    /// /proc/self/statm, opened at set-up (resident pages, read with `pread`).
    pub statm: Option<File>,
    pub start: Instant,
}

#[derive(Serialize)]
struct DeviceLine {
    index: usize,
    kind: &'static str,
    /// The queues summed.
    total: QueueCountersSnapshot,
    queues: Vec<QueueCountersSnapshot>,
}

/// One line of the metrics file. Every field is a monotonic counter except the gauges named
/// as such: `vmm.rss_kib`, and in `bounce` `slots_used`, `slots_total`, `shared_bytes`,
/// `pools_live`, `transient_live`, `blocking.waiting`, the atomic pools' sizes and use, and each
/// pool's `slots_used` (pools come and go: `pools` lists the live ones).
#[derive(Serialize)]
struct Line<'a> {
    /// 0, 1, ... within this file's run.
    seq: u64,
    /// The line written when the VM ended.
    #[serde(rename = "final")]
    last: bool,
    unix_ms: u64,
    uptime_ms: u64,
    interval_ms: u64,
    vmm: VmmLine,
    /// All vCPUs summed, then each.
    vcpu_exits: ExitSnapshot,
    vcpus: Vec<ExitSnapshot>,
    devices: Vec<DeviceLine>,
    /// `null` without `--restricted-dma`.
    bounce: Option<&'a StatsSnapshot>,
}

#[derive(Serialize)]
struct VmmLine {
    /// Resident set of the whole process, guest RAM included (`/proc/self/statm`).
    rss_kib: Option<u64>,
}

impl Sources {
    fn rss_kib(&self) -> Option<u64> {
        use std::io::{Read, Seek, SeekFrom};
        // Seek and read (as for /proc/self/smaps), not pread: the main thread's filter has no
        // pread, which would let it read the disk images the blk threads own.
        let mut f = self.statm.as_ref()?;
        f.seek(SeekFrom::Start(0)).ok()?;
        let mut buf = [0u8; 128];
        let n = f.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4)
    }

    /// One JSON line (with its newline).
    pub fn line(&self, seq: u64, last: bool, interval_ms: u64) -> String {
        let bounce = self.dma.stats();
        let vcpus: Vec<ExitSnapshot> = self.vcpus.iter().map(|v| v.snapshot()).collect();
        let mut total = ExitSnapshot::default();
        for v in &vcpus {
            total.add(v);
        }
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let queues: Vec<_> = d.queues.iter().map(|q| q.snapshot()).collect();
                let mut t = QueueCountersSnapshot::default();
                for q in &queues {
                    t.notifications += q.notifications;
                    t.chains += q.chains;
                    t.malformed += q.malformed;
                    t.bytes_from_driver += q.bytes_from_driver;
                    t.bytes_to_driver += q.bytes_to_driver;
                    t.errors += q.errors;
                }
                DeviceLine {
                    index: d.index,
                    kind: d.kind,
                    total: t,
                    queues,
                }
            })
            .collect();
        let line = Line {
            seq,
            last,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            uptime_ms: self.start.elapsed().as_millis() as u64,
            interval_ms,
            vmm: VmmLine {
                rss_kib: self.rss_kib(),
            },
            vcpu_exits: total,
            vcpus,
            devices,
            bounce: bounce.as_ref(),
        };
        let mut s = serde_json::to_string(&line)
            .unwrap_or_else(|e| format!("{{\"seq\":{seq},\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    }
}

/// Appends a line every interval (a timerfd on the event loop) and one when the VM ends. The
/// file is opened at set-up (no filter allows `open`); each line is one `write` of a complete
/// line to an `O_APPEND` file from the event-loop thread, never from a vCPU, so a slow disk
/// delays device emulation for that write but never stops a vCPU in `KVM_RUN`.
pub struct MetricsWriter {
    file: File,
    timer: TimerFd,
    interval_ms: u64,
    seq: u64,
    sources: Arc<Sources>,
    write_errors: u64,
}

impl AsRawFd for MetricsWriter {
    /// The metrics file (the main thread writes it).
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl MetricsWriter {
    /// Opens (creates, appends to) the file and arms the timer.
    pub fn new(cfg: &MetricsConfig, sources: Arc<Sources>) -> anyhow::Result<MetricsWriter> {
        use anyhow::Context;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)
            .with_context(|| format!("cannot open metrics file {}", cfg.path.display()))?;
        let mut timer = TimerFd::new().context("cannot create the metrics timer")?;
        let every = Duration::from_millis(cfg.interval_ms);
        timer
            .reset(every, Some(every))
            .context("cannot arm the metrics timer")?;
        Ok(MetricsWriter {
            file,
            timer,
            interval_ms: cfg.interval_ms,
            seq: 0,
            sources,
            write_errors: 0,
        })
    }

    /// Writes the next line; `last` for the one at exit.
    pub fn write_line(&mut self, last: bool) {
        use std::io::Write;
        let line = self.sources.line(self.seq, last, self.interval_ms);
        self.seq += 1;
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            self.write_errors += 1;
            if self.write_errors == 1 {
                log::warn!("cannot write the metrics file: {e} (further errors are counted)");
            }
        }
        if last && self.write_errors > 0 {
            log::warn!("metrics: {} lines could not be written", self.write_errors);
        }
    }
}

impl MutEventSubscriber for MetricsWriter {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::warn!("metrics timer not on the event loop: only the final line: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The expirations since the last read; a late loop writes one line, not a burst.
        if self.timer.wait().is_ok() {
            self.write_line(false);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bounce::{DmaDirection, DmaSource, Swiotlb, SwiotlbConfig};
    use std::sync::atomic::Ordering::Relaxed;
    use vm_memory::GuestAddress;

    pub(crate) fn sources(bounced: bool) -> (Sources, Arc<QueueCounters>, Arc<ExitCounters>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dma = if bounced {
            let cfg = SwiotlbConfig {
                size: 256 << 10,
                ..SwiotlbConfig::default()
            };
            Dma::bounced(mem, Swiotlb::new(cfg).unwrap())
        } else {
            Dma::direct(mem)
        };
        let q = Arc::new(QueueCounters::default());
        let v = Arc::new(ExitCounters::default());
        let s = Sources {
            dma,
            devices: vec![DeviceCounters {
                index: 0,
                kind: "block",
                queues: vec![q.clone(), Arc::default()],
            }],
            vcpus: vec![v.clone(), Arc::default()],
            statm: File::open("/proc/self/statm").ok(),
            start: Instant::now(),
        };
        (s, q, v)
    }

    fn parse(line: &str) -> serde_json::Value {
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_line_holds_every_section() {
        let (s, q, v) = sources(true);
        q.chains.fetch_add(3, Relaxed);
        q.bytes_to_driver.fetch_add(4096, Relaxed);
        v.mmio_write.fetch_add(7, Relaxed);
        let b = s
            .dma
            .map(
                DmaSource::default(),
                GuestAddress(0x1000),
                4096,
                DmaDirection::ToDevice,
            )
            .unwrap();
        let j = parse(&s.line(5, true, 100));
        drop(b);
        assert_eq!(j["seq"], 5);
        assert_eq!(j["final"], true);
        assert_eq!(j["interval_ms"], 100);
        assert!(j["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(j["vmm"]["rss_kib"].as_u64().unwrap() > 0);
        assert_eq!(j["vcpu_exits"]["mmio_write"], 7);
        assert_eq!(j["vcpus"].as_array().unwrap().len(), 2);
        let d = &j["devices"][0];
        assert_eq!(
            (d["kind"].as_str(), d["index"].as_u64()),
            (Some("block"), Some(0))
        );
        assert_eq!(d["total"]["chains"], 3);
        assert_eq!(d["queues"][0]["bytes_to_driver"], 4096);
        assert_eq!(d["queues"].as_array().unwrap().len(), 2);
        let bounce = &j["bounce"];
        assert_eq!(bounce["maps"], 1);
        assert_eq!(bounce["slots_used"], 2);
        assert!(bounce["pools"][0]["slots_used_hiwater"].as_u64().unwrap() >= 2);
        assert!(bounce["failures"]["no_space"].is_u64());
        assert!(bounce["conversions"]["io_path"]["to_shared"]["pages"].is_u64());
    }

    /// What one line costs the event loop (snapshot, JSON, append), to set against the
    /// interval: `cargo test --release -p vmm line_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn line_cost() {
        let path = std::env::temp_dir().join(format!("microvm-line-cost-{}", std::process::id()));
        let (s, _, _) = sources(true);
        let mut w = MetricsWriter::new(
            &MetricsConfig {
                path: path.clone(),
                interval_ms: 100,
            },
            Arc::new(s),
        )
        .unwrap();
        let mut best = Duration::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            for _ in 0..100 {
                w.write_line(false);
            }
            best = best.min(t.elapsed() / 100);
        }
        let bytes = std::fs::metadata(&path).unwrap().len() / w.seq;
        std::fs::remove_file(&path).unwrap();
        println!(
            "one metrics line: {best:?} ({bytes} bytes); at interval=100ms: {:.4}% of the event loop",
            best.as_secs_f64() / 0.1 * 100.0
        );
    }

    #[test]
    fn without_bouncing_bounce_is_null() {
        let (s, _, _) = sources(false);
        let j = parse(&s.line(0, false, 1000));
        assert!(j["bounce"].is_null());
        assert_eq!(j["final"], false);
    }

    #[test]
    fn the_writer_appends_numbered_lines() {
        let path =
            std::env::temp_dir().join(format!("microvm-metrics-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "earlier run\n").unwrap();
        let cfg = MetricsConfig {
            path: path.clone(),
            interval_ms: 10,
        };
        let (s, q, _) = sources(false);
        let mut w = MetricsWriter::new(&cfg, Arc::new(s)).unwrap();
        w.write_line(false);
        q.chains.fetch_add(1, Relaxed);
        w.write_line(true);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "earlier run");
        let a: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let b: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(0), Some(1)));
        assert_eq!(
            (a["final"].as_bool(), b["final"].as_bool()),
            (Some(false), Some(true))
        );
        assert_eq!(b["devices"][0]["total"]["chains"], 1);
        // The timer fires at the interval.
        assert!(w.timer.wait().unwrap() >= 1);
        std::fs::remove_file(&path).unwrap();
    }
}
